"""Real QEMU hosts for the integration tests: a real ``libvirtd`` per host.

Each :class:`LibvirtHost` is one libvirtd in *session* mode, run as user
``nobody`` with its own HOME / XDG_CONFIG_HOME / XDG_CACHE_HOME /
XDG_RUNTIME_DIR (all under one short private directory owned by ``nobody``)
and its own ``host_uuid``. Clients reach it at ``host.uri``
(``qemu+unix:///session?socket=<runtime>/libvirt/libvirt-sock``). Two hosts
are two libvirt "hosts": live migration between them works.

A host may run inside a network namespace (:func:`make_netns_pair` makes two,
joined by a veth pair, with no route anywhere else). Its daemon, virtlogd and
QEMU processes then live in that namespace and ``host.address`` is the
namespace's veth address; the unix socket still reaches the daemon from the
test process (unix sockets are not bound to a network namespace).

Nothing here installs anything. :func:`qemu_unavailable_reason` tells why real
hosts cannot run on this machine, so a test can skip for that reason only.

Pytest fixtures are defined at the bottom; import them into a test module
(``from realhost import libvirt_host, ...``: tests/ is on sys.path, as for
``agentproc`` and ``conftest``) or load this module as a plugin
(``-p realhost``), which also registers the ``realhost`` marker.
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pytest

__all__ = [  # `from realhost import *` brings the API and every fixture (they need each other)
    "DAEMON_USER", "NETNS_SUBNET", "LibvirtHost", "NetNamespace", "RealHostError",
    "daemon_can_traverse", "daemon_ids", "disk_xml", "domain_xml", "free_port", "make_base_dir",
    "make_daemon_dir", "make_disk_image", "make_netns_pair", "netns_unavailable_reason",
    "qemu_unavailable_reason", "reap_stale_hosts", "remove_base_dir", "start_event_loop", "wait_for",
    "host_pair", "libvirt_event_loop", "libvirt_host", "make_host", "netns_host_pair", "netns_pair",
    "realhost_available", "realhost_dir", "two_hosts",
]

DAEMON_USER = "nobody"
# Binaries a real host needs; searched in PATH and the sbin directories.
REQUIRED_BINARIES = ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img", "setpriv")
EXTRA_SEARCH_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
BASE_PARENT = Path("/tmp")  # short on purpose: unix socket paths are <= 107 bytes
BASE_PREFIX = "vmh-"
NETNS_PREFIX = "vmh"
NETNS_SUBNET = "10.213.0"  # .1 and .2: veth ends inside our own namespaces only
NETNS_INTERFACE = "vmh0"
# Longest unix socket libvirt makes under a host's root (the QEMU monitor):
# <root>/config/libvirt/qemu/lib/domain-NNNN-<20 chars of name>/monitor.sock
_LONGEST_SOCKET_SUFFIX = len("/config/libvirt/qemu/lib/domain-9999-") + 20 + len("/monitor.sock")
_UNIX_PATH_MAX = 107
DEFAULT_START_TIMEOUT = 60.0
_CLONE_NEWNET = 0x40000000
_DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Each libvirtd runs under this small reaper (python -I -S -c REAPER <ppid> argv...),
# a child subreaper: libvirtd daemonizes QEMU and virtlogd, so they become its
# children instead of init's. It reaps them at once (libvirt waits for a
# killed QEMU's pid to vanish, and an init that reaps lazily adds seconds to
# every destroy, save and migration), and if the test process dies without
# stopping the host (SIGKILL, os._exit) it kills everything it holds. It
# exits with libvirtd's status once it has no children left.
REAPER = r"""
import ctypes, os, signal, sys
parent, argv = int(sys.argv[1]), sys.argv[2:]
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGTERM})
main = os.fork()
if main == 0:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)

def kill_children():
    for task in os.listdir("/proc/self/task"):
        try:
            pids = open(f"/proc/self/task/{task}/children").read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass

