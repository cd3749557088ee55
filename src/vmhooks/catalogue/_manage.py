"""Installing catalogue hooks into a hooks tree, and the property rules of
the installed ones.

Installing copies each script to `<hooks_dir>/<point>/<order>_<name>` (mode
0755) and records the manifest, plus the sha256 of every file written, in
`<hooks_dir>/.vmhooks-catalogue/<name>.toml`; hidden names are skipped by
discovery and by `hooks check`. The record is how an admin's later edits are
recognised (installing or uninstalling over them asks for `force`) and how
the property rules of the installed hooks are found.
"""
from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from vmhooks.catalogue import _helpers
from vmhooks.catalogue._manifest import CatalogueError, CatalogueHook, PropertyDecl, get_hook, parse_manifest
from vmhooks.errors import VmhooksError
from vmhooks.properties import compile_rule

RECORD_DIR_NAME = ".vmhooks-catalogue"
SCRIPT_MODE = 0o755


class Action(str, enum.Enum):
    CREATED = "created"
    UPDATED = "updated"  # replaced an unmodified copy of another version
    REPLACED = "replaced"  # replaced a modified copy (force)
    UNCHANGED = "unchanged"
    MODE_FIXED = "mode fixed"
    REMOVED = "removed"
    ABSENT = "absent"  # to be removed, but already gone

    def __str__(self) -> str:
        return self.value


class FileAction(NamedTuple):
    """What install/uninstall did to one file (or the hook's record)."""

    hook: str
    path: Path
    action: Action


class InstalledHook(NamedTuple):
    """A hook's record in a hooks tree: its manifest as installed, and the
    sha256 of each file it wrote (keys `point/50_name`)."""

    hook: CatalogueHook
    files: Mapping[str, str]
    record: Path



def record_dir(hooks_dir: Path) -> Path:
    return hooks_dir / RECORD_DIR_NAME


def installed(hooks_dir: Path) -> dict[str, InstalledHook]:
    """The catalogue hooks recorded as installed under `hooks_dir`, by name.

    A record that cannot be read is an error (not skipped): the property
    rules it declares would silently stop being enforced."""
    directory = record_dir(hooks_dir)
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError as exc:
        raise VmhooksError(f"cannot list {directory}: {exc.strerror}") from None
    found: dict[str, InstalledHook] = {}
    for entry in names:
        if entry.startswith(".") or not entry.endswith(".toml"):
            continue
        hook = read_record(directory / entry)
        found[hook.hook.name] = hook
    return found


def read_record(path: Path) -> InstalledHook:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VmhooksError(f"catalogue record {path} cannot be read: {exc}") from None
    hook = parse_manifest(data, path.parent, f"catalogue record {path}")
    info = data.get("installed", {})
    files = info.get("files", {}) if isinstance(info, dict) else {}
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise VmhooksError(f"catalogue record {path}: [installed.files] must map paths to sha256")
    return InstalledHook(hook, dict(files), path)


def installed_property_rules(hooks_dir: Path) -> dict[str, re.Pattern[str]]:
    """{property: compiled regex} declared by the hooks installed under
    `hooks_dir` (VM and device properties alike). Two hooks declaring the
    same property: a value is valid when either regex accepts it."""
    regexes: dict[str, list[str]] = {}
    for record in installed(hooks_dir).values():
        for decl in record.hook.properties:
            known = regexes.setdefault(decl.name, [])
            if decl.regex not in known:
                known.append(decl.regex)
    rules = {}
    for name, patterns in regexes.items():
        regex = patterns[0] if len(patterns) == 1 else "|".join(f"(?:{p})" for p in patterns)
        rules[name] = compile_rule(name, regex)
    return rules


def user_defined_form(decls: Iterable[PropertyDecl]) -> str:
    """`name=regex;name=regex`: oVirt's UserDefinedVMProperties form."""
    return ";".join(f"{decl.name}={decl.regex}" for decl in decls)


