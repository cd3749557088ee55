"""The modules catalogue hooks import, installed beside them.

Catalogue hooks `import vmhooks_catalogue`. The vmhooks runner has it on
the hooks' PYTHONPATH, VDSM's runner does not: so `install` also puts a
copy (mode 0644: not executable, so no runner takes it for a hook) into
every point directory where an installed script imports it. A Python
script finds modules in its own directory first, under either runner.

These copies belong to no single hook: their sha256 are recorded in
`<hooks_dir>/.vmhooks-catalogue/shared-files.json`, a copy is removed when
no installed script of its directory imports it any more, and one edited
since it was written is only replaced or removed with `force`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from vmhooks.errors import VmhooksError

HOOKLIB_DIR = Path(__file__).resolve().parent.parent / "hooklib"
HELPER_MODULES = ("vmhooks_catalogue",)
HELPER_MODE = 0o644
SHARED_RECORD = "shared-files.json"
SHARED = "(shared)"  # the `hook` of these files' FileActions


def _imports(name: str) -> re.Pattern[bytes]:
    return re.compile(rb"^\s*(?:import|from)\s+" + re.escape(name.encode()) + rb"\b", re.MULTILINE)


_IMPORTS = {name: _imports(name) for name in HELPER_MODULES}


def wanted(scripts: Mapping[str, bytes]) -> dict[str, bytes]:
    """{`point/module.py`: content} for the helpers that the scripts (by
    target `point/50_name`, with their content) import."""
    files = {}
    for target, content in scripts.items():
        point = target.split("/", 1)[0]
        for name, pattern in _IMPORTS.items():
            if pattern.search(content):
                files[f"{point}/{name}.py"] = (HOOKLIB_DIR / f"{name}.py").read_bytes()
    return files


class HelperPlan(NamedTuple):
    writes: tuple[tuple[str, bytes, str], ...]  # (target, content, action value)
    removals: tuple[str, ...]
    conflicts: tuple[str, ...]
    record: dict[str, str]  # the shared record after the change


def _record_path(record_dir: Path) -> Path:
    return record_dir / SHARED_RECORD


def read_record(record_dir: Path) -> dict[str, str]:
    path = _record_path(record_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise VmhooksError(f"catalogue record {path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise VmhooksError(f"catalogue record {path} must map paths to sha256")
    return data


def file_sha256(path: Path) -> str | None:
    """Hex sha256 of the file; None when it does not exist."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VmhooksError(f"cannot read {path}: {exc.strerror}") from None


def file_action(path: Path, digest: str, recorded: str | None, mode: int) -> tuple[str, str | None]:
    """What writing content of `digest` at `path` would be (an Action
    value), and the conflict it would be, if any: a file that is neither
    the wanted content nor what was recorded as installed (`recorded`)."""
    current = file_sha256(path)
    if current is None:
        return "created", None
    if current == digest:
        mode_ok = not path.is_symlink() and stat.S_IMODE(os.lstat(path).st_mode) == mode
        return ("unchanged" if mode_ok else "mode fixed"), None
    if recorded == current:
        return "updated", None
    why = "was modified since it was installed" if recorded is not None else "is not ours"
    return "replaced", f"{path} {why}"


def stale(hooks_dir: Path, recorded: Mapping[str, str], keep: set[str], label: str = "") -> tuple[list[str], list[str]]:
    """Recorded targets not in `keep` (to remove), and the conflicts among
    them: those modified since they were written."""
    targets, conflicts = [], []
    for target, digest in sorted(recorded.items()):
        if target in keep:
            continue
        current = file_sha256(hooks_dir / target)
        if current is not None and current != digest:
            conflicts.append(f"{hooks_dir / target}{label} was modified")
        targets.append(target)
    return targets, conflicts


def plan(hooks_dir: Path, record_dir: Path, scripts: Mapping[str, bytes]) -> HelperPlan:
    """What makes the helper copies match `scripts`, the catalogue scripts
    installed once the operation is done. Nothing is written here."""
    recorded = read_record(record_dir)
    files = wanted(scripts)
    writes, conflicts = [], []
    record = {}
    for target, content in sorted(files.items()):
        record[target] = digest = hashlib.sha256(content).hexdigest()
        action, conflict = file_action(hooks_dir / target, digest, recorded.get(target), HELPER_MODE)
        writes.append((target, content, action))
        conflicts += [conflict] if conflict else []
    removals, modified = stale(hooks_dir, recorded, set(files), " (no longer needed)")
    return HelperPlan(tuple(writes), tuple(removals), tuple(conflicts + modified), record)


def installed_scripts(hooks_dir: Path, targets: Mapping[str, object]) -> dict[str, bytes]:
    """The content of the installed scripts named by `targets` (gone ones left out)."""
    scripts = {}
    for target in targets:
        try:
            scripts[target] = (hooks_dir / target).read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise VmhooksError(f"cannot read {hooks_dir / target}: {exc.strerror}") from None
    return scripts
