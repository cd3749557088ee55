"""Will a hook's interpreter and imports be there when it runs?

For `hooks check`: the interpreter a `#!` line names (through `env` too),
and, for Python hooks, each unconditional top-level import resolved the
way the hook will resolve it: by the interpreter of its shebang (with the
flags that change the path, -E -I -s -S), with the hooks' PYTHONPATH and
the script's own directory first. Resolution asks the import system's
finders only: no module a hook names is executed.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

CHECK_TIMEOUT = 30.0
# Interpreter flags that change where modules are found.
PATH_FLAGS = frozenset("EIsSP")

# Runs under the hook's interpreter (any Python 3): argv[1] is JSON
# [[script_dir or null, [module, ...]], ...]; prints, for each, the modules
# that do not resolve.
_FINDER = r"""
import importlib.machinery, importlib.util, json, sys
stdlib = getattr(sys, "stdlib_module_names", ())
def resolves(name):
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if len(parts) == 1:
        return True
    if parts[0] in stdlib or spec.origin in ("built-in", "frozen"):
        try:
            return importlib.util.find_spec(name) is not None
        except ImportError:
            return False
    path = spec.submodule_search_locations
    for depth in range(2, len(parts) + 1):
        if path is None:
            return True  # a module's attributes (os.path) are only known by running it
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth]), list(path))
        if spec is None:
            return False
        path = spec.submodule_search_locations
    return True
base = list(sys.path)
result = []
for directory, modules in json.loads(sys.argv[1]):
    sys.path[:] = ([directory] if directory else []) + [p for p in base if p]
    importlib.invalidate_caches()
    result.append([m for m in modules if not resolves(m)])
print(json.dumps(result))
"""


class Shebang(NamedTuple):
    command: str  # the program the hook runs under: the interpreter, or env's target
    flags: str  # single-letter interpreter flags from the #! line (e.g. "Es")
    interpreter: str | None  # its absolute path on this host; None when there is none

    @property
    def is_python(self) -> bool:
        return os.path.basename(self.command).startswith("python")


def parse_shebang(first_line: bytes, search_path: str | None) -> Shebang | None:
    """The program a `#!` line runs; None when the line is not one. As the
    kernel does, everything after the interpreter is one argument; for
    `env` (and `env -S`), its first word that is not an option is the command."""
    if not first_line.startswith(b"#!"):
        return None
    text = first_line[2:].decode("utf-8", "replace").strip()
    interpreter, _, argument = text.partition(" ")
    words = argument.split()
    if os.path.basename(interpreter) == "env":
        words = [word for word in words if word != "-S"]
        command = next((word for word in words if not word.startswith("-") and "=" not in word), "")
        rest = words[words.index(command) + 1 :] if command else []
        found = shutil.which(command, path=search_path) if command else None
        return Shebang(command or interpreter, _flags(rest), found)
    found = interpreter if os.path.isfile(interpreter) and os.access(interpreter, os.X_OK) else None
    return Shebang(interpreter, _flags(words), found)


def _flags(words: Sequence[str]) -> str:
    letters = "".join(word[1:] for word in words if word.startswith("-") and not word.startswith("--"))
    return "".join(sorted(set(letters) & PATH_FLAGS))


def top_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported unconditionally at module level, in order, once each
    (imports in try/if blocks are guarded or optional; relative ones are
    the package's own)."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found = [node.module]
        else:
            continue
        names += [name for name in found if name not in names and name != "__future__"]
    return names


class ImportCheck(NamedTuple):
    script: Path
    shebang: Shebang
    modules: tuple[str, ...]


UNANSWERED = None  # in place of a list: the interpreter could not be asked


def unresolved_imports(checks: Iterable[ImportCheck], env: Mapping[str, str]) -> dict[Path, list[str] | None]:
    """{script: modules its interpreter will not find}, one interpreter run
    per interpreter and flags; UNANSWERED for the scripts of an interpreter
    that could not answer (it failed, hung, or is not Python 3)."""
    groups: dict[tuple[str, str], list[ImportCheck]] = {}
    for check in checks:
        if check.modules and check.shebang.interpreter:
            groups.setdefault((check.shebang.interpreter, check.shebang.flags), []).append(check)
    missing: dict[Path, list[str] | None] = {}
    for (interpreter, flags), group in groups.items():
        # -I and -P leave the script's directory off sys.path.
        own_dir = not set(flags) & {"I", "P"}
        request = [[str(c.script.parent) if own_dir else None, list(c.modules)] for c in group]
        argv = [interpreter, *([f"-{flags}"] if flags else []), "-c", _FINDER, json.dumps(request)]
        try:
            done = subprocess.run(argv, env=dict(env), capture_output=True, timeout=CHECK_TIMEOUT, stdin=subprocess.DEVNULL)
            answer = json.loads(done.stdout) if done.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, ValueError):
            answer = None
        if not isinstance(answer, list) or len(answer) != len(group):
            missing.update((check.script, UNANSWERED) for check in group)
            continue
        for check, modules in zip(group, answer):
            if modules:
                missing[check.script] = [str(module) for module in modules]
    return missing