# --- install / uninstall ---------------------------------------------------


file_sha256 = _helpers.file_sha256



def install(names: Iterable[str], hooks_dir: Path, *, force: bool = False) -> list[FileAction]:
    """Install the named hooks under `hooks_dir` (created if missing).

    Idempotent. Every file is checked before anything is written: a file in
    the way that is not an unmodified copy installed by us (an admin's edit,
    someone else's script) stops the whole install unless `force`."""
    hooks = [get_hook(name) for name in _unique(names)]
    previous = installed(hooks_dir) if hooks_dir.is_dir() else {}
    plans = [(hook, _plan_install(hook, hooks_dir, previous.get(hook.name))) for hook in hooks]
    scripts = {}
    for name, record in previous.items():
        if name not in {hook.name for hook in hooks}:
            scripts.update(_helpers.installed_scripts(hooks_dir, record.files))
    for hook in hooks:
        scripts.update((hook.target(s.point), hook.source_path(s).read_bytes()) for s in hook.scripts)
    helpers = _helpers.plan(hooks_dir, record_dir(hooks_dir), scripts)
    conflicts = [conflict for _, plan in plans for conflict in plan.conflicts] + list(helpers.conflicts)
    if conflicts and not force:
        raise CatalogueError(
            "not installing: " + "; ".join(conflicts) + " (use --force to overwrite)"
        )
    actions: list[FileAction] = []
    for hook, plan in plans:
        actions.extend(_apply_install(hook, hooks_dir, plan))
    return actions + _apply_helpers(hooks_dir, helpers)


def uninstall(names: Iterable[str], hooks_dir: Path, *, force: bool = False) -> list[FileAction]:
    """Remove the named hooks' scripts and records from `hooks_dir`.

    Files that were changed since they were installed stay unless `force`."""
    records = installed(hooks_dir) if hooks_dir.is_dir() else {}
    plans = []
    for name in _unique(names):
        record = records.get(name)
        if record is None:
            files = _catalogue_files(get_hook(name))
            if not any((hooks_dir / target).exists() for target in files):
                raise CatalogueError(f"{name} is not installed under {hooks_dir}")
        else:
            files = dict(record.files)
        plans.append((name, record, files))
    removed = {name for name, _, _ in plans}
    remaining = {}
    for name, record in records.items():
        if name not in removed:
            remaining.update(_helpers.installed_scripts(hooks_dir, record.files))
    helpers = _helpers.plan(hooks_dir, record_dir(hooks_dir), remaining)
    conflicts = list(helpers.conflicts)
    for name, _, files in plans:
        for target, digest in files.items():
            current = file_sha256(hooks_dir / target)
            if current is not None and current != digest:
                conflicts.append(f"{hooks_dir / target} was modified since {name} was installed")
    if conflicts and not force:
        raise CatalogueError("not uninstalling: " + "; ".join(conflicts) + " (use --force)")
    actions = []
    for name, record, files in plans:
        for target in files:
            path = hooks_dir / target
            try:
                path.unlink()
                actions.append(FileAction(name, path, Action.REMOVED))
            except FileNotFoundError:
                actions.append(FileAction(name, path, Action.ABSENT))
        if record is not None:
            record.record.unlink(missing_ok=True)
            actions.append(FileAction(name, record.record, Action.REMOVED))
    return actions + _apply_helpers(hooks_dir, helpers)


