"""`vmhooks hooks check`: lint a hooks tree, one line per problem."""
from __future__ import annotations

import argparse
import ast
import os
import stat
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from vmhooks.commands.common import add_hooks_dir, add_hooks_pythonpath, example, existing_hooks_dir, hooks_pythonpath
from vmhooks.discovery import unsafe_directory_reason, unsafe_reason
from vmhooks.environment import build_environment
from vmhooks.hookimports import ImportCheck, parse_shebang, top_level_imports, unresolved_imports
from vmhooks.errors import UnknownPointError
from vmhooks.points import get_point

# Python 2 idioms that fail at run time under Python 3 (syntax errors are
# caught by compiling): attribute calls and builtins that no longer exist.
PY2_METHODS = frozenset({"has_key", "iteritems", "iterkeys", "itervalues"})
PY2_BUILTINS = frozenset({"unicode", "xrange", "raw_input", "basestring", "execfile", "long"})
MAX_SCRIPT_BYTES = 4 << 20


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="lint a hooks tree (exit 1 on any problem)",
        **example("vmhooks hooks check --hooks-dir /usr/libexec/vdsm/hooks"),
    )
    add_hooks_dir(parser)
    add_hooks_pythonpath(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    root = existing_hooks_dir(args)
    problems = list(check_tree(root, hooks_pythonpath(args)))
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{root}: no problems found")
    return 1 if problems else 0


def check_tree(root: Path, pythonpath: tuple[Path, ...] = ()) -> Iterator[str]:
    """Every problem of the tree, one line each: files, then the imports
    that the hooks' interpreters will not find (checked together, one
    interpreter run per interpreter)."""
    reason = unsafe_directory_reason(root)
    if reason:
        yield f"{root}: unsafe, the agent refuses every script under it: {reason}"
    imports: list[ImportCheck] = []
    yield from _check_points(root, imports)
    env = build_environment(os.environ, extra_pythonpath=pythonpath)
    for script, modules in sorted(unresolved_imports(imports, env).items()):
        if modules is None:
            yield f"{script}: its interpreter could not be asked which of its imports it finds"
        for module in modules or ():
            yield f"{script}: import {module}: not found by its interpreter with the hooks' PYTHONPATH"


def _check_points(root: Path, imports: list[ImportCheck]) -> Iterator[str]:
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
        helpers = _sibling_modules(path)
        for script in sorted(os.listdir(path)):
            if not script.startswith("."):
                yield from check_script(path / script, imports, helpers)


def _sibling_modules(directory: Path) -> frozenset[str]:
    """Names of the modules that this directory's Python hooks import: a
    non-executable `NAME.py` among them is a helper (as upstream's
    openstacknet_utils.py, or the catalogue's vmhooks_catalogue.py), not a
    hook that fails to run."""
    names = set()
    for entry in os.listdir(directory):
        path = directory / entry
        if entry.startswith(".") or not os.access(path, os.X_OK) or not path.is_file():
            continue
        try:
            tree = ast.parse(path.read_bytes()[:MAX_SCRIPT_BYTES])
        except (OSError, SyntaxError, ValueError):
            continue
        names.update(
            alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
        )
        names.update(
            node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        )
    return frozenset(names)


def check_script(
    path: Path, imports: list[ImportCheck] | None = None, helpers: frozenset[str] = frozenset()
) -> Iterator[str]:
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
    executable = bool(st.st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
    helper = not executable and path.suffix == ".py" and path.stem in helpers
    if not executable and not helper:
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
    if helper:
        yield from check_python(path, content)
        return
    if not content.startswith(b"#!"):
        yield f"{path}: no '#!' line: it cannot be executed directly"
        return
    shebang = parse_shebang(content.split(b"\n", 1)[0], os.environ.get("PATH"))
    assert shebang is not None
    if shebang.interpreter is None:
        yield f"{path}: its interpreter {shebang.command} does not exist on this host"
    if shebang.is_python or path.suffix == ".py":
        tree = yield from check_python(path, content)
        # Only what the agent would run anyway: an unsafe script's interpreter is not started.
        if tree is not None and imports is not None and executable and reason is None and shebang.is_python:
            imports.append(ImportCheck(path, shebang, tuple(top_level_imports(tree))))


def check_python(path: Path, content: bytes) -> Generator[str, None, ast.Module | None]:
    """Its problems; returns the parsed module (None when it does not compile)."""
    try:
        tree = ast.parse(content, filename=str(path))
    except SyntaxError as exc:
        yield f"{path}:{exc.lineno}: does not compile under Python 3: {exc.msg}"
        return None
    except ValueError as exc:  # NUL bytes
        yield f"{path}: does not compile under Python 3: {exc}"
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PY2_METHODS:
            yield f"{path}:{node.lineno}: uses .{node.attr}(), which Python 3 does not have"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in PY2_BUILTINS
        ):
            yield f"{path}:{node.lineno}: uses {node.func.id}(), which Python 3 does not have"
    return tree
