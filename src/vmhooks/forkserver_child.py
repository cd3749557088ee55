"""A fork server's hook process: one Python hook, set up as an exec of it would
have set it up, run in a fresh `__main__`, and ended as the interpreter ends.

Imported by `forkserver_main.py` only (standard library only).
"""
import atexit
import builtins
import ctypes
import gc
import io
import os
import resource
import sys
import weakref
from types import ModuleType

import _signal

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sbrk.restype = ctypes.c_void_p
PR_SET_NAME, PR_SET_MM, PR_SET_MM_MAP = 15, 35, 14


class MmMap(ctypes.Structure):
    """struct prctl_mm_map: where /proc/<pid>/cmdline and environ are read from, among others."""

    _fields_ = [(name, ctypes.c_uint64) for name in (
        "start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack", "arg_start",
        "arg_end", "env_start", "env_end", "auxv",
    )] + [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]  # fmt: skip


def mm_map_now():
    """This process's memory map as prctl takes it, or None where /proc hides it."""
    with open("/proc/self/stat", "rb") as handle:
        fields = handle.read().rsplit(b")", 1)[1].split()
    values = [int(fields[index - 3]) for index in (26, 27, 45, 46, 47, 28, 48, 49, 50, 51)]
    if not all(values):
        return None
    start_code, end_code, start_data, end_data, start_brk, start_stack, arg_start, arg_end, env_start, env_end = values
    return MmMap(
        start_code=start_code, end_code=end_code, start_data=start_data, end_data=end_data, start_brk=start_brk,
        brk=_libc.sbrk(0) or start_brk, start_stack=start_stack, arg_start=arg_start, arg_end=arg_end,
        env_start=env_start, env_end=env_end, auxv=0, auxv_size=0, exe_fd=0xFFFFFFFF,
    )  # fmt: skip


def set_mm_map(mm):
    return _libc.prctl(PR_SET_MM, PR_SET_MM_MAP, ctypes.byref(mm), ctypes.sizeof(mm), 0) == 0


def _show(original, argv, envb):
    """Make /proc/self/cmdline and /proc/self/environ show `argv` and `envb`
    (what the exec gave); returns the buffer they are read from, which must
    live as long as they are (a fork copies it with the rest)."""
    args = b"".join(arg + b"\0" for arg in argv)
    env = b"".join(entry + b"\0" for entry in envb) or b"\0"
    buffer = ctypes.create_string_buffer(args + env, len(args) + len(env))
    base = ctypes.addressof(buffer)
    mm = MmMap.from_buffer_copy(original)
    mm.brk = _libc.sbrk(0) or mm.brk
    mm.arg_start, mm.arg_end = base, base + len(args)
    mm.env_start, mm.env_end = base + len(args), base + len(args) + len(env)
    set_mm_map(mm)
    return buffer


def _unshow(original):
    mm = MmMap.from_buffer_copy(original)
    mm.brk = _libc.sbrk(0) or mm.brk
    set_mm_map(mm)


def inherit(startup, spec):
    """The working directory, umask and environment of `spec`'s hook, set
    in this process; kept (the next hook most likely has the same)."""
    os.chdir(spec["cwd"])
    os.umask(spec["umask"])
    _set_environ(startup, spec["env"])


def before_fork(startup, spec, context=True, over=None):
    """In the server (or a stage), before the hook's process is made: what
    it inherits is cheaper set here than in it, where every page written is
    a page copied. `after_fork` puts back what the server shows of itself.
    `context`: the working directory, umask and environment too (else this
    process has them already: `inherit`). `over`: the token of a hook set
    up here before and not put back, which this one replaces."""
    if context:
        inherit(startup, spec)
    shown = _show(startup.mm, [os.fsencode(arg) for arg in spec["cmdline"]], spec["env"]) if startup.mm else None
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(os.fsencode(spec["comm"])[:15]), 0, 0, 0)
    path = spec["path"]
    sys.argv = [path]
    sys.orig_argv = list(spec["cmdline"])
    inserted = not getattr(sys.flags, "safe_path", False)
    if inserted:
        entry = os.path.dirname(os.path.realpath(path))
        if over is not None and over[1]:
            sys.path[0] = entry
        else:
            sys.path.insert(0, entry)
    return shown, inserted


def after_fork(startup, token):
    """In the server, once forked: its own name and command line back."""
    _shown, inserted = token
    if inserted:
        del sys.path[0]
    if startup.mm is not None:
        _unshow(startup.mm)
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(startup.comm), 0, 0, 0)


def _set_environ(startup, env):
    """os.environ (and the C environment) exactly as exec would make it:
    the runner's variables in its order, then what the interpreter adds."""
    wanted = dict(entry.split(b"=", 1) for entry in env)
    for name, value in startup.added_env:
        wanted[name] = value
    current = list(os.environb)
    if current == list(wanted)[: len(current)]:
        # The usual case: ours is the start of the hook's, in the same order.
        for name, value in wanted.items():
            if os.environb.get(name) != value:
                os.environb[name] = value
    else:
        os.environb.clear()
        os.environb.update(wanted)