status, stopping = 0, False
while True:
    while True:
        try:
            pid, code = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            sys.exit(status if status >= 0 else 128 - status)
        if pid == 0:
            break
        if pid == main:
            status = os.waitstatus_to_exitcode(code)
    if stopping or os.getppid() != parent:
        stopping = True
        kill_children()
    got = signal.sigtimedwait({signal.SIGCHLD, signal.SIGTERM}, 0.5)
    if got is not None and got.si_signo == signal.SIGTERM:
        stopping = True
"""


class RealHostError(RuntimeError):
    """A real host could not be set up or did not answer."""


# --------------------------------------------------------------------------
# Can real hosts run here?


def _which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *EXTRA_SEARCH_DIRS])
    return shutil.which(name, path=path)


def qemu_unavailable_reason() -> str | None:
    """Why real QEMU hosts cannot run on this machine, or None if they can.

    Only looks; installs and starts nothing."""
    if not os.uname().sysname == "Linux":
        return "real hosts need Linux"
    if os.geteuid() != 0:
        return f"real hosts need root (to run libvirtd as {DAEMON_USER!r} and chown its files)"
    try:
        import libvirt  # noqa: F401
    except ImportError as error:
        return f"libvirt-python is not importable: {error}"
    missing = [name for name in REQUIRED_BINARIES if _which(name) is None]
    if missing:
        return "missing binaries: " + ", ".join(missing) + (
            " (Debian: libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils util-linux)"
        )
    try:
        pwd.getpwnam(DAEMON_USER)
    except KeyError:
        return f"user {DAEMON_USER!r} does not exist"
    if not BASE_PARENT.is_dir() or not os.access(BASE_PARENT, os.W_OK | os.X_OK):
        return f"{BASE_PARENT} is not a writable directory"
    return None


_netns_reason: list[str | None] = []


def netns_unavailable_reason() -> str | None:
    """Why hosts cannot run in network namespaces here, or None if they can.

    Probes once per process by adding and deleting a namespace."""
    if _netns_reason:
        return _netns_reason[0]
    reason = qemu_unavailable_reason()
    if reason is None:
        missing = [name for name in ("ip", "nsenter") if _which(name) is None]
        if missing:
            reason = "missing binaries: " + ", ".join(missing) + " (Debian: iproute2 util-linux)"
    if reason is None:
        probe = f"{NETNS_PREFIX}{os.getpid()}-probe"
        result = _run_ip("netns", "add", probe, check=False)
        if result.returncode != 0:
            reason = f"'ip netns add' does not work here: {result.stderr.strip()}"
        else:
            _run_ip("netns", "delete", probe, check=False)
    _netns_reason.append(reason)
    return reason


# --------------------------------------------------------------------------
# Files the daemon (user nobody) must use


def daemon_ids() -> tuple[int, int]:
    """uid and gid of the daemons' user."""
    entry = pwd.getpwnam(DAEMON_USER)
    return entry.pw_uid, entry.pw_gid


def _chown_to_daemon(path: Path) -> None:
    uid, gid = daemon_ids()
    os.chown(path, uid, gid)


def daemon_can_traverse(path: Path) -> bool:
    """Whether user nobody can reach `path` (x on every ancestor; ACLs ignored)."""
    uid, gid = daemon_ids()
    resolved = Path(path).resolve()
    for directory in [*reversed(resolved.parents), resolved]:
        if not directory.is_dir():
            continue  # a file's own permissions are not about traversal
        info = directory.stat()
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _require_traversable(path: Path) -> None:
    if not daemon_can_traverse(path):
        raise RealHostError(
            f"{path}: user {DAEMON_USER!r} cannot reach it (a parent directory lacks x for it); "
            f"use a directory under realhost_dir / a LibvirtHost's root"
        )


def make_daemon_dir(path: str | Path, mode: int = 0o700) -> Path:
    """A directory owned by nobody (e.g. for save images the daemon writes)."""
    path = Path(path)
    path.mkdir(mode=mode)
    os.chmod(path, mode)
    _chown_to_daemon(path)
    _require_traversable(path)
    return path


