"""The fork server program: a warm, single-threaded Python that forks one
child per Python hook (`forkserver_child.Job`); `forkserver.py` is the
agent's side and says which scripts come here.

Run by path, under the interpreter the hooks name:
`<interpreter> forkserver_main.py <socket fd> <module to import>...`.
Standard library only, so any Python 3.11+ can run it.
"""
import sys

STARTUP_MODULES = frozenset(sys.modules)  # what any interpreter has when a script starts
if __name__ == "__main__":
    import forkserver_child  # from our own directory, which is then left out of sys.path

    if not getattr(sys.flags, "safe_path", False):
        del sys.path[0]  # our directory must not shadow what hooks import
        sys.path_importer_cache.pop(forkserver_child.__file__.rpartition("/")[0], None)
else:  # imported, not run (tools that import every module)
    from vmhooks import forkserver_child

import _socket  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import marshal  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402

SOL_SOCKET, SCM_RIGHTS = _socket.SOL_SOCKET, _socket.SCM_RIGHTS
MAX_MESSAGE = 1 << 20
FD_SPACE = _socket.CMSG_SPACE(8 * 4)
CODE_CACHE_SIZE = 512

_py = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held through the call, as os.fork holds it
_py.syscall.restype = ctypes.c_long
SYS_CLONE3 = {"x86_64": 435, "aarch64": 435}.get(os.uname().machine)
CLONE_PIDFD, CLONE_PARENT, CLONE_INTO_CGROUP, SIGCHLD = 0x1000, 0x8000, 0x200000000, 17


class CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls", "set_tid",
        "set_tid_size", "cgroup",
    )]  # fmt: skip


def fork_for_agent(cgroup_fd, flags=CLONE_PARENT):
    """fork() a child of the agent's (CLONE_PARENT: the agent waits for it and
    kills it as it would an exec'd hook, and getppid() is the agent, as for
    an exec'd hook), created in the cgroup of `cgroup_fd` if one is given
    (CLONE_INTO_CGROUP: nothing it runs is ever outside it, no migration).
    (pid, pidfd) here, (0, -1) in the child."""
    pidfd = ctypes.c_int(-1)
    flags |= CLONE_PIDFD | (CLONE_INTO_CGROUP if cgroup_fd >= 0 else 0)
    args = CloneArgs(flags=flags, pidfd=ctypes.addressof(pidfd), exit_signal=0 if flags & CLONE_PARENT else SIGCHLD,
                     cgroup=max(cgroup_fd, 0))  # fmt: skip
    ctypes.pythonapi.PyOS_BeforeFork()  # what os.fork does around fork(2)
    pid = _py.syscall(SYS_CLONE3, ctypes.byref(args), ctypes.sizeof(args))
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0, -1
    error = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(error, os.strerror(error))
    return pid, pidfd.value


def clone3_works():
    """Whether fork_for_agent can work here (a child of ours, reaped at once)."""
    if SYS_CLONE3 is None:
        return False
    try:
        pid, pidfd = fork_for_agent(-1, flags=0)
    except OSError:
        return False
    if pid == 0:
        os._exit(0)
    os.close(pidfd)
    os.waitpid(pid, 0)
    return True


