"""`vmhooks serve`: run the host agent until SIGTERM or SIGINT."""
from __future__ import annotations

import argparse
import ctypes
import faulthandler
import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from vmhooks import __version__, logs
from vmhooks.commands.common import add_hooks_pythonpath, hooks_pythonpath
from vmhooks.commands.display import duration
from vmhooks.config import DEFAULT_CONFIG_FILE, AgentSettings, default_hooks_dir, load_settings_file
from vmhooks.errors import UsageError

log = logging.getLogger("vmhooks")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the host agent",
        description="Run the host agent: libvirt VMs with hooks at every point, "
        "served as JSON-RPC on a Unix socket. Flags override the config file.",
    )
    parser.add_argument("--config", type=Path, help=f"TOML config file (default: {DEFAULT_CONFIG_FILE} if present)")
    parser.add_argument("--libvirt-uri", help="libvirt URI (default: test:///default, libvirt's embedded test driver)")
    parser.add_argument("--hooks-dir", type=Path, help="hooks root (default: $VMHOOKS_HOOKS_DIR or /usr/libexec/vdsm/hooks)")
    parser.add_argument("--state-dir", type=Path, help="SQLite state, history, hibernation images (default: /var/lib/vmhooks)")
    parser.add_argument("--save-dir", type=Path, help="hibernation images, written by libvirtd (default: <state-dir>/hibernation)")
    parser.add_argument("--run-dir", type=Path, help="socket, launch flags and hook payloads, best on tmpfs "
                        "(default: /run/vmhooks, or <socket dir>/<socket name>.run when only --socket is given)")
    parser.add_argument("--socket", type=Path, help="the API socket (default: <run-dir>/vmhooks.sock)")
    parser.add_argument("--socket-group", help="also let this group use the socket (mode 0660)")
    parser.add_argument("--hook-timeout", type=float, metavar="S", help="seconds per hook script (default: 60)")
    parser.add_argument("--history-days", type=float, metavar="DAYS", help="keep hook runs this long (default: 90)")
    parser.add_argument("--history-max-mb", type=float, metavar="MIB",
                        help="keep at most this much history, the oldest pruned first (default: 512)")
    parser.add_argument("--properties", metavar="SPEC", help="custom property rules: name=regex;name=regex")
    parser.add_argument("--allow-unsafe-hooks", action="store_true", default=None,
                        help="development only: run hooks writable by group/others")
    parser.add_argument("--no-fast-path", dest="fast_path", action="store_false", default=None,
                        help="exec every Python hook instead of forking it from a warm interpreter")
    parser.add_argument("--max-connections", type=int, metavar="N", help="connections each listener serves at once (default: 128)")
    parser.add_argument("--request-timeout", type=float, metavar="S", help="seconds a client has to send a whole request (default: 30)")
    parser.add_argument("--shutdown-grace", type=float, metavar="S",
                        help="on SIGTERM, seconds requests in flight may take to finish (default: 10)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="also serve peers (migration) over TCP, mutual TLS only")
    parser.add_argument("--tls-cert", type=Path, help="this agent's certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    parser.add_argument("--tls-ca", type=Path, help="the CA that signs every agent's certificate")
    parser.add_argument("--migration-address", metavar="HOST", help="where peers send migration data (default: the --listen host)")
    parser.add_argument("--migration-ports", metavar="LOW-HIGH", help="ports for incoming migrations (default: 49152-49215)")
    parser.add_argument("--migration-libvirt-uri", metavar="URI", help="how peers' libvirtd reaches ours (default: --libvirt-uri)")
    add_hooks_pythonpath(parser)
    parser.add_argument("--http-listen", metavar="[HOST:]PORT",
                        help="serve the read-only web console and /metrics here (HOST default: 127.0.0.1; needs vmhooks[web])")
    parser.add_argument("--metrics-public", action="store_true", default=None, help="serve /metrics without the token")
    parser.add_argument("--log-level", default="INFO", choices=logs.LEVELS)
    parser.add_argument("--log-format", default="text", choices=logs.FORMATS,
                        help="text (default; under systemd, journald priorities and no timestamps) "
                        "or json, one object per line for log shippers")
    parser.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> AgentSettings:
    values: dict[str, Any] = {"hooks_dir": default_hooks_dir()}
    config = args.config
    if config is None and DEFAULT_CONFIG_FILE.exists():
        config = DEFAULT_CONFIG_FILE
    if config is not None:
        values.update(load_settings_file(config))
    for field in AgentSettings._fields:
        value = getattr(args, field, None)
        if value is not None:
            values[field] = hooks_pythonpath(args) if field == "hooks_pythonpath" else value
    if values.get("socket") is not None and values.get("run_dir") is None:
        # A socket of its own means an agent of its own: its payloads and
        # launch flags go beside the socket, never into another agent's run dir.
        socket = Path(values["socket"])
        values["run_dir"] = socket.with_name(f"{socket.stem}.run")
    settings = AgentSettings(**values)
    if not settings.hook_timeout > 0:
        raise UsageError("hook timeout must be a positive number of seconds")
    if not settings.history_days > 0:
        raise UsageError("history days must be a positive number")
    if not 0 < settings.history_max_mb <= 1 << 20:
        raise UsageError("history max MB must be a number of MiB from 0 to 1048576 (1 TiB)")
    if not settings.max_connections >= 1:
        raise UsageError("max connections must be at least 1")
    if not 0 < settings.request_timeout < math.inf:
        raise UsageError("request timeout must be a positive number of seconds")
    if not 0 <= settings.shutdown_grace < math.inf:
        raise UsageError("shutdown grace must be 0 or more seconds (finite)")
    return settings


def run(args: argparse.Namespace) -> int:
    from vmhooks import containment
    from vmhooks.agent import Agent
    from vmhooks.api import make_servers
    from vmhooks.httpserver import check_descriptors, limits_of, stop_serving

    logs.setup(args.log_level, args.log_format)
    settings = settings_from(args)
    _bound_allocator_arenas()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` dumps every thread's stack
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    agent = Agent(settings)
    servers = make_servers(agent)  # bound (fails fast if another agent runs) but not serving yet
    containment.current()  # logs how a timed-out hook's descendants are found (cgroup or subreaper)
    check_descriptors(limits_of(settings), len(servers) + bool(settings.http_listen))
    started = time.monotonic()
    console = None
    if settings.http_listen:
        from vmhooks.web import open_console

        try:
            console = open_console(agent)  # before start: its metrics count before_vdsm_start too
        except BaseException:
            for server in servers:
                server.server_close()
            raise
    try:
        agent.start()  # before_vdsm_start, then connect and re-attach
        for server in servers:
            threading.Thread(target=server.serve_forever, name="api", daemon=True).start()
        if console is not None:
            console.serve_in_thread()
        _log_start(settings, console.url if console is not None else None)
        # A signal may land on a thread that is not Python's main thread (libvirt's
        # event loop): the handler then runs only when the main thread next runs
        # Python code, so wake it up regularly rather than sleep for good.
        while not stop.wait(0.5):
            pass
        log.debug("stopping: no new connections; requests in flight have %gs to finish", settings.shutdown_grace)
        cut = stop_serving([*servers, *([console.server] if console is not None else [])], settings.shutdown_grace)
        if cut:
            log.warning("%d request(s) still running after the shutdown grace: their clients were cut off", len(cut))
    finally:
        if console is not None:
            console.close()
        for server in servers:
            server.server_close()
        agent.stop()  # after_vdsm_stop
        uptime = time.monotonic() - started
        log.info("vmhooks stopped after %s%s", duration(uptime), "" if stop.is_set() else " (on an error)",
                 extra={"event": "stop", "uptime_s": round(uptime, 3)})  # fmt: skip
    return 0


ARENA_MAX = 2
M_ARENA_MAX = -8  # glibc's <malloc.h>


def _bound_allocator_arenas() -> None:
    """At most ARENA_MAX glibc malloc arenas, unless MALLOC_ARENA_MAX says
    otherwise: each connection has its own thread, and by default glibc
    gives threads up to 8 arenas per CPU, each keeping the memory it freed,
    so RSS creeps up with the number of threads that ever ran rather than
    with what is in use (bench/soak.py). Python's own allocator does the
    small objects; this costs nothing measurable."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_ARENA_MAX, ARENA_MAX)
    except (OSError, AttributeError):  # not glibc: its allocator, its defaults
        pass


def _log_start(settings: AgentSettings, console_url: str | None = None) -> None:
    """The one line that says what this agent is: version, libvirt, hooks, where it listens."""
    addresses = [str(settings.socket_path)] + ([f"{settings.listen} (mutual TLS)"] if settings.listen else [])
    if console_url is not None:
        addresses.append(f"{console_url} (web console: vmhooks ui prints its URL with the token)")
    log.info(
        "vmhooks %s started: libvirt %s, hooks %s, state %s, run %s, API on %s",
        __version__, settings.libvirt_uri, settings.hooks_dir, settings.state_dir, settings.run_dir,
        " and ".join(addresses),
        extra={"event": "start", "version": __version__, "libvirt_uri": settings.libvirt_uri,
               "hooks_dir": str(settings.hooks_dir), "state_dir": str(settings.state_dir),
               "run_dir": str(settings.run_dir), "listen": addresses, "pid": os.getpid()},
    )  # fmt: skip
