"""Subcommands: each module has `register(subparsers)`, which adds its parser
and sets `func` to the function that runs it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmhooks.commands import (
    catalogue,
    demo,
    history,
    hooks_check,
    hooks_list,
    hooks_points,
    hooks_run,
    host,
    kubevirt_sidecar,
    serve,
    ui,
    vm,
)

Register = Callable[[Any], None]


def _register_hooks(subparsers: Any) -> None:
    parser = subparsers.add_parser("hooks", help="run, list and check hook scripts")
    nested = parser.add_subparsers(dest="hooks_command", metavar="ACTION", required=True)
    for register in (hooks_run.register, hooks_list.register, hooks_check.register, hooks_points.register):
        register(nested)


COMMANDS: list[Register] = [
    _register_hooks,
    catalogue.register,
    serve.register,
    vm.register,
    history.register,
    host.register,
    demo.register,
    kubevirt_sidecar.register,
    ui.register,
]