class Startup:
    """What the server's interpreter did at its own start, that an exec'd
    hook's interpreter would do the same way."""

    def __init__(self, startup_modules):
        with open("/proc/self/environ", "rb") as handle:
            started_with = dict(entry.split(b"=", 1) for entry in handle.read().split(b"\0") if b"=" in entry)
        # PEP 538 sets LC_CTYPE under the C locale, for instance.
        self.added_env = [(name, value) for name, value in os.environb.items() if started_with.get(name) != value]
        self.streams = tuple(
            (stream.encoding, stream.errors, stream.write_through) if stream is not None else None
            for stream in (sys.__stdin__, sys.__stdout__, sys.__stderr__)
        )
        self.modules = startup_modules
        self.mm = mm_map_now()
        with open("/proc/self/comm", "rb") as handle:
            self.comm = handle.read().rstrip(b"\n")


def main_loader(filename):
    """The loader of a `__main__` run from `filename`, as the interpreter
    makes it. Made before the fork; the module itself is made after it (the
    fork freezes what exists, which a collection then leaves alone)."""
    return sys.modules["_frozen_importlib_external"].SourceFileLoader("__main__", filename)


class Job:
    """One hook, in its process (cloned by a stage, or forked by the server)."""

    def __init__(self, startup, spec, code, fds, modules_before, inherited, loader, added=None):
        self.inherited = inherited  # from before_fork: what /proc/self/cmdline and environ point into
        self.startup = startup
        self.spec = spec
        self.code = code
        self.fds = fds  # "stdin", "stdout", "stderr", "cgroup" -> fd (no stdin: the agent has none)
        self.modules_before = modules_before  # the server's, made there: not copied page by page here
        self.loader = loader  # main_loader's
        self.added = added  # _spawn.added or None

    def prepare(self):
        spec = self.spec
        os.setsid()
        for target, role in enumerate(("stdin", "stdout", "stderr")):
            fd = self.fds.get(role, -1)
            if fd < 0:
                if _valid(target):
                    os.close(target)
            else:
                os.dup2(fd, target)  # every received fd is above 2: none is overwritten
        os.closerange(3, 1 << 20)  # close_range(2) underneath
        # The working directory, umask, environment, names and sys.argv/path
        # came with the clone or fork (`before_fork`); rlimits are set here:
        # the server itself must not live under a hook's limits.
        for limit, pair in spec["rlimits"].items():
            if resource.getrlimit(limit) != pair:
                resource.setrlimit(limit, pair)
        threading = sys.modules.get("threading")
        if threading is not None and hasattr(threading.main_thread(), "_set_native_id"):
            threading.main_thread()._set_native_id()  # the server's thread id otherwise: this process's, as on exec
        self._reopen_std_streams()
        main = type(sys)("__main__")
        main.__dict__.update(
            __package__=None,
            __loader__=self.loader,
            __spec__=None,
            __annotations__={},
            __builtins__=builtins,
            __file__=self.code.co_filename,
            __cached__=None,
        )
        self.loader = None
        sys.modules["__main__"] = main
        _signal.pthread_sigmask(_signal.SIG_SETMASK, spec["sigmask"])
        return main

    def _reopen_std_streams(self):
        """sys.stdin/stdout/stderr as the interpreter makes them at start, on
        the fds the hook now has (buffering, line buffering on a tty, names)."""
        fallback = next(config for config in self.startup.streams if config is not None)
        streams = []
        for fd, mode, name, config in zip((0, 1, 2), "rww", ("<stdin>", "<stdout>", "<stderr>"), self.startup.streams):
            if not _valid(fd):
                streams.append(None)
                continue
            encoding, errors, unbuffered = config or fallback
            buffering = 0 if unbuffered and mode == "w" else -1
            buffer = io.open(fd, mode + "b", buffering, closefd=False)
            raw = buffer if buffering == 0 else buffer.raw
            raw.name = name
            line_buffering = not unbuffered and (raw.isatty() or fd == 2)
            stream = io.TextIOWrapper(buffer, encoding, errors, "\n", line_buffering, unbuffered)
            stream.mode = mode
            streams.append(stream)
        sys.stdin, sys.stdout, sys.stderr = streams
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams

    def run(self):
        """Run the hook and end the process as its interpreter would."""
        namespace = self.prepare().__dict__  # only sys.modules holds the module, as for the interpreter
        uncaught = None
        try:
            exec(self.code, namespace)
            code = 0
        except SystemExit as exc:
            code = _system_exit_code(exc)
        except BaseException as exc:  # noqa: BLE001 - what an uncaught exception does
            uncaught, code = exc, 1
        namespace = None
        if uncaught is not None:
            # Out of the except clause: as for the interpreter, nothing is being handled meanwhile.
            _print_uncaught(uncaught)
        self._finish(code, isinstance(uncaught, KeyboardInterrupt))

    def _finish(self, code, sigint):
        """Py_FinalizeEx, for what a hook can see: non-daemon threads joined,
        atexit handlers run, standard streams flushed (exit 120 if stdout
        cannot be), then the hook's modules (its __main__ and what it
        imported itself) removed, their cycles collected with finalizers
        run, what stays alive cleared, and the process leaves.

        Modules the server imported are not torn down: that would copy most
        of the server's memory into this child, for objects the hook did
        not make (Python does not promise finalizers at exit anyway)."""
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
        ok = _flush_std_streams()
        if gc.isenabled():
            gc.collect()
        _delete_special()
        weaklist = []
        names = self.added(sys.modules, self.modules_before, "__main__") if self.added is not None else None
        if names is None:
            names = [name for name in sys.modules if name not in self.modules_before or name == "__main__"]
        for name in names:
            module = sys.modules.pop(name)
            if isinstance(module, ModuleType):  # sys.modules may hold other objects: those are only dropped
                weaklist.append(weakref.ref(module))
        module = None
        gc.collect()
        for reference in reversed(weaklist):
            alive = reference()
            if alive is not None:
                try:
                    _clear_module(alive)
                except Exception:  # noqa: BLE001 - the interpreter ignores these at exit too
                    pass
            alive = None
        gc.collect()
        ok = _flush_std_streams() and ok
        if sigint:  # as the interpreter does when it ends on a KeyboardInterrupt
            _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
            os.kill(os.getpid(), _signal.SIGINT)
        os._exit(code if ok else 120)


