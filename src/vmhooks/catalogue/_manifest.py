"""The catalogue of ready hooks as data: each hook is a folder beside this
module with `manifest.toml` (summary, the points it installs into with the
script for each, the custom properties it reads with their value regex),
`README.md`, and the scripts. This module reads and checks the manifests;
`_manage` installs them.
"""
from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from vmhooks.environment import check_name
from vmhooks.errors import InvalidEnvironmentError, UnknownPointError, UsageError
from vmhooks.points import get_point
from vmhooks.properties import compile_rule

CATALOGUE_DIR = Path(__file__).resolve().parent
DEFAULT_ORDER = 50
_HOOK_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_MANIFEST_KEYS = frozenset({"name", "summary", "order", "points", "properties"})
_PROPERTY_KEYS = frozenset({"name", "scope", "regex", "description"})



class CatalogueError(UsageError):
    """A catalogue operation that cannot be done as asked."""


class Scope(str, enum.Enum):
    VM = "vm"  # a VM custom property
    DEVICE = "device"  # a device custom property (e.g. of a vNIC)

    def __str__(self) -> str:
        return self.value


class PropertyDecl(NamedTuple):
    """One custom property a hook reads, and what its values must look like."""

    name: str
    scope: Scope
    regex: str
    description: str = ""

    @property
    def pattern(self) -> re.Pattern[str]:
        return compile_rule(self.name, self.regex)


class HookScript(NamedTuple):
    point: str
    source: str  # file name inside the hook's folder


class CatalogueHook(NamedTuple):
    name: str
    summary: str
    order: int
    scripts: tuple[HookScript, ...]
    properties: tuple[PropertyDecl, ...]
    directory: Path

    @property
    def points(self) -> tuple[str, ...]:
        return tuple(script.point for script in self.scripts)

    @property
    def installed_name(self) -> str:
        """The file name of each of its scripts in a point directory."""
        return f"{self.order:02d}_{self.name}"

    def target(self, point: str) -> str:
        """`point/50_name`: where the script of `point` goes under a hooks root."""
        return f"{point}/{self.installed_name}"

    def source_path(self, script: HookScript) -> Path:
        return self.directory / script.source

    def readme(self) -> str:
        return (self.directory / "README.md").read_text(encoding="utf-8")

    def manifest_text(self) -> str:
        return (self.directory / "manifest.toml").read_text(encoding="utf-8")


def catalogue_names() -> tuple[str, ...]:
    """The names of the hooks shipped with vmhooks, sorted."""
    return tuple(hook.name for hook in available())


@cache
def available() -> tuple[CatalogueHook, ...]:
    """Every hook shipped with vmhooks, sorted by name."""
    hooks = []
    for entry in sorted(CATALOGUE_DIR.iterdir()):
        if entry.is_dir() and (entry / "manifest.toml").is_file():
            hooks.append(load_manifest(entry))
    return tuple(hooks)


def get_hook(name: str) -> CatalogueHook:
    for hook in available():
        if hook.name == name:
            return hook
    raise CatalogueError(
        f"no catalogue hook named {name!r} (available: {', '.join(catalogue_names())})"
    )


def load_manifest(directory: Path) -> CatalogueHook:
    """Read and check `directory/manifest.toml`."""
    path = directory / "manifest.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"{path}: cannot read the manifest: {exc}") from None
    return parse_manifest(data, directory, str(path))


def parse_manifest(data: Mapping[str, Any], directory: Path, where: str) -> CatalogueHook:
    """A CatalogueHook from a parsed manifest; CatalogueError naming `where`."""

    def fail(message: str) -> CatalogueError:
        return CatalogueError(f"{where}: {message}")

    unknown = set(data) - _MANIFEST_KEYS - {"installed"}
    if unknown:
        raise fail(f"unknown keys {sorted(unknown)}")
    name = data.get("name")
    if not isinstance(name, str) or not _HOOK_NAME.match(name):
        raise fail(f"'name' must be a lower-case identifier, not {name!r}")
    summary = data.get("summary")
    if not isinstance(summary, str) or not summary.strip() or "\n" in summary.strip():
        raise fail("'summary' must be one line of text")
    order = data.get("order", DEFAULT_ORDER)
    if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= 99:
        raise fail(f"'order' must be an integer 0..99, not {order!r}")
    points = data.get("points")
    if not isinstance(points, dict) or not points:
        raise fail("'points' must be a table of point = script file")
    scripts = []
    for point, source in points.items():
        try:
            get_point(point)
        except UnknownPointError as exc:
            raise fail(str(exc)) from None
        if not isinstance(source, str) or "/" in source or source.startswith("."):
            raise fail(f"point {point}: the script must be a file name, not {source!r}")
        scripts.append(HookScript(point, source))
    properties = []
    declared = data.get("properties", [])
    if not isinstance(declared, list):
        raise fail("'properties' must be an array of tables ([[properties]])")
    for entry in declared:
        properties.append(_parse_property(entry, fail))
    return CatalogueHook(name, summary.strip(), order, tuple(scripts), tuple(properties), directory)


def _parse_property(entry: Any, fail: Callable[[str], CatalogueError]) -> PropertyDecl:
    if not isinstance(entry, dict):
        raise fail("each [[properties]] entry must be a table")
    unknown = set(entry) - _PROPERTY_KEYS
    if unknown:
        raise fail(f"property: unknown keys {sorted(unknown)}")
    name, scope, regex = entry.get("name"), entry.get("scope", "vm"), entry.get("regex")
    if not isinstance(name, str):
        raise fail(f"property: 'name' must be a string, not {name!r}")
    try:
        check_name(name, "custom property")
    except InvalidEnvironmentError as exc:
        raise fail(str(exc)) from None
    try:
        scope = Scope(scope)
    except ValueError:
        raise fail(f"property {name}: scope must be 'vm' or 'device', not {scope!r}") from None
    if not isinstance(regex, str):
        raise fail(f"property {name}: 'regex' must be a string")
    try:
        compile_rule(name, regex)
    except InvalidEnvironmentError as exc:
        raise fail(str(exc)) from None
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise fail(f"property {name}: 'description' must be a string")
    return PropertyDecl(name, scope, regex, description)