def _apply_helpers(hooks_dir: Path, plan: _helpers.HelperPlan) -> list[FileAction]:
    """Write, fix or remove the helper copies, then their record."""
    actions = []
    for target, content, action in plan.writes:
        path = hooks_dir / target
        if action != Action.UNCHANGED.value:
            _make_dir(path.parent)
            _write_atomically(path, content, _helpers.HELPER_MODE)
        actions.append(FileAction(_helpers.SHARED, path, Action(action)))
    for target in plan.removals:
        path = hooks_dir / target
        try:
            path.unlink()
            actions.append(FileAction(_helpers.SHARED, path, Action.REMOVED))
        except FileNotFoundError:
            actions.append(FileAction(_helpers.SHARED, path, Action.ABSENT))
    record = record_dir(hooks_dir) / _helpers.SHARED_RECORD
    text = json.dumps(plan.record, indent=1, sort_keys=True) + "\n"
    if not plan.record:
        record.unlink(missing_ok=True)
    elif not record.is_file() or record.read_text(encoding="utf-8") != text:
        _make_dir(record.parent)
        _write_atomically(record, text.encode("utf-8"), 0o644)
    return actions


class _InstallPlan(NamedTuple):
    writes: tuple[tuple[str, Path, Action], ...]  # (target, source, action)
    stale: tuple[str, ...]  # targets of a previous version no longer shipped
    conflicts: tuple[str, ...]


def _catalogue_files(hook: CatalogueHook) -> dict[str, str]:
    return {
        hook.target(script.point): hashlib.sha256(hook.source_path(script).read_bytes()).hexdigest()
        for script in hook.scripts
    }


def _plan_install(hook: CatalogueHook, hooks_dir: Path, previous: InstalledHook | None) -> _InstallPlan:
    recorded = dict(previous.files) if previous else {}
    writes, conflicts = [], []
    for script in hook.scripts:
        target = hook.target(script.point)
        source = hook.source_path(script)
        wanted = hashlib.sha256(source.read_bytes()).hexdigest()
        action, conflict = _helpers.file_action(hooks_dir / target, wanted, recorded.get(target), SCRIPT_MODE)
        writes.append((target, source, Action(action)))
        conflicts += [conflict] if conflict else []
    stale, modified = _helpers.stale(hooks_dir, recorded, {target for target, _, _ in writes}, " (no longer shipped)")
    conflicts += modified
    return _InstallPlan(tuple(writes), tuple(stale), tuple(conflicts))


def _apply_install(hook: CatalogueHook, hooks_dir: Path, plan: _InstallPlan) -> list[FileAction]:
    actions = []
    files: dict[str, str] = {}
    for target, source, action in plan.writes:
        path = hooks_dir / target
        content = source.read_bytes()
        if action is not Action.UNCHANGED:
            _make_dir(path.parent)
            _write_atomically(path, content, SCRIPT_MODE)
        files[target] = hashlib.sha256(content).hexdigest()
        actions.append(FileAction(hook.name, path, action))
    for target in plan.stale:
        path = hooks_dir / target
        path.unlink(missing_ok=True)
        actions.append(FileAction(hook.name, path, Action.REMOVED))
    record = record_dir(hooks_dir) / f"{hook.name}.toml"
    text = _record_text(hook, files)
    old = record.read_text(encoding="utf-8") if record.is_file() else None
    if old != text:
        _make_dir(record.parent)
        _write_atomically(record, text.encode("utf-8"), 0o644)
        actions.append(FileAction(hook.name, record, Action.CREATED if old is None else Action.UPDATED))
    return actions


def _record_text(hook: CatalogueHook, files: Mapping[str, str]) -> str:
    """The hook's manifest as shipped, then the [installed] table."""
    manifest = hook.manifest_text()
    lines = [manifest.rstrip("\n"), "", "# Written by `vmhooks catalogue install`.", "[installed.files]"]
    lines += [f"{json.dumps(target)} = {json.dumps(digest)}" for target, digest in sorted(files.items())]
    return "\n".join(lines) + "\n"


def _make_dir(directory: Path) -> None:
    if not directory.is_dir():
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)


def _write_atomically(path: Path, content: bytes, mode: int) -> None:
    temp = path.parent / f".{path.name}.vmhooks-tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(temp, mode)  # exactly `mode`, whatever the umask
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _unique(names: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    if not seen:
        raise CatalogueError("name at least one catalogue hook")
    return seen