def make_disk_image(path: str | Path, *, fmt: str = "qcow2", size_mib: int = 16) -> Path:
    """A blank disk image owned by nobody, mode 0600 (qemu-img create)."""
    path = Path(path)
    _require_traversable(path.parent)
    qemu_img = _which("qemu-img")
    if qemu_img is None:
        raise RealHostError("qemu-img not found")
    result = subprocess.run(
        [qemu_img, "create", "-q", "-f", fmt, str(path), f"{size_mib}M"],
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise RealHostError(f"qemu-img create {path} failed: {result.stderr.strip()}")
    os.chmod(path, 0o600)
    _chown_to_daemon(path)
    return path


# --------------------------------------------------------------------------
# Domain XML


def domain_xml(
    name: str | None = None,
    *,
    uuid: str | None = None,
    memory_mib: int = 64,
    vnc: bool = False,
    scsi: bool = False,
    usb: bool = False,
    devices: str = "",
) -> str:
    """A diskless test domain: TCG (type='qemu'), <acpi/> for PCI hotplug.

    It sits in the firmware ("no bootable device"), which is enough for every
    lifecycle operation. `scsi` adds a virtio-scsi controller and `usb` a
    qemu-xhci controller so SCSI / USB disks can be hot(un)plugged (PCI unplug
    never completes without a guest OS). `devices` is raw XML appended inside
    <devices>."""
    name = name or f"vmh-{secrets.token_hex(4)}"
    uuid = uuid or str(uuidlib.uuid4())
    parts = [
        "<emulator>{}</emulator>".format(escape(_which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64")),
    ]
    if scsi:
        parts.append("<controller type='scsi' index='0' model='virtio-scsi'/>")
    if usb:
        parts.append("<controller type='usb' index='0' model='qemu-xhci'/>")
    if vnc:
        parts.append("<graphics type='vnc' autoport='yes' listen='127.0.0.1'/>")
    parts.append("<memballoon model='none'/>")
    if devices:
        parts.append(devices)
    device_xml = "\n    ".join(parts)
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <uuid>{escape(uuid)}</uuid>
  <memory unit='MiB'>{int(memory_mib)}</memory>
  <currentMemory unit='MiB'>{int(memory_mib)}</currentMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    {device_xml}
  </devices>
</domain>
"""


def disk_xml(path: str | Path, target: str, *, bus: str = "scsi", fmt: str = "qcow2") -> str:
    """A file-backed <disk> for attachDeviceFlags / detachDeviceFlags."""
    return (
        "<disk type='file' device='disk'>"
        f"<driver name='qemu' type={quoteattr(fmt)}/>"
        f"<source file={quoteattr(str(path))}/>"
        f"<target dev={quoteattr(target)} bus={quoteattr(bus)}/>"
        "</disk>"
    )


# --------------------------------------------------------------------------
# Network namespaces


def _run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = _which("ip") or "ip"
    result = subprocess.run([ip, *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RealHostError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


@dataclass(frozen=True)
class NetNamespace:
    """A network namespace made for one test host (see make_netns_pair)."""

    name: str
    address: str  # this namespace's veth address; the peer's is reachable
    interface: str = NETNS_INTERFACE

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def command_prefix(self) -> list[str]:
        """argv prefix that runs a command inside this namespace."""
        return [_which("nsenter") or "nsenter", f"--net={self.path}", "--"]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with the *current thread* in this namespace.

        Sockets created inside keep the namespace after the block, so a test
        can connect to an agent listening on a namespace address."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(self.path, os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)


_netns_counter = iter(range(1 << 30))


@contextlib.contextmanager
def make_netns_pair() -> Iterator[tuple[NetNamespace, NetNamespace]]:
    """Two fresh network namespaces joined by a veth pair, loopback up.

    Addresses NETNS_SUBNET.1/24 and .2/24 are set on the veth ends; the
    namespaces have no other interface and no route out. Both namespaces
    (and so the veth pair) are deleted on exit. Stop the hosts running in
    them first."""
    reason = netns_unavailable_reason()
    if reason is not None:
        raise RealHostError(reason)
    stem = f"{NETNS_PREFIX}{os.getpid()}-{next(_netns_counter)}"
    pair = (NetNamespace(f"{stem}a", f"{NETNS_SUBNET}.1"), NetNamespace(f"{stem}b", f"{NETNS_SUBNET}.2"))
    made: list[NetNamespace] = []
    try:
        for namespace in pair:
            _run_ip("netns", "add", namespace.name)
            made.append(namespace)
        first, second = pair
        _run_ip("link", "add", first.interface, "netns", first.name, "type", "veth",
                "peer", "name", second.interface, "netns", second.name)
        for namespace in pair:
            _run_ip("-n", namespace.name, "addr", "add", f"{namespace.address}/24", "dev", namespace.interface)
            _run_ip("-n", namespace.name, "link", "set", "lo", "up")
            _run_ip("-n", namespace.name, "link", "set", namespace.interface, "up")
        yield pair
    finally:
        for namespace in made:
            _run_ip("netns", "delete", namespace.name, check=False)


# --------------------------------------------------------------------------
# Processes


def _process_env(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _process_alive(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _process_uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _processes_under(root: Path) -> list[int]:
    """Live processes of the daemon user whose environment points into `root`
    (libvirtd, virtlogd and QEMU all carry HOME/XDG_* paths from there)."""
    uid, _ = daemon_ids()
    prefix = f"{root}/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if _process_uid(pid) != uid or not _process_alive(pid):
            continue
        if any(value.partition("=")[2].startswith(prefix) or value.partition("=")[2] == str(root)
               for value in _process_env(pid)):
            found.append(pid)
    return found


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if _process_alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [pid for pid in alive if _process_alive(pid)]
    return alive


def free_port(address: str = "127.0.0.1", netns: NetNamespace | None = None) -> int:
    """A TCP port free right now on `address` (in `netns` if given)."""
    with netns.entered() if netns is not None else contextlib.nullcontext():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
            return int(sock.getsockname()[1])


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"({path}: {error.strerror})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------
# The capabilities cache: probing QEMU costs seconds on each fresh daemon, so
# the first host's cache is kept in memory and seeded into later hosts.
# libvirt checks it (QEMU's and its own ctime, version) and re-probes if stale.

_caps_cache: dict[str, bytes] = {}
_CAPS_DIR = Path("cache/libvirt/qemu/cache/capabilities")


# --------------------------------------------------------------------------
# Base directories and stale leftovers


def make_base_dir() -> Path:
    """A short private base directory for hosts and shared files: /tmp/vmh-<pid>-XXXX,
    mode 0711 (nobody may traverse it, not list or write it)."""
    base = Path(tempfile.mkdtemp(prefix=f"{BASE_PREFIX}{os.getpid()}-", dir=BASE_PARENT))
    os.chmod(base, 0o711)
    return base


def remove_base_dir(base: Path) -> None:
    """Remove a base directory after killing anything still running from it."""
    if base.exists():
        leftovers = _processes_under(base)
        for pid in leftovers:
            _signal(pid, signal.SIGKILL)
        _wait_gone(leftovers, 5)
        shutil.rmtree(base, ignore_errors=True)


def _owner_pid(name: str, prefix: str) -> int | None:
    digits = name[len(prefix):].split("-", 1)[0]
    return int(digits) if digits.isdigit() else None


def reap_stale_hosts() -> None:
    """Clean what test processes that died hard (SIGKILL, os._exit) left:
    /tmp/vmh-<pid>-* trees and vmh<pid>-* namespaces whose <pid> is gone,
    with the daemons still running from them."""
    for base in BASE_PARENT.glob(f"{BASE_PREFIX}*"):
        owner = _owner_pid(base.name, BASE_PREFIX)
        if owner is not None and owner != os.getpid() and not Path(f"/proc/{owner}").exists():
            remove_base_dir(base)
    if Path("/run/netns").is_dir() and _which("ip"):
        for entry in Path("/run/netns").iterdir():
            if not entry.name.startswith(NETNS_PREFIX):
                continue
            owner = _owner_pid(entry.name, NETNS_PREFIX)
            if owner is not None and owner != os.getpid() and not Path(f"/proc/{owner}").exists():
                _run_ip("netns", "delete", entry.name, check=False)


# --------------------------------------------------------------------------
# The host


_live_hosts: set[LibvirtHost] = set()


class LibvirtHost:
    """One real libvirtd (session mode, user nobody) = one test host.

    ``LibvirtHost(tmpdir, name, netns=None).start()`` makes ``<tmpdir>/<name>``
    (tmpdir must be short and traversable by nobody: use realhost_dir /
    make_base_dir), writes libvirtd.conf (host_uuid) and qemu.conf, starts
    the daemon and waits until its socket answers. ``stop()`` kills QEMU,
    libvirtd and virtlogd and removes the directory; it is idempotent and safe
    after a failed start. Also a context manager."""

    def __init__(
        self,
        tmpdir: str | Path | None,
        name: str,
        netns: NetNamespace | None = None,
        *,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        extra_conf: str = "",
        host_uuid: str | None = None,
    ) -> None:
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"host name must be alphanumeric (with - or _): {name!r}")
        self.name = name
        self.netns = netns
        self.host_uuid = host_uuid or str(uuidlib.uuid4())
        self.address = netns.address if netns is not None else "127.0.0.1"
        self.start_timeout = start_timeout
        self.extra_conf = extra_conf
        self._own_base = tmpdir is None
        self._tmpdir = Path(tmpdir) if tmpdir is not None else None
        self.root = (self._tmpdir / name) if self._tmpdir is not None else Path()
        self._owns_root = False  # only a tree this object made is ever removed
        self._process: subprocess.Popen[bytes] | None = None
        self._connections: list[Any] = []
        self._lock = threading.Lock()

    # paths -------------------------------------------------------------
    @property
    def runtime_dir(self) -> Path:
        return self.root / "run"

    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / "libvirt" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu+unix:///session?socket={self.socket_path}"

    @property
    def log_path(self) -> Path:
        """libvirtd's stdout/stderr (warnings and errors)."""
        return self.root / "libvirtd.log"

    @property
    def pid(self) -> int | None:
        """libvirtd's pid (from its pid file), None when it is not running."""
        return self.pids().get("libvirtd")

    def domain_log_path(self, domain_name: str) -> Path:
        return self.root / "cache" / "libvirt" / "qemu" / "log" / f"{domain_name}.log"

    def qemu_pid(self, domain_name: str) -> int | None:
        """The QEMU pid of a running domain, from libvirt's pid file."""
        return self._read_pid(self.runtime_dir / "libvirt" / "qemu" / "run" / f"{domain_name}.pid")

    def pids(self) -> dict[str, int]:
        """Live processes of this host: 'libvirtd', 'virtlogd', 'qemu:<domain>'."""
        found: dict[str, int] = {}
        libvirt_run = self.runtime_dir / "libvirt"
        for key, pid_file in (("libvirtd", libvirt_run / "libvirtd.pid"),
                              ("virtlogd", libvirt_run / "virtlogd.pid")):
            pid = self._read_pid(pid_file)
            if pid is not None:
                found[key] = pid
        for pid_file in sorted((libvirt_run / "qemu" / "run").glob("*.pid")):
            if pid_file.name == "driver.pid":
                continue
            pid = self._read_pid(pid_file)
            if pid is not None:
                found[f"qemu:{pid_file.stem}"] = pid
        return found

    def _read_pid(self, pid_file: Path) -> int | None:
        """A pid from a pid file, only if that process is alive and ours."""
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if not _process_alive(pid):
            return None
        prefix = f"{self.root}/"
        if not any(value.partition("=")[2].startswith(prefix) for value in _process_env(pid)):
            return None  # a recycled pid: not one of ours
        return pid

    # lifecycle ---------------------------------------------------------
    def __enter__(self) -> LibvirtHost:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f" netns={self.netns.name}" if self.netns else ""
        return f"<LibvirtHost {self.name} {self.address}{where} uuid={self.host_uuid} root={self.root}>"

    def start(self) -> LibvirtHost:
        if self._process is not None:
            raise RealHostError(f"host {self.name} already started")
        reason = qemu_unavailable_reason()
        if reason is not None:
            raise RealHostError(f"cannot start a real host: {reason}")
        if self._tmpdir is None:
            self._tmpdir = make_base_dir()
            self.root = self._tmpdir / self.name
        if not self._tmpdir.is_dir():
            raise RealHostError(f"{self._tmpdir}: not a directory")
        if len(str(self.root)) + _LONGEST_SOCKET_SUFFIX > _UNIX_PATH_MAX:
            raise RealHostError(
                f"{self.root}: path too long for libvirt's unix sockets "
                f"(at most {_UNIX_PATH_MAX - _LONGEST_SOCKET_SUFFIX} characters); use realhost_dir / make_base_dir()"
            )
        _live_hosts.add(self)
        try:
            self._prepare_tree()
            self._spawn()
            self._wait_ready()
        except BaseException:
            self.stop(keep_logs=False)
            raise
        self._remember_caps()
        return self

    def _prepare_tree(self) -> None:
        _require_traversable(self.root.parent)
        self.root.mkdir(mode=0o700)
        self._owns_root = True
        for sub in ("home", "config", "config/libvirt", "cache", "run"):
            (self.root / sub).mkdir(mode=0o700)
        caps_dir = self.root / _CAPS_DIR
        if _caps_cache:
            caps_dir.mkdir(mode=0o700, parents=True)
            for file_name, content in _caps_cache.items():
                (caps_dir / file_name).write_bytes(content)
        libvirtd_conf = self.root / "config" / "libvirt" / "libvirtd.conf"
        libvirtd_conf.write_text(
            f'host_uuid = "{self.host_uuid}"\n'
            + ('log_filters = "1:qemu 1:libvirt 3:object 3:json 3:event 3:util"\nlog_outputs = "1:stderr"\n'
               if os.environ.get("VMHOOKS_REALHOST_DEBUG") else "")
            + self.extra_conf + "\n"
        )
        # Random display ports per host: two daemons would otherwise race for 5900.
        display = 20000 + random.randrange(4000) * 8
        qemu_conf = self.root / "config" / "libvirt" / "qemu.conf"
        # In a namespace, incoming migrations listen on and are advertised as
        # the namespace's address. libvirt refuses loopback addresses there,
        # so a loopback host relies on the migration parameters (URI and
        # listen address, see migration_params()).
        network = (f'migration_address = "{self.address}"\nmigration_host = "{self.address}"\n'
                   if self.netns is not None else "")
        qemu_conf.write_text(
            network
            + 'vnc_listen = "127.0.0.1"\n'
            f"remote_display_port_min = {display}\n"
            f"remote_display_port_max = {display + 7}\n"
        )
        uid, gid = daemon_ids()
        for directory, _dirs, files in os.walk(self.root):
            os.chown(directory, uid, gid)
            for file_name in files:
                os.chown(os.path.join(directory, file_name), uid, gid)

    def _environment(self) -> dict[str, str]:
        return {
            "PATH": _DAEMON_PATH,
            "HOME": str(self.root / "home"),
            "USER": DAEMON_USER,
            "LOGNAME": DAEMON_USER,
            "LANG": "C.UTF-8",
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_CACHE_HOME": str(self.root / "cache"),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
        }

    def command(self) -> list[str]:
        """The argv that starts this host's daemon as nobody, in its namespace
        if any (run it with _environment(); the reaper goes in front)."""
        uid, gid = daemon_ids()
        argv = [_which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={gid}",
                "--clear-groups", "--", _which("libvirtd") or "libvirtd"]
        if self.netns is not None:
            argv = self.netns.command_prefix() + argv
        return argv

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", REAPER, str(os.getpid()), *self.command()],
                env=self._environment(),
                cwd=self.root / "home",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C in the terminal is for pytest, not the daemon
                close_fds=True,
            )

    def _wait_ready(self) -> None:
        import libvirt

        assert self._process is not None
        outcome: list[BaseException | None] = []

        def probe() -> None:
            try:
                conn = libvirt.open(self.uri)
                try:
                    conn.getVersion()
                finally:
                    conn.close()
                outcome.append(None)
            except BaseException as error:  # reported to the waiting thread
                outcome.append(error)

        deadline = time.monotonic() + self.start_timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RealHostError(self._failure(f"libvirtd exited with status {self._process.returncode} at start"))
            if self.socket_path.exists():
                outcome.clear()
                thread = threading.Thread(target=probe, name=f"probe-{self.name}", daemon=True)
                thread.start()
                thread.join(max(0.1, deadline - time.monotonic()))
                if outcome and outcome[0] is None:
                    return
                if outcome:
                    last_error = outcome[0]
            time.sleep(0.05)
        detail = f" (last error: {last_error})" if last_error else ""
        raise RealHostError(self._failure(
            f"libvirtd did not answer on {self.socket_path} within {self.start_timeout:.0f} s{detail}"))

    def _failure(self, what: str) -> str:
        return f"host {self.name}: {what}\n--- last lines of {self.log_path} ---\n{_tail(self.log_path, 30)}"

    def _remember_caps(self) -> None:
        if _caps_cache:
            return
        for path in (self.root / _CAPS_DIR).glob("*.xml"):
            with contextlib.suppress(OSError):
                _caps_cache[path.name] = path.read_bytes()

    def connect(self) -> Any:
        """A libvirt.virConnect to this host, closed by stop()."""
        import libvirt

        conn = libvirt.open(self.uri)
        self._connections.append(conn)
        return conn

    def free_port(self) -> int:
        """A TCP port free right now on this host's address."""
        return free_port(self.address, self.netns)

    def migration_uri(self) -> str:
        """tcp://<address>:<free port>: for VIR_MIGRATE_PARAM_URI with this host as destination."""
        return f"tcp://{self.address}:{self.free_port()}"

    def migration_params(self) -> dict[str, Any]:
        """migrateToURI3 parameters for a migration *to* this host: the data
        URI on a free port of its address, and the destination QEMU listening
        on that address only (by default it would listen on every address)."""
        import libvirt

        return {
            libvirt.VIR_MIGRATE_PARAM_URI: self.migration_uri(),
            libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: self.address,
        }

    def log_tail(self, lines: int = 30) -> str:
        """The end of libvirtd's log and of every QEMU log of this host."""
        parts = [f"--- {self.log_path} ---", _tail(self.log_path, lines)]
        for path in sorted((self.root / "cache" / "libvirt" / "qemu" / "log").glob("*.log")):
            parts += [f"--- {path} ---", _tail(path, lines)]
        return "\n".join(parts)

    def stop(self, *, keep_logs: bool = False) -> None:
        """Kill QEMU, libvirtd and virtlogd of this host, remove its files.

        By pid files first (each pid checked to be ours), then by a sweep of
        the daemon user's processes whose environment points into the host's
        directory. `keep_logs` keeps the directory (for a post-mortem)."""
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(Exception):
                    conn.close()
            self._connections.clear()
            if not self._owns_root or not self.root.exists():
                self._finish_stop(keep_logs)
                return
            # No graceful shutdown: the tree is thrown away, and SIGKILL is
            # quick and deterministic.
            known = list(self.pids().values())
            for pid in known:
                _signal(pid, signal.SIGKILL)
            if self._process is not None:
                if self._process.poll() is None:
                    self._process.send_signal(signal.SIGTERM)  # the reaper kills what it holds
                try:
                    self._process.wait(10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(5)
            _wait_gone(known, 5)
            # Anything else started from this host's tree (a process that escaped the reaper, ...).
            for _ in range(3):
                leftovers = _processes_under(self.root)
                if not leftovers:
                    break
                for pid in leftovers:
                    _signal(pid, signal.SIGKILL)
                _wait_gone(leftovers, 5)
            else:
                raise RealHostError(f"host {self.name}: processes still alive after SIGKILL: {leftovers}")
            self._finish_stop(keep_logs)

    def _finish_stop(self, keep_logs: bool) -> None:
        if not keep_logs:
            if self._owns_root:
                shutil.rmtree(self.root, ignore_errors=True)
            if self._own_base and self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
        _live_hosts.discard(self)


def _stop_all_at_exit() -> None:
    for host in list(_live_hosts):
        with contextlib.suppress(Exception):
            host.stop()


atexit.register(_stop_all_at_exit)


# --------------------------------------------------------------------------
# libvirt's default event loop (for domain events)

_event_loop: list[threading.Thread] = []


def start_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon
    thread, once per process. Call it before opening the connections whose
    events you want (it also turns on keepalive for remote connections)."""
    if _event_loop:
        return
    import libvirt

    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            try:
                libvirt.virEventRunDefaultImpl()
            except Exception:  # keep the loop alive whatever a callback did
                time.sleep(0.01)

    thread = threading.Thread(target=run, name="libvirt-event-loop", daemon=True)
    thread.start()
    _event_loop.append(thread)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll until predicate() is truthy; return its value or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


# --------------------------------------------------------------------------
# pytest fixtures (import them into a test module, or load with -p realhost)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "realhost: needs a real libvirtd + QEMU; skipped only when they cannot run here")


@pytest.fixture(scope="session")
def realhost_available() -> None:
    """Skips when real hosts cannot run here; reaps leftovers of dead test runs."""
    reason = qemu_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    reap_stale_hosts()


@pytest.fixture
def realhost_dir(realhost_available: None) -> Iterator[Path]:
    """A short base directory (/tmp/vmh-<pid>-XXXX, 0711) for hosts and files
    they share (disk images, save files); removed afterwards."""
    base = make_base_dir()
    try:
        yield base
    finally:
        remove_base_dir(base)


@pytest.fixture
def make_host(realhost_dir: Path) -> Iterator[Callable[..., LibvirtHost]]:
    """make_host(name, netns=None, **kwargs) -> a started LibvirtHost, stopped
    at teardown (its log tails are printed first: pytest shows them on failure)."""
    hosts: list[LibvirtHost] = []

    def make(name: str, netns: NetNamespace | None = None, **kwargs: Any) -> LibvirtHost:
        host = LibvirtHost(realhost_dir, name, netns, **kwargs)
        hosts.append(host)
        return host.start()

    try:
        yield make
    finally:
        errors = []
        for host in reversed(hosts):
            if host.root.exists():
                print(f"=== host {host!r}\n{host.log_tail()}")
            try:
                host.stop()
            except Exception as error:  # stop the others anyway
                errors.append(error)
        if errors:
            raise errors[0]


@pytest.fixture
def libvirt_host(make_host: Callable[..., LibvirtHost]) -> LibvirtHost:
    """One started host on loopback."""
    return make_host("h1")


@pytest.fixture
def host_pair(make_host: Callable[..., LibvirtHost]) -> tuple[LibvirtHost, LibvirtHost]:
    """Two started hosts on loopback (different host_uuid)."""
    return make_host("ha"), make_host("hb")


@pytest.fixture
def netns_pair(realhost_available: None) -> Iterator[tuple[NetNamespace, NetNamespace]]:
    """Two network namespaces joined by a veth pair; skips if namespaces cannot be made here."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    with make_netns_pair() as pair:
        yield pair


@pytest.fixture
def netns_host_pair(
    netns_pair: tuple[NetNamespace, NetNamespace], make_host: Callable[..., LibvirtHost]
) -> tuple[LibvirtHost, LibvirtHost]:
    """Two started hosts, each in its own network namespace (NETNS_SUBNET.1 / .2)."""
    first, second = netns_pair
    return make_host("na", first), make_host("nb", second)


@pytest.fixture(params=["loopback", "netns"])
def two_hosts(request: pytest.FixtureRequest, make_host: Callable[..., LibvirtHost]) -> tuple[LibvirtHost, LibvirtHost]:
    """Two started hosts, once on loopback and once in two network namespaces
    (that run skips, with the reason, where namespaces cannot be made).
    For tests that only use host.uri / host.address / migration_params()."""
    if request.param == "loopback":
        return make_host("ha"), make_host("hb")
    first, second = request.getfixturevalue("netns_pair")
    return make_host("na", first), make_host("nb", second)


@pytest.fixture(scope="session")
def libvirt_event_loop() -> None:
    """libvirt's default event loop running in a thread (for domain events)."""
    start_event_loop()
