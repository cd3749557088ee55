/*
 * vmhooks._spawn: start a hook script straight into its cgroup.
 *
 * posix_spawn(3) with one thing more: the child is created inside a given
 * cgroup v2 (clone3 with CLONE_INTO_CGROUP), so nothing the hook forks can
 * ever be outside it, and no process is migrated (a migration waits for an
 * RCU grace period: about 10 ms on an idle host, during which a hook would
 * run and fork outside its cgroup). Neither Python 3.11 nor glibc 2.36
 * offer it: glibc's posix_spawnattr_setcgroup_np came in 2.41.
 *
 * Like glibc's posix_spawn, the child shares our memory (CLONE_VM) on a
 * stack of its own while this thread waits (CLONE_VFORK): no page table
 * is copied, however large the agent. Until it execs it only makes system
 * calls, with every signal blocked, so no handler of ours runs in it.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

#define CHILD_STACK_SIZE (64 * 1024)

struct spawn_args {  /* the kernel's struct clone_args, version 2 (88 bytes) */
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};

struct child {
    const char *path;
    char *const *argv;
    char *const *envp;
    int fds[3];         /* become 0, 1, 2 */
    sigset_t mask;      /* the caller's signal mask, restored before exec */
    volatile int error; /* errno of a failed step, seen by the parent (shared memory) */
};

/* clone3 whose child runs fn(arg) on the new stack and exits with its value.
 * The system call is made here, not through libc's syscall(): the child
 * starts on another stack and must never return through our frames. */
#if defined(__x86_64__)
static long clone3_run(struct spawn_args *args, int (*fn)(void *), void *arg)
{
    long ret;
    register void *r12 __asm__("r12") = (void *)fn;
    register void *r13 __asm__("r13") = arg;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xor %%ebp, %%ebp\n\t"
        "mov %%r13, %%rdi\n\t"
        "call *%%r12\n\t"
        "mov %%eax, %%edi\n\t"
        "mov $60, %%eax\n\t" /* exit */
        "syscall\n\t"
        "hlt\n"
        "1:"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(args), "S"(sizeof(*args)), "r"(r12), "r"(r13)
        : "rcx", "r11", "memory");
    return ret;
}

/* clone3 sharing our memory and stack (CLONE_VM | CLONE_VFORK: vfork(2)
 * with clone3's flags). The child returns 0 and goes on as this process
 * would have, on this stack; we sleep in the kernel until it has exited or
 * exec'd, then leave at once (exit_group) without touching the stack it
 * used. So only a failure returns here (-errno). */
static long clone3_and_leave(struct spawn_args *args)
{
    long ret;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jle 1f\n\t"
        "mov $231, %%eax\n\t" /* exit_group(0) */
        "xor %%edi, %%edi\n\t"
        "syscall\n\t"
        "hlt\n"
        "1:"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(args), "S"(sizeof(*args))
        : "rcx", "r11", "memory");
    return ret;
}
#define HAVE_CLONE3_RUN 1
#elif defined(__aarch64__)
static long clone3_run(struct spawn_args *args, int (*fn)(void *), void *arg)
{
    register long x8 __asm__("x8") = SYS_clone3;
    register long x0 __asm__("x0") = (long)args;
    register long x1 __asm__("x1") = (long)sizeof(*args);
    register void *x19 __asm__("x19") = (void *)fn;
    register void *x20 __asm__("x20") = arg;
    __asm__ volatile(
        "svc #0\n\t"
        "cbnz x0, 1f\n\t"
        "mov x29, xzr\n\t"
        "mov x0, x20\n\t"
        "blr x19\n\t"
        "mov x8, #93\n\t" /* exit */
        "svc #0\n"
        "1:"
        : "+r"(x0)
        : "r"(x8), "r"(x1), "r"(x19), "r"(x20)
        : "memory", "x30");
    return x0;
}
static long clone3_and_leave(struct spawn_args *args)
{
    register long x8 __asm__("x8") = SYS_clone3;
    register long x0 __asm__("x0") = (long)args;
    register long x1 __asm__("x1") = (long)sizeof(*args);
    __asm__ volatile(
        "svc #0\n\t"
        "cmp x0, #0\n\t"
        "b.le 1f\n\t"
        "mov x0, #0\n\t"
        "mov x8, #94\n\t" /* exit_group(0) */
        "svc #0\n"
        "1:"
        : "+r"(x0), "+r"(x8)
        : "r"(x1)
        : "memory", "cc");
    return x0;
}
#define HAVE_CLONE3_RUN 1
#endif

