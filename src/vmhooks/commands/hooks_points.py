"""`vmhooks hooks points`: every hook point, what its scripts get and how
their result is used (the table in vmhooks.points)."""
from __future__ import annotations

import argparse
from typing import Any

from vmhooks.commands.common import add_json_option, example, print_json, table
from vmhooks.points import POINTS, HookPoint


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "points",
        help="every hook point: payload, whether a failure aborts, whether the output is used",
        **example("vmhooks hooks points", "vmhooks hooks points --json | jq '.[] | select(.output_used)'"),
    )
    add_json_option(parser)
    parser.set_defaults(func=run)


def point_json(point: HookPoint) -> dict[str, Any]:
    return {
        "name": point.name,
        "payload": point.payload.value,
        "aborts": point.aborts,
        "output_used": point.output_used,
        "scope": point.scope.value,
        "params": list(point.params),
        "extension": point.extension,
    }


def run(args: argparse.Namespace) -> int:
    if args.json:
        print_json([point_json(point) for point in POINTS.values()])
        return 0
    rows = [
        [point.name + (" *" if point.extension else ""), point.payload.value, point.scope.value,
         "aborts" if point.aborts else "goes on", "used" if point.output_used else "discarded",
         " ".join(point.params) or "-"]
        for point in POINTS.values()
    ]  # fmt: skip
    print(table(["POINT", "PAYLOAD", "SCOPE", "ON FAILURE", "OUTPUT", "EXTRA ENV"], rows))
    print(
        "\nPAYLOAD: domain = the domain XML, device = one device element, json = a JSON document,"
        " none = an empty file.\nON FAILURE: 'aborts' = a failing script stops the operation;"
        " 'goes on' = it is recorded only.\nOUTPUT: 'used' = the agent takes the edited payload;"
        " 'discarded' = edits are recorded and dropped.\n* = a vmhooks extension: VDSM has no such point."
    )
    return 0
