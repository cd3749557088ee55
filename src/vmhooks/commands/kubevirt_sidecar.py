"""`vmhooks kubevirt-sidecar`: serve virt-launcher's hook calls (KubeVirt's
hook sidecar protocol, gRPC on a Unix socket) with the VDSM hooks tree."""
from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Any

from vmhooks.commands.common import add_hooks_dir, hooks_dir
from vmhooks.errors import UsageError, VmhooksError
from vmhooks.kubevirt.sidecar import DEFAULT_HOOK_TIMEOUT, DEFAULT_NAME, SOCKET_DIR, SidecarSettings

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")
MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, with its NUL


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "kubevirt-sidecar",
        help="serve KubeVirt's hook sidecar calls with the hooks tree",
        description="Run as a KubeVirt hook sidecar (hooks.kubevirt.io/hookSidecars): "
        "OnDefineDomain runs before_device_create and before_vm_start, PreCloudInitIso "
        "runs before_cloudinit_iso, Shutdown runs after_vm_destroy and exits. Needs the "
        "kubevirt extra: pip install 'vmhooks[kubevirt]'. See docs/kubevirt.md.",
    )
    add_hooks_dir(parser)
    parser.add_argument("--socket-dir", type=Path, default=SOCKET_DIR, metavar="DIR",
                        help="where virt-launcher looks for sockets (default: %(default)s)")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help="this sidecar's name and socket <name>.sock; unique per VM (default: %(default)s)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="hook history in SQLite (default: <socket-dir>/<name>-state, the pod's emptyDir)")
    parser.add_argument("--hook-timeout", type=float, default=DEFAULT_HOOK_TIMEOUT, metavar="S",
                        help="seconds per hook script (default: %(default)s; a call's hooks also end "
                        "in time to answer within virt-launcher's minute)")
    parser.add_argument("--properties", metavar="RULES",
                        help="custom property rules, name=regex;name=regex "
                        "(with those of the installed catalogue hooks)")
    parser.add_argument("--socket-mode", type=_octal, default=0o600, metavar="MODE",
                        help="the socket's mode, octal (default: 0600: only virt-launcher's user)")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="stderr logging; hook calls are logged as JSON lines on stdout")
    parser.set_defaults(func=run)


def _octal(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a permission mode (0-0777)")
    return mode


def run(args: argparse.Namespace) -> int:
    if not NAME_RE.match(args.name):
        raise UsageError(f"--name {args.name!r}: letters, digits, '.', '_', '-', at most 63, not starting with a sign")
    if not args.hook_timeout > 0:
        raise UsageError("--hook-timeout must be a positive number of seconds")
    if not hooks_dir(args).is_dir():  # a volume that did not mount: say so rather than run nothing
        raise UsageError(f"hooks directory {hooks_dir(args)} does not exist")
    socket_path = args.socket_dir / f"{args.name}.sock"
    if len(str(socket_path).encode()) >= MAX_SOCKET_PATH:
        raise UsageError(f"socket path {socket_path} is longer than a Unix socket allows ({MAX_SOCKET_PATH - 1} bytes)")
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:  # the extra may be missing: say which, in one line
        from vmhooks.kubevirt.server import serve
    except Exception as exc:  # noqa: BLE001 (ImportError, or stubs newer than the installed grpcio/protobuf)
        extra = "pip install 'vmhooks[kubevirt]'"
        raise VmhooksError(f"kubevirt-sidecar needs the kubevirt extra ({extra}): {exc}") from None
    settings = SidecarSettings(
        hooks_dir=hooks_dir(args),
        socket_dir=args.socket_dir,
        name=args.name,
        state_dir=args.state_dir,
        hook_timeout=args.hook_timeout,
        properties=args.properties,
        socket_mode=args.socket_mode,
    )
    return serve(settings)
