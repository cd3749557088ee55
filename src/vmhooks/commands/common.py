"""Argument helpers shared by subcommands."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vmhooks.config import default_hooks_dir
from vmhooks.errors import UsageError


def add_hooks_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hooks-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="hooks root (default: $VMHOOKS_HOOKS_DIR, else /usr/libexec/vdsm/hooks)",
    )


def hooks_dir(args: argparse.Namespace) -> Path:
    return args.hooks_dir if args.hooks_dir is not None else default_hooks_dir()


def name_values(pairs: list[str] | None, what: str) -> dict[str, str]:
    """['a=1', 'b'] -> {'a': '1', 'b': ''} (a bare name is a flag property)."""
    values: dict[str, str] = {}
    for pair in pairs or ():
        name, _, value = pair.partition("=")
        if not name:
            raise UsageError(f"{what} {pair!r} has no name (expected NAME=VALUE)")
        values[name] = value
    return values


def read_input(source: str, what: str) -> str:
    """The text of FILE, or of stdin for '-'; one clear error otherwise."""
    try:
        if source == "-":
            return sys.stdin.buffer.read().decode("utf-8")
        return Path(source).read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {what} {source!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what} {source!r} is not UTF-8 (byte {exc.start})") from None
