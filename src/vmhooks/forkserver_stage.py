"""A fork server's stages: how a hook's process is made without a fork on
its path (`forkserver_main.py` runs this; standard library only).

Forking the server for each hook costs the hook a page-table copy, the
interpreter's after-fork work, the pages the two then copy as either of
them writes, and at the hook's exit the tear-down of everything it shared.
So the server keeps a *stage* ready: a fork of itself (a child of the
agent's, CLONE_PARENT) that reads the agent's next request itself. For a
hook it sets up what the hook inherits, then clones the hook from itself
with `_spawn.become_hook` (CLONE_VM | CLONE_VFORK | CLONE_PARENT, into
the hook's cgroup): the hook goes on in the stage's memory, which nothing
else uses, and the stage sleeps in the kernel until the hook has exited
or exec'd, then exits and tears that memory down, off the hook's path.
The hook tells the agent it started (with a pidfd of itself, and its
stage's pid: the agent reaps the stage too) and the server that the stage
is taken; the server forks the next stage while the hook runs. The agent
names the next script of the chain with each request: the server sets it
up before the fork, so that the next stage inherits it ready, and only
compares when the request comes. A stage that sees the agent leave says
who it is (`("stage", pid)`), to be reaped.
"""
import gc
import marshal
import os
import select
import sys

import _imp
import _socket

MAX_NOTICE = 1 << 16
IDLE_MS = 1000  # with no hook for this long, the server shows its own name again
MAX_STAGE_DEATHS = 3  # stages in a row that died untaken: the server forks each hook itself instead


class StagesFailed(Exception):
    """Stages cannot be kept here: the server forks each hook itself."""


def load_spawn(directory):
    """The agent's build of `vmhooks._spawn` from `directory`, when this
    interpreter can load it; else None. It is not left in sys.modules, where
    a hook would see it."""
    bootstrap, external = sys.modules["_frozen_importlib"], sys.modules["_frozen_importlib_external"]
    name = "vmhooks._spawn"
    for suffix in _imp.extension_suffixes():
        path = os.path.join(directory, "_spawn" + suffix)
        if not os.path.isfile(path):
            continue
        loader = external.ExtensionFileLoader(name, path)
        try:
            module = loader.create_module(bootstrap.ModuleSpec(name, loader, origin=path))
        except ImportError:
            return None
        finally:
            sys.modules.pop(name, None)
        return module if all(hasattr(module, name) for name in ("become_hook", "fork_stage", "added")) else None
    return None


def stages_work(spawn, fork_for_agent):
    """Whether a stage can become a hook here: tried once, at start."""
    if spawn is None:
        return False
    reader, writer = os.pipe()
    try:
        pid, pidfd = fork_for_agent(-1, flags=0)  # a child of ours, standing for a stage
    except OSError:
        os.close(reader)
        os.close(writer)
        return False
    if pid == 0:
        try:
            spawn.become_hook(-1)
        except BaseException:  # noqa: BLE001 - the test stage says no by its exit
            os._exit(1)
        os.write(writer, b"1")  # the clone, also a child of ours (CLONE_PARENT)
        os._exit(0)
    os.close(writer)
    worked = os.read(reader, 1) == b"1"
    os.close(reader)
    os.close(pidfd)
    os.waitpid(pid, 0)
    if worked:
        os.waitpid(-1, 0)
    return worked