def preimport(names):
    """Import those of `names` that exist; a warning on the way is a reason to
    refuse, since a hook's own interpreter would have shown it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in names:
            try:
                __import__(name)
            except ImportError:
                pass
    return "; ".join(f"{w.category.__name__}: {w.message}" for w in caught)


def warm():
    """Run once what every XML or JSON hook runs, so that each child finds
    the interpreter's caches (types' method cache, interned names) filled
    rather than filling them in pages it would then have to copy. Nothing
    any module keeps changes: only objects made and dropped here."""
    minidom = sys.modules.get("xml.dom.minidom")
    if minidom is not None:
        document = minidom.parseString(b"<domain type='kvm'><name>warm</name><devices><disk/></devices></domain>")
        document.getElementsByTagName("name")[0].setAttribute("a", "b")
        document.toxml(encoding="utf-8")
        document.unlink()
    json = sys.modules.get("json")
    if json is not None:
        json.loads(json.dumps({"warm": [1, 2.5, "x", None, True]}))


def _stamp(module):
    try:
        st = os.stat(module.__file__)
    except (OSError, TypeError, AttributeError):
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class NotEligible(Exception):
    pass


class Server:
    def __init__(self, fd, startup):
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, fd)
        self.startup = startup
        self.codes = {}  # (path, dev, ino, size, mtime) -> code object
        self.modules = frozenset(sys.modules)
        self.stamps = {name: _stamp(module) for name, module in sys.modules.items() if name not in STARTUP_MODULES}

    def send(self, data, fds=()):
        ancillary = [(SOL_SOCKET, SCM_RIGHTS, b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds))]
        self.sock.sendmsg([data], ancillary if fds else [])

    def receive(self):
        data, ancillary, _, _ = self.sock.recvmsg(MAX_MESSAGE, FD_SPACE)
        fds = []
        for level, kind, payload in ancillary:
            if level == SOL_SOCKET and kind == SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += [int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4)]
        return data, fds

    def serve(self):
        """Answer requests until the agent goes; returns a Job in a forked child only."""
        while True:
            data, fds = self.receive()
            if not data:
                return None
            request = marshal.loads(data)
            if request[0] == "spawn":
                job = self.spawn(request[1], fds)
                if job is not None:
                    return job
            elif request[0] == "stale":
                changed = [name for name, stamp in self.stamps.items() if _stamp(sys.modules.get(name)) != stamp]
                self.send(marshal.dumps(("stale", changed)))

    def spawn(self, spec, fds):
        given = dict(zip(spec["fds"], fds))
        try:
            code = self.code_for(spec["path"], spec["cwd"])
        except (NotEligible, OSError) as why:
            for fd in fds:
                os.close(fd)
            self.send(marshal.dumps(("exec", str(why))))
            return None
        # In this process, not in each child: what the child would copy if it did it.
        for finder in list(sys.path_importer_cache.values()):  # directory listings as a new process finds them
            if finder is not None and hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()
        try:
            token = forkserver_child.before_fork(self.startup, spec)
        except OSError as why:  # the agent's working directory is gone, say: exec says the same
            for fd in fds:
                os.close(fd)
            self.send(marshal.dumps(("exec", str(why))))
            return None
        gc.freeze()  # a collection in the child then leaves our objects (and their pages) alone
        try:
            pid, pidfd = fork_for_agent(given.get("cgroup", -1))
        except OSError as exc:
            forkserver_child.after_fork(self.startup, token)
            for fd in fds:
                os.close(fd)
            self.send(marshal.dumps(("error", exc.errno, exc.strerror)))
            return None
        if pid == 0:
            self.sock.detach()  # closed with every other fd: no object may close its number later
            return forkserver_child.Job(self.startup, spec, code, given, self.modules, token)
        for fd in fds:  # before the answer: the agent reads the hook's stderr until every copy is closed
            os.close(fd)
        self.send(marshal.dumps(("started", pid)), [pidfd])
        forkserver_child.after_fork(self.startup, token)
        os.close(pidfd)
        return None

    def code_for(self, path, cwd):
        """The script compiled as the interpreter compiles a script it runs,
        cached by file identity; NotEligible when exec's outcome could differ.
        A relative path is the agent's: relative to its working directory."""
        filename = path if path.startswith("/") else os.path.join(cwd, path)  # as __main__.__file__ is made
        with open(filename, "rb") as handle:
            st = os.fstat(handle.fileno())
            key = (filename, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            code = self.codes.get(key)
            if code is not None:
                return code
            source = handle.read()
        if b"PK\x05\x06" in source[-65558:]:
            raise NotEligible("a zip archive: the interpreter would run the __main__ inside")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                code = compile(source, filename, "exec", dont_inherit=True)
            except (SyntaxError, ValueError) as exc:
                raise NotEligible(f"does not compile ({exc.__class__.__name__})") from None
        if caught:
            raise NotEligible("compiling it warns")
        if len(self.codes) >= CODE_CACHE_SIZE:
            self.codes.clear()
        self.codes[key] = code
        return code


def main():
    fd = int(sys.argv[1])
    refused = preimport(sys.argv[2:])
    if not refused:
        warm()
    startup = forkserver_child.Startup(STARTUP_MODULES)
    if startup.mm is None or not forkserver_child.set_mm_map(startup.mm):
        refused = refused or "this kernel does not let a process show the command line exec would give (PR_SET_MM_MAP)"
    if not clone3_works():
        refused = refused or "no clone3 here (Linux 5.3, x86_64 or aarch64)"
    tops = {name.partition(".")[0] for name in sys.modules} - {name.partition(".")[0] for name in STARTUP_MODULES}
    server = Server(fd, startup)
    server.send(marshal.dumps(("hello", refused, sorted(tops), sys.version)))
    return None if refused else server.serve()


if __name__ == "__main__":
    job = main()
    if job is not None:
        job.run()  # never returns: the child leaves as its interpreter would
