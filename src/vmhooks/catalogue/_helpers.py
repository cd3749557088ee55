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


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VmhooksError(f"cannot read {path}: {exc.strerror}") from None


def plan(hooks_dir: Path, record_dir: Path, scripts: Mapping[str, bytes]) -> HelperPlan:
    """What makes the helper copies match `scripts`, the catalogue scripts
    installed once the operation is done. Nothing is written here."""
    recorded = read_record(record_dir)
    files = wanted(scripts)
    writes, removals, conflicts = [], [], []
    record = {}
    for target, content in sorted(files.items()):
        path = hooks_dir / target
        digest = hashlib.sha256(content).hexdigest()
        current = _sha256(path)
        record[target] = digest
        if current is None:
            writes.append((target, content, "created"))
        elif current == digest:
            mode_ok = not path.is_symlink() and stat.S_IMODE(os.lstat(path).st_mode) == HELPER_MODE
            writes.append((target, content, "unchanged" if mode_ok else "mode fixed"))
        elif recorded.get(target) == current:
            writes.append((target, content, "updated"))
        else:
            why = "was modified since it was installed" if target in recorded else "is not ours"
            conflicts.append(f"{path} {why}")
            writes.append((target, content, "replaced"))
    for target, digest in sorted(recorded.items()):
        if target in files:
            continue
        current = _sha256(hooks_dir / target)
        if current is not None and current != digest:
            conflicts.append(f"{hooks_dir / target} was modified since it was installed")
        removals.append(target)
    return HelperPlan(tuple(writes), tuple(removals), tuple(conflicts), record)


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