#ifdef HAVE_CLONE3_RUN
static int child_main(void *arg)
{
    struct child *c = arg;
    struct sigaction dfl;
    int i;

    /* Handlers are ours (Python's): back to default before the mask opens.
     * SIGPIPE and SIGXFSZ, which Python ignores, too (as subprocess does). */
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (i = 1; i < NSIG; i++) {
        struct sigaction old;
        if (i == SIGKILL || i == SIGSTOP || sigaction(i, NULL, &old) != 0)
            continue;
        if (old.sa_handler != SIG_DFL && (old.sa_handler != SIG_IGN || i == SIGPIPE || i == SIGXFSZ))
            sigaction(i, &dfl, NULL);
    }
    if (setsid() < 0)
        goto fail;
    /* Sources below 3 could be overwritten by an earlier dup2: lift them first. */
    for (i = 0; i < 3; i++) {
        if (c->fds[i] >= 0 && c->fds[i] < 3 && c->fds[i] != i) {
            int moved = fcntl(c->fds[i], F_DUPFD_CLOEXEC, 3);
            if (moved < 0)
                goto fail;
            c->fds[i] = moved;
        }
    }
    for (i = 0; i < 3; i++) {
        if (c->fds[i] < 0) {
            continue; /* inherited as it is, as subprocess does with None */
        } else if (c->fds[i] == i) {
            if (fcntl(i, F_SETFD, 0) < 0)
                goto fail;
        } else if (dup2(c->fds[i], i) < 0) {
            goto fail;
        }
    }
    if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
        long max = sysconf(_SC_OPEN_MAX);
        for (i = 3; i < max; i++)
            close(i);
    }
    sigprocmask(SIG_SETMASK, &c->mask, NULL);
    execve(c->path, c->argv, c->envp);
fail:
    c->error = errno ? errno : EINVAL;
    return 127;
}
#endif

static void free_array(char **array)
{
    PyMem_Free(array);
}

/* A list of bytes -> a NULL-terminated char* array (the items stay owned by the list). */
static char **to_array(PyObject *list)
{
    Py_ssize_t n, i;
    char **array;
    if (!PyList_Check(list)) {
        PyErr_SetString(PyExc_TypeError, "expected a list of bytes");
        return NULL;
    }
    n = PyList_GET_SIZE(list);
    array = PyMem_Calloc(n + 1, sizeof(char *));
    if (array == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyBytes_Check(item)) {
            free_array(array);
            PyErr_SetString(PyExc_TypeError, "expected a list of bytes");
            return NULL;
        }
        array[i] = PyBytes_AS_STRING(item);
        if (strlen(array[i]) != (size_t)PyBytes_GET_SIZE(item)) {
            free_array(array);
            PyErr_SetString(PyExc_ValueError, "embedded NUL byte");
            return NULL;
        }
    }
    return array;
}

PyDoc_STRVAR(spawn_doc,
"spawn(path, argv, envp, stdin, stdout, stderr, cgroup_fd) -> (pid, pidfd)\n\n"
"Start `path` in a new session, with the three fds as 0, 1, 2 (-1: ours as it\n"
"is) and no other, inside the cgroup whose directory `cgroup_fd` is (-1: ours).\n"
"Raises OSError\n"
"when it cannot start (errno of the failed step); the child is then reaped.");

