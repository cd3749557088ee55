"""The `vmhooks` command: one module per subcommand under vmhooks.commands."""
from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from vmhooks import __version__
from vmhooks.commands import COMMANDS
from vmhooks.errors import UsageError, VmhooksError

EXIT_FAILED = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmhooks", description="VDSM-compatible VM lifecycle hooks on libvirt."
    )
    parser.add_argument("--version", action="version", version=f"vmhooks {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except VmhooksError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"vmhooks: {exc}", file=sys.stderr)
        if exc.exit_status is not None:
            return exc.exit_status
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