def _delete_special():
    """What finalization does first: sys.argv, sys.path and the like set to
    None, the standard streams put back to the original ones."""
    builtins._ = None
    for name in ("path", "argv", "ps1", "ps2", "last_type", "last_value", "last_traceback", "path_hooks",
                 "path_importer_cache", "meta_path", "__interactivehook__"):  # fmt: skip
        if hasattr(sys, name):
            setattr(sys, name, None)
    for name in ("stdin", "stdout", "stderr"):
        setattr(sys, name, getattr(sys, f"__{name}__", None))


def _system_exit_code(exc):
    """The exit code of an uncaught SystemExit, printing its message as the
    interpreter does when it is not an integer."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):  # a C long (-1 when it does not fit), then a C int
        value = code if -(2**63) <= code < 2**63 else -1
        return (value + 2**31) % 2**32 - 2**31
    stream = getattr(sys, "stderr", None)
    if stream is not None:
        try:
            stream.write(str(code))
            stream.write("\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - the interpreter ignores these too
            pass
    return 1


def _print_uncaught(exc):
    """Print `exc` as the interpreter prints an uncaught exception: through
    sys.excepthook, without our frames, with sys.last_* set."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # Job.run's frame
    exc.__traceback__ = tb
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    hook = getattr(sys, "excepthook", None)
    if hook is None:
        sys.stderr.write("sys.excepthook is missing\n")
        sys.__excepthook__(type(exc), exc, tb)
        return
    try:
        hook(type(exc), exc, tb)
    except BaseException as failure:  # noqa: BLE001 - as PyErr_Print reports a failing hook
        failure.__traceback__ = failure.__traceback__.tb_next  # our frame
        sys.stderr.write("Error in sys.excepthook:\n")
        sys.__excepthook__(type(failure), failure, failure.__traceback__)
        sys.stderr.write("\nOriginal exception was:\n")
        sys.__excepthook__(type(exc), exc, tb)


def _flush_std_streams():
    """As the interpreter flushes at exit: a failing stdout is reported and
    makes the exit status 120; a failing stderr is ignored."""
    ok = True
    stdout = getattr(sys, "stdout", None)
    if stdout is not None and not getattr(stdout, "closed", False):
        try:
            stdout.flush()
        except Exception as exc:  # noqa: BLE001
            ok = False
            sys.unraisablehook(_UnraisableArgs(type(exc), exc, exc.__traceback__, None, stdout))
    stderr = getattr(sys, "stderr", None)
    if stderr is not None and not getattr(stderr, "closed", False):
        try:
            stderr.flush()
        except Exception:  # noqa: BLE001
            pass
    return ok


def _unraisable_args_type():
    """sys.UnraisableHookArgs is not exposed: catch one to have its type."""
    caught = []
    previous = sys.unraisablehook
    sys.unraisablehook = caught.append

    class Fails:
        def __del__(self):
            raise RuntimeError

    Fails()
    sys.unraisablehook = previous
    return type(caught[0])


_UnraisableHookArgs = _unraisable_args_type()


def _UnraisableArgs(exc_type, exc_value, exc_traceback, err_msg, obj):  # noqa: N802 - stands for the type
    return _UnraisableHookArgs((exc_type, exc_value, exc_traceback, err_msg, obj))


def _clear_module(module):
    """What the interpreter does to each module at exit: names with one
    leading underscore set to None first, then all but __builtins__."""
    namespace = module.__dict__
    for name in list(namespace):
        if isinstance(name, str) and name.startswith("_") and not name.startswith("__"):
            namespace[name] = None
    for name in list(namespace):
        if name != "__builtins__":
            namespace[name] = None


def _valid(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