static PyObject *spawn(PyObject *self, PyObject *args)
{
#ifndef HAVE_CLONE3_RUN
    PyErr_SetString(PyExc_NotImplementedError, "no clone3 trampoline for this architecture");
    return NULL;
#else
    const char *path;
    PyObject *argv_list, *envp_list;
    int in_fd, out_fd, err_fd, cgroup_fd;
    char **argv = NULL, **envp = NULL;
    struct child child;
    struct spawn_args clone;
    sigset_t all;
    int pidfd = -1, saved_errno = 0;
    long pid;
    void *stack;

    if (!PyArg_ParseTuple(args, "yO!O!iiii", &path, &PyList_Type, &argv_list, &PyList_Type, &envp_list,
                          &in_fd, &out_fd, &err_fd, &cgroup_fd))
        return NULL;
    argv = to_array(argv_list);
    envp = argv ? to_array(envp_list) : NULL;
    if (envp == NULL) {
        free_array(argv);
        return NULL;
    }
    stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        free_array(argv);
        free_array(envp);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    memset(&child, 0, sizeof child);
    child.path = path;
    child.argv = argv;
    child.envp = envp;
    child.fds[0] = in_fd;
    child.fds[1] = out_fd;
    child.fds[2] = err_fd;
    memset(&clone, 0, sizeof clone);
    clone.flags = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | (cgroup_fd >= 0 ? CLONE_INTO_CGROUP : 0);
    clone.pidfd = (uint64_t)(uintptr_t)&pidfd;
    clone.exit_signal = SIGCHLD;
    clone.stack = (uint64_t)(uintptr_t)stack;
    clone.stack_size = CHILD_STACK_SIZE;
    clone.cgroup = cgroup_fd >= 0 ? (uint64_t)cgroup_fd : 0;

    sigfillset(&all);
    Py_BEGIN_ALLOW_THREADS
    pthread_sigmask(SIG_SETMASK, &all, &child.mask);
    pid = clone3_run(&clone, child_main, &child);
    if (pid < 0)
        saved_errno = (int)-pid;
    pthread_sigmask(SIG_SETMASK, &child.mask, NULL);
    Py_END_ALLOW_THREADS

    munmap(stack, CHILD_STACK_SIZE);
    free_array(argv);
    free_array(envp);
    if (pid < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (child.error) { /* it never ran: it exited (127) before exec */
        int status;
        Py_BEGIN_ALLOW_THREADS
        while (waitpid((pid_t)pid, &status, 0) < 0 && errno == EINTR)
            ;
        Py_END_ALLOW_THREADS
        close(pidfd);
        errno = child.error;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
    }
    return Py_BuildValue("(li)", pid, pidfd);
#endif
}

#ifdef HAVE_CLONE3_RUN
PyDoc_STRVAR(become_hook_doc,
"become_hook(cgroup_fd) -> 0\n\n"
"For a fork server's stage process (a disposable fork of the server, child\n"
"of the agent): clone a hook process that shares this memory and goes on\n"
"from here as this process would (returns 0 there), a child of our parent\n"
"(CLONE_PARENT), created in the cgroup of `cgroup_fd` (-1: ours). This\n"
"process never returns: it waits until the hook has exited or exec'd, then\n"
"exits, so that the hook neither copies a page table nor tears one down.\n"
"Raises OSError (here) if the clone fails.");

static PyObject *become_hook(PyObject *self, PyObject *args)
{
    int cgroup_fd;
    struct spawn_args clone;
    sigset_t all, mask;
    long pid;

    if (!PyArg_ParseTuple(args, "i", &cgroup_fd))
        return NULL;
    memset(&clone, 0, sizeof clone);
    clone.flags = CLONE_VM | CLONE_VFORK | CLONE_PARENT | (cgroup_fd >= 0 ? CLONE_INTO_CGROUP : 0);
    clone.exit_signal = 0; /* CLONE_PARENT: our parent's child, notified as we would be */
    clone.cgroup = cgroup_fd >= 0 ? (uint64_t)cgroup_fd : 0;
    /* No handler of ours may run here once the hook has used the stack. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &mask);
    pid = clone3_and_leave(&clone);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    if (pid < 0) {
        errno = (int)-pid;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(0);
}
#endif /* HAVE_CLONE3_RUN: without it, no become_hook (the fork server forks each hook) */

PyDoc_STRVAR(fork_stage_doc,
"fork_stage() -> (pid, pidfd) here, (0, -1) in the child\n\n"
"For a fork server: fork (clone3) a child of our parent's (CLONE_PARENT),\n"
"with the interpreter's before- and after-fork work, as os.fork does.");

static PyObject *fork_stage(PyObject *self, PyObject *noargs)
{
    struct spawn_args clone;
    int pidfd = -1, saved_errno;
    long pid;

    memset(&clone, 0, sizeof clone);
    clone.flags = CLONE_PARENT | CLONE_PIDFD;
    clone.pidfd = (uint64_t)(uintptr_t)&pidfd;
    clone.exit_signal = 0; /* CLONE_PARENT: our parent's child, notified as we would be */
    PyOS_BeforeFork();
    pid = syscall(SYS_clone3, &clone, sizeof clone);
    saved_errno = errno;
    if (pid == 0) {
        PyOS_AfterFork_Child();
        return Py_BuildValue("(ii)", 0, -1);
    }
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        errno = saved_errno;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(li)", pid, pidfd);
}

PyDoc_STRVAR(added_doc,
"added(mapping, known, also) -> list, or None\n\n"
"The keys of the dict `mapping` not in the set `known`, plus `also`, in the\n"
"dict's order; None if a key is not a str. Unlike a loop in Python, it\n"
"leaves the reference counts of the other keys alone: in a forked process,\n"
"each page written is a page copied.");

static PyObject *added(PyObject *self, PyObject *args)
{
    PyObject *mapping, *known, *also, *key, *value, *result;
    Py_ssize_t pos = 0;

    if (!PyArg_ParseTuple(args, "O!O!U", &PyDict_Type, &mapping, &PyFrozenSet_Type, &known, &also))
        return NULL;
    result = PyList_New(0);
    if (result == NULL)
        return NULL;
    while (PyDict_Next(mapping, &pos, &key, &value)) {
        int has;
        if (!PyUnicode_CheckExact(key)) { /* comparing it could run code that changes the dict */
            Py_DECREF(result);
            Py_RETURN_NONE;
        }
        has = PyUnicode_Compare(key, also) == 0 ? 0 : PySet_Contains(known, key);
        if (has < 0 || (!has && PyList_Append(result, key) < 0)) {
            Py_DECREF(result);
            return NULL;
        }
    }
    return result;
}

static PyMethodDef methods[] = {
    {"spawn", spawn, METH_VARARGS, spawn_doc},
#ifdef HAVE_CLONE3_RUN
    {"become_hook", become_hook, METH_VARARGS, become_hook_doc},
#endif
    {"fork_stage", fork_stage, METH_NOARGS, fork_stage_doc},
    {"added", added, METH_VARARGS, added_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vmhooks._spawn", "Start hook scripts straight into their cgroup (clone3).", -1, methods,
};

PyMODINIT_FUNC PyInit__spawn(void)
{
    return PyModule_Create(&module);
}
