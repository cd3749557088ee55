"""The fork server program: a warm, single-threaded Python that makes one
process per Python hook (`forkserver_child.Job`); `forkserver.py` is the
agent's side and says which scripts come here.

Run by path, under the interpreter the hooks name:
`<interpreter> forkserver_main.py <socket fd> <module to import>...`.
Standard library only, so any Python 3.11+ can run it. Where it can load
the agent's `vmhooks._spawn` (the agent's own interpreter) each hook is
cloned from a stage forked ahead of time (`forkserver_stage`); elsewhere
the server forks each hook itself.
"""
import sys

STARTUP_MODULES = frozenset(sys.modules)  # what any interpreter has when a script starts
if __name__ == "__main__":
    import forkserver_child  # from our own directory, which is then left out of sys.path
    import forkserver_stage

    if not getattr(sys.flags, "safe_path", False):
        del sys.path[0]  # our directory must not shadow what hooks import
        sys.path_importer_cache.pop(forkserver_child.__file__.rpartition("/")[0], None)
else:  # imported, not run (tools that import every module)
    from vmhooks import forkserver_child, forkserver_stage

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
        self.buffer = bytearray(MAX_MESSAGE)
        self.view = memoryview(self.buffer)
        self.codes = {}  # (path, (dev, ino, size, mtime)) -> code object
        self._common = (None, None)  # the last common spec: marshalled, and loaded
        self.inherited = None  # the common spec whose cwd, umask and environment this process has
        self.added = None  # _spawn.added, where loaded: the hook's own modules, found without a loop here
        self.modules = frozenset(sys.modules)
        self.stamps = {name: _stamp(module) for name, module in sys.modules.items() if name not in STARTUP_MODULES}

    def send(self, data, fds=()):
        ancillary = [(SOL_SOCKET, SCM_RIGHTS, b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds))]
        self.sock.sendmsg([data], ancillary if fds else [])

    def receive(self):
        size, ancillary, _, _ = self.sock.recvmsg_into([self.buffer], FD_SPACE)
        data = self.view[:size]  # read in place: no megabyte allocated (and paged in) for each request
        fds = []
        for level, kind, payload in ancillary:
            if level == SOL_SOCKET and kind == SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += [int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4)]
        return data, fds

    def serve(self, stages=None):
        """Until the agent goes; returns a Job in a hook's process only."""
        if stages is not None:
            try:
                return stages.serve()
            except forkserver_stage.StagesFailed:
                pass
        return self.answer(self.fork)

    def answer(self, spawn):
        """Answer requests until the agent goes (None), or until `spawn`
        returns the Job of a hook: in that hook's process."""
        while True:
            data, fds = self.receive()
            if not data:
                return None
            request = marshal.loads(data)
            if request[0] == "spawn":  # ("spawn", common spec (marshalled), (path, cmdline, comm, fd roles), next)
                job = spawn(request, fds)
                if job is not None:
                    return job
            elif request[0] == "stale":
                changed = [name for name, stamp in self.stamps.items() if _stamp(sys.modules.get(name)) != stamp]
                self.send(marshal.dumps(("stale", changed)))

    def forget_listings(self):
        """Directory listings as a new process finds them: not cached. Done
        here, before the fork, not in each child (which would copy the pages);
        once is enough where the server imports nothing more (stages), as
        only its own imports fill its finders' caches."""
        for finder in list(sys.path_importer_cache.values()):
            if finder is not None and hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()

    def spec(self, common, script):
        """The spec of a hook: the chain's `common` part (marshalled), and the
        script's path, command line and process name."""
        if common != self._common[0]:
            self._common = (common, marshal.loads(common))
        spec = dict(self._common[1])
        spec["path"], spec["cmdline"], spec["comm"] = script[:3]
        return spec

    def prepare(self, spec, common, fds, over=None):
        """The hook set up in this process (a SetUp); None once answered that it is exec'd."""
        try:
            return self.set_up(spec, common, over)
        except (NotEligible, OSError) as why:  # OSError: the agent's working directory is gone, say: exec says so too
            for fd in fds:
                os.close(fd)
            self.send(marshal.dumps(("exec", str(why))))
            return None

    def set_up(self, spec, common, over=None):
        """What the hook inherits, set up in this process (`undo` it if unused),
        over the SetUp `over` if one is still in place."""
        code, identity, fresh = self.code_for(spec["path"], spec["cwd"])
        token = forkserver_child.before_fork(
            self.startup, spec, context=common != self.inherited, over=over.token if over is not None else None
        )
        self.inherited = common
        return SetUp(spec, code, identity, fresh, token, forkserver_child.main_loader(code.co_filename))

    def undo(self, setup):
        forkserver_child.after_fork(self.startup, setup.token)

    @staticmethod
    def unchanged(setup):
        """Whether the script is still the file that was compiled for `setup`."""
        try:
            return _identity(os.stat(setup.code.co_filename)) == setup.identity
        except OSError:
            return False

    def job(self, setup, fds):
        return forkserver_child.Job(
            self.startup, setup.spec, setup.code, fds, self.modules, setup.token, setup.loader, self.added
        )

    def fork(self, request, fds):
        """Fork the hook from this process (where there are no stages)."""
        _, common, script, _ = request
        given = dict(zip(script[3], fds))
        spec = self.spec(common, script)
        self.forget_listings()
        prepared = self.prepare(spec, common, fds)
        if prepared is None:
            return None
        gc.freeze()  # a collection in the child then leaves our objects (and their pages) alone
        try:
            pid, pidfd = fork_for_agent(given.get("cgroup", -1))
        except OSError as exc:
            self.undo(prepared)
            for fd in fds:
                os.close(fd)
            self.send(marshal.dumps(("error", exc.errno, exc.strerror)))
            return None
        if pid == 0:
            self.sock.detach()  # closed with every other fd: no object may close its number later
            return self.job(prepared, given)
        for fd in fds:  # before the answer: the agent reads the hook's stderr until every copy is closed
            os.close(fd)
        self.send(marshal.dumps(("started", pid)), [pidfd])
        self.undo(prepared)
        os.close(pidfd)
        return None

    def code_for(self, path, cwd):
        """The script compiled as the interpreter compiles a script it runs
        (and whether it was just compiled), cached by file identity;
        NotEligible when exec's outcome could differ. A relative path is
        the agent's: relative to its working directory."""
        filename = path if path.startswith("/") else os.path.join(cwd, path)  # as __main__.__file__ is made
        fd = os.open(filename, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:  # os-level calls: in a stage, each object made or touched is a page copied
            identity = _identity(os.fstat(fd))
            code = self.codes.get((filename, identity))
            if code is not None:
                return code, identity, False
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            source = b"".join(chunks)
        finally:
            os.close(fd)
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
        self.codes[filename, identity] = code
        return code, identity, True


def _identity(st):
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class SetUp:
    """A hook set up in this process, before the fork or clone that makes its process."""

    __slots__ = ("spec", "code", "identity", "fresh", "token", "loader")

    def __init__(self, spec, code, identity, fresh, token, loader):
        self.spec = spec
        self.code = code
        self.identity = identity  # of the file compiled
        self.fresh = fresh  # compiled now, not found in the cache
        self.token = token  # forkserver_child.before_fork's, for after_fork
        self.loader = loader  # of its __main__


def start():
    """Import, warm up and say hello: (the server, its stages or None), or None if refused."""
    fd = int(sys.argv[1])
    refused = preimport(sys.argv[2:])
    if not refused:
        warm()
    startup = forkserver_child.Startup(STARTUP_MODULES)
    if startup.mm is None or not forkserver_child.set_mm_map(startup.mm):
        refused = refused or "this kernel does not let a process show the command line exec would give (PR_SET_MM_MAP)"
    if not clone3_works():
        refused = refused or "no clone3 here (Linux 5.3, x86_64 or aarch64)"
    spawn = forkserver_stage.load_spawn(os.path.dirname(os.path.abspath(__file__)))
    tops = {name.partition(".")[0] for name in sys.modules} - {name.partition(".")[0] for name in STARTUP_MODULES}
    server = Server(fd, startup)
    server.added = spawn.added if spawn is not None else None
    stages = None
    if not refused and forkserver_stage.stages_work(spawn, fork_for_agent):
        stages = forkserver_stage.Stages(server, spawn)
    server.send(marshal.dumps(("hello", refused, sorted(tops), sys.version, stages is not None)))
    return None if refused else (server, stages)


if __name__ == "__main__":
    # Module globals, never freed: a hook's process that dropped the last
    # reference to the server would free (so copy the pages of) its caches.
    job = None
    started = start()
    if started is not None:
        job = started[0].serve(started[1])
    if job is not None:
        job.run()  # never returns: the hook's process leaves as its interpreter would
