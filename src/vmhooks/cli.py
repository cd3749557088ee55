"""The `vmhooks` command: one module per subcommand under vmhooks.commands."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from vmhooks import __version__, logs
from vmhooks.commands import COMMANDS
from vmhooks.errors import ERROR_CODES, UsageError, VmhooksError

EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandLineError(UsageError):
    """argparse's complaint about the command line, as one line."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised, not printed with the usage,
    so they come out as one line (or as JSON with --json) like every other."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]  # main() puts "vmhooks: " in front
        raise CommandLineError(f"{command + ': ' if command else ''}{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vmhooks", description="VDSM-compatible VM lifecycle hooks on libvirt.")
    parser.add_argument("--version", action="version", version=f"vmhooks {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CommandLineError as exc:
        return _fail(exc, as_json="--json" in argv and _has_json_flag(_subcommand(parser, argv)), debug=False)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_FAILED
    except VmhooksError as exc:
        return _fail(exc, as_json=wants_json(args), debug=args.debug)


def wants_json(args: argparse.Namespace) -> bool:
    """Whether the user asked for JSON output: `--json` (a flag; on `hooks
    run` it names a payload file instead) or `--output json`."""
    return getattr(args, "json", None) is True or getattr(args, "output", None) == "json"


def _subcommand(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub)subcommand that `argv` names, even when argv
    does not parse: its errors are JSON if that subcommand has --json."""
    for token in argv:
        choices = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if isinstance(choices, dict) and token in choices:
            parser = choices[token]
    return parser


def _has_json_flag(parser: argparse.ArgumentParser) -> bool:
    return any("--json" in action.option_strings and action.nargs == 0 for action in parser._actions)


def _fail(exc: VmhooksError, *, as_json: bool, debug: bool) -> int:
    """One line on stderr, or `{"error": {"code", "message"}}` on stdout."""
    if debug:
        traceback.print_exc()
    if as_json:
        error: dict[str, Any] = {"code": getattr(exc, "code", None) or ERROR_CODES.get(exc.kind, ERROR_CODES["error"]),
                                 "message": str(exc)}  # fmt: skip
        data = getattr(exc, "data", None)  # the agent's: `kind` (the code says it), failing scripts
        if isinstance(data, dict):
            data = {key: value for key, value in data.items() if key != "kind"}
        if data:
            error["data"] = data
        print(json.dumps({"error": error}, indent=2, sort_keys=True))
    else:
        # Under systemd, a syslog priority prefix makes it an error in the journal.
        priority = f"<{logs.syslog_priority(logging.ERROR)}>" if logs.stream_is_journal(sys.stderr) else ""
        print(f"{priority}vmhooks: {exc}", file=sys.stderr)
    if exc.exit_status is not None:
        return exc.exit_status
    return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
