"""`vmhooks ui`: the web console's URL with its token, printed, and opened
in a browser where there is one (a desktop session)."""
from __future__ import annotations

import argparse
import os
import sys
import webbrowser
from pathlib import Path
from typing import Any

from vmhooks.config import DEFAULT_CONFIG_FILE, default_socket, load_settings_file
from vmhooks.web.auth import LAUNCHER_FILE, console_url, read_published


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ui", help="print the web console's URL with its token (and open it)",
        description="Print the URL of the agent's web console with its token, and open it in a "
        "browser when this session has a display. The agent must run with --http-listen.",
    )  # fmt: skip
    parser.add_argument("--run-dir", type=Path, help="the agent's run directory (default: from --config, "
                        "else the directory of $VMHOOKS_SOCKET or /run/vmhooks)")  # fmt: skip
    parser.add_argument("--config", type=Path, help=f"the agent's TOML config (default: {DEFAULT_CONFIG_FILE} if present)")
    parser.add_argument("--no-browser", action="store_true", help="only print the URL")
    parser.set_defaults(func=run)


def run_dir(args: argparse.Namespace) -> Path:
    if args.run_dir is not None:
        return Path(args.run_dir)
    config = args.config if args.config is not None else (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None)
    if config is not None:
        configured = load_settings_file(config).get("run_dir")
        if configured is not None:
            return Path(configured)
    return default_socket().parent


def run(args: argparse.Namespace) -> int:
    directory = run_dir(args)
    token, address = read_published(directory)
    print(console_url(token, address))
    if not args.no_browser and _has_display():
        # The browser gets the agent's launcher page, which carries the token
        # inside a 0600 file: a URL with it would be on the browser's command
        # line, for any local user to read with ps.
        launcher = directory / LAUNCHER_FILE
        if not launcher.is_file():  # an agent older than the launcher page
            print(f"vmhooks: no {launcher}: open the URL above", file=sys.stderr)
            return 0
        try:
            webbrowser.get().open(launcher.absolute().as_uri())
            # A browser that runs as another user cannot read the 0600 page.
            print("vmhooks: opened the console in a browser; if it shows nothing, open the URL above",
                  file=sys.stderr)  # fmt: skip
        except webbrowser.Error:
            print("vmhooks: no browser found: open the URL above", file=sys.stderr)
    return 0


def _has_display() -> bool:
    """A graphical session (X11 or Wayland): on a bare server, webbrowser
    would start a text browser inside this terminal."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
