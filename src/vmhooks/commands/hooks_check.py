"""`vmhooks hooks check`: lint a hooks tree, one line per problem."""
from __future__ import annotations

import argparse
import ast
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmhooks.commands.common import add_hooks_dir, hooks_dir
from vmhooks.discovery import unsafe_reason
from vmhooks.errors import UnknownPointError, UsageError
from vmhooks.points import get_point

# Python 2 idioms that fail at run time under Python 3 (syntax errors are
# caught by compiling): attribute calls and builtins that no longer exist.
PY2_METHODS = frozenset({"has_key", "iteritems", "iterkeys", "itervalues"})
PY2_BUILTINS = frozenset({"unicode", "xrange", "raw_input", "basestring", "execfile", "long"})
MAX_SCRIPT_BYTES = 4 << 20


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("check", help="lint a hooks tree (exit 1 on any problem)")
    add_hooks_dir(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = hooks_dir(args)
    if not root.is_dir():
        raise UsageError(f"hooks directory {str(root)!r} does not exist")
    problems = list(check_tree(root))
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{root}: no problems found")
    return 1 if problems else 0


def check_tree(root: Path) -> Iterator[str]:
    for name in sorted(os.listdir(root)):
        path = root / name
        if name.startswith("."):
            continue
        if not path.is_dir():
            yield f"{path}: not a directory: files in the hooks root never run"
            continue
        try:
            get_point(name)
        except UnknownPointError as exc:
            yield f"{path}: {exc}: its scripts never run"
            continue
        for script in sorted(os.listdir(path)):
            if not script.startswith("."):
                yield from check_script(path / script)


def check_script(path: Path) -> Iterator[str]:
    try:
        st = os.stat(path)
    except OSError:
        yield f"{path}: dangling symlink: never runs"
        return
    if stat.S_ISDIR(st.st_mode):
        yield f"{path}: subdirectory: never entered, its scripts never run"
        return
    if not stat.S_ISREG(st.st_mode):
        yield f"{path}: not a regular file: never runs"
        return
    if not st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
        yield f"{path}: not executable: never runs (chmod 0755)"
    reason = unsafe_reason(path)
    if reason:
        yield f"{path}: unsafe, the agent refuses it: {reason}"
    try:
        with open(path, "rb") as handle:
            content = handle.read(MAX_SCRIPT_BYTES)
    except OSError as exc:
        yield f"{path}: cannot read: {exc.strerror}"
        return
    if content.startswith(b"\x7fELF"):
        return
    if not content.startswith(b"#!"):
        yield f"{path}: no '#!' line: it cannot be executed directly"
        return
    first_line = content.split(b"\n", 1)[0]
    if b"python" in first_line or path.suffix == ".py":
        yield from check_python(path, content)


def check_python(path: Path, content: bytes) -> Iterator[str]:
    try:
        tree = ast.parse(content, filename=str(path))
    except SyntaxError as exc:
        yield f"{path}:{exc.lineno}: does not compile under Python 3: {exc.msg}"
        return
    except ValueError as exc:  # NUL bytes
        yield f"{path}: does not compile under Python 3: {exc}"
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PY2_METHODS:
            yield f"{path}:{node.lineno}: uses .{node.attr}(), which Python 3 does not have"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in PY2_BUILTINS
        ):
            yield f"{path}:{node.lineno}: uses {node.func.id}(), which Python 3 does not have"