class Stages:
    def __init__(self, server, spawn):
        self.server = server
        self.spawn = spawn  # vmhooks._spawn
        self.notify = None  # in a stage: the server's notice socket
        self.box = None  # in a stage: a socket pair holding the hook's std fds in flight
        self.expected = None  # (common spec, script) the next request most likely asks for
        self.prepared = None  # the SetUp in place in this process, and the (common spec, script) it is for

    def serve(self):
        """In the server: keep a stage ready until the agent goes (None).
        In a hook's process: its Job. StagesFailed: fork each hook instead."""
        notices, notify = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        poller = select.poll()
        poller.register(notices.fileno(), select.POLLIN)
        self.server.forget_listings()
        deaths = 0
        while deaths < MAX_STAGE_DEATHS:
            self._prepare_expected()
            gc.freeze()  # a collection in a stage or hook then leaves our objects (and their pages) alone
            try:
                pid, pidfd = self.spawn.fork_stage()
            except OSError:
                self._put_back()
                break
            if pid == 0:
                notices.close()
                self.notify = notify
                return self._stage()
            # What was set up stays, for the next hook to be set up over it:
            # putting it back now would write it twice (each write, a page
            # copied while the stage lives).
            notice = self._wait(poller, notices, pidfd)
            os.close(pidfd)
            if notice is None:  # died untaken: killed, say
                deaths += 1
                continue
            deaths = 0
            if notice[0] == "eof":
                return None
            _, common, following, fresh = notice
            self.expected = (common, following) if following is not None else None
            if fresh is not None:  # a script the stage compiled: the next stages have it
                try:
                    self.server.code_for(*fresh)
                except Exception:  # noqa: BLE001 - only a cache: the stage decided
                    pass
        self._put_back()
        notices.close()
        notify.close()
        raise StagesFailed()

    def _prepare_expected(self):
        """Set up here what the next hook most likely is, for the stage to
        inherit: done in this warm process, it is off the hook's path."""
        if self.expected is None or (self.prepared is not None and self.prepared[1] == self.expected):
            return
        common, script = self.expected
        over = self.prepared[0] if self.prepared is not None else None
        try:
            self.prepared = (self.server.set_up(self.server.spec(common, script), common, over), self.expected)
        except Exception:  # noqa: BLE001 - a guess only (what was in place stays): the stage sets up what is asked
            pass

    def _put_back(self):
        """This process's own name, command line and sys.path again."""
        if self.prepared is not None:
            self.server.undo(self.prepared[0])
            self.prepared = None

    def _wait(self, poller, notices, pidfd):
        """The stage's notice, or None if it died without one."""
        poller.register(pidfd, select.POLLIN)
        try:
            while True:
                try:
                    ready = [fd for fd, _ in poller.poll(IDLE_MS if self.prepared is not None else None)]
                except InterruptedError:
                    continue
                if not ready:  # no hook for a while: show ourselves again
                    self._put_back()
                    continue
                if notices.fileno() in ready:
                    return marshal.loads(notices.recv(MAX_NOTICE))
                if pidfd in ready:
                    try:
                        return marshal.loads(notices.recv(MAX_NOTICE, _socket.MSG_DONTWAIT))
                    except BlockingIOError:
                        return None
        finally:
            poller.unregister(pidfd)

    def _stage(self):
        """In a stage: answer the agent until a request is a hook to run."""
        self.box = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        job = self.server.answer(self.become)
        if job is None:  # the agent is gone: it reaps us once told who we are
            try:
                self.server.send(marshal.dumps(("stage", os.getpid())))
            except OSError:
                pass
            self.notify.send(marshal.dumps(("eof",)))
            os._exit(0)
        return job

    def become(self, request, fds):
        """In a stage: clone the hook, which returns its Job; None here when
        the script is exec'd instead (answered)."""
        _, common, script, following = request
        given = dict(zip(script[3], fds))
        wanted = (common, script[:3])
        in_place = self.prepared[0] if self.prepared is not None else None
        if in_place is not None and self.prepared[1] == wanted and self.server.unchanged(in_place):
            setup = in_place  # the usual case: set up by the server, before our fork
        else:
            setup = self.server.prepare(self.server.spec(common, script), common, fds, over=in_place)
            if setup is None:  # answered that it is exec'd
                self._put_back()
                return None
            self.prepared = (setup, wanted)
        cgroup = given.pop("cgroup", -1)
        # The std fds wait in our socket pair for the hook to take: a copy
        # in our table would keep the hook's stderr open until we exit.
        roles, passed = list(given), list(given.values())
        if passed:
            self.box[0].sendmsg([b"f"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _fd_bytes(passed))])
            for fd in passed:
                os.close(fd)
        stage = os.getpid()
        gc.freeze()
        try:
            self.spawn.become_hook(cgroup)
        except OSError as exc:
            self._put_back()
            for fd in (self._take() if passed else []) + ([cgroup] if cgroup >= 0 else []):
                os.close(fd)
            self.server.send(marshal.dumps(("error", exc.errno, exc.strerror)))
            return None
        # The hook's process from here on: the stage sleeps until it is gone.
        pidfd = os.pidfd_open(os.getpid())
        self.server.send(marshal.dumps(("started", os.getpid(), stage)), [pidfd])
        os.close(pidfd)
        compiled = (setup.spec["path"], setup.spec["cwd"]) if setup.fresh else None
        self.notify.send(marshal.dumps(("taken", common, following, compiled)))
        fds = dict(zip(roles, self._take() if passed else []))
        for sock in (self.server.sock, self.notify, *self.box):
            sock.detach()  # closed with every other fd: no object may close its number later
        return self.server.job(setup, fds)

    def _take(self):
        _, ancillary, _, _ = self.box[1].recvmsg(1, _socket.CMSG_SPACE(8 * 4))
        fds = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += _fds_of(payload)
        return fds


def _fd_bytes(fds):
    return b"".join(fd.to_bytes(4, sys.byteorder, signed=True) for fd in fds)


def _fds_of(payload):
    usable = len(payload) - len(payload) % 4
    return [int.from_bytes(payload[i : i + 4], sys.byteorder, signed=True) for i in range(0, usable, 4)]
