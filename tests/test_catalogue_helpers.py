"""The modules catalogue hooks import, installed beside them (catalogue
._helpers), so that an installed tree also runs under VDSM's own runner:
shown with VDSM's `_runHooksDir` semantics restated here, and with
upstream's runner itself where an extracted upstream tree is present."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from vmhooks import catalogue, discovery
from vmhooks.catalogue import Action, CatalogueError
from vmhooks.environment import HOOKLIB_DIR
from vmhooks.runner import RunnerConfig, run_chain

UPSTREAM_LIB = Path(os.environ.get("VMHOOKS_UPSTREAM_TREE", "/work/upstream")) / "lib"
HELPER = "vmhooks_catalogue.py"
PROPS = {"pincpu": "0-1", "hugepages": "64", "smbios": "{'serial': 'abc'}", "nestedvt": "true", "diskunmap": "on"}

pytestmark = pytest.mark.skipif(
    not os.access("/usr/bin/python3", os.X_OK), reason="catalogue hooks run under /usr/bin/python3"
)


def actions(result: list[catalogue.FileAction]) -> dict[str, Action]:
    return {f"{a.path.parent.name}/{a.path.name}": a.action for a in result}


def vdsm_run_hooks_dir(
    hooks_root: Path, point: str, data: str, vm_id: str, custom: Mapping[str, str], vdsm_hook_dir: Path
) -> tuple[str, list[bytes]]:
    """VDSM's `_runHooksDir` for a domain XML, restated: the executable
    regular files of `<root>/<point>/*` (glob: dot files left out) sorted
    by name; one temp file named by `_hook_domxml`; the agent's environment
    with the custom properties and vmId; PYTHONPATH extended with the
    directory of VDSM's `hooking` only; exit 2 stops the chain. Returns the
    payload left behind and the stderr of each failing script."""
    scripts = sorted(s for s in glob.glob(str(hooks_root / point / "*")) if os.path.isfile(s) and os.access(s, os.X_OK))
    fd, name = tempfile.mkstemp()
    errors = []
    try:
        os.write(fd, data.encode("utf-8"))
        os.close(fd)
        env = {key: value for key, value in os.environ.items() if not key.startswith("VMHOOKS_")}
        env.update(custom)
        env["vmId"] = vm_id
        env["PYTHONPATH"] = ":".join(env.get("PYTHONPATH", "").split(":") + [str(vdsm_hook_dir)])
        env["_hook_domxml"] = name
        for script in scripts:
            done = subprocess.run([script], env=env, capture_output=True, timeout=60)
            if done.returncode != 0:
                errors.append(done.stderr)
            if done.returncode == 2:
                break
        return Path(name).read_text(encoding="utf-8"), errors
    finally:
        os.unlink(name)


@pytest.fixture
def vdsm_hook_dir(tmp_path: Path) -> Path:
    """Stands for VDSM's vdsm/hook/ directory: `hooking` and nothing else."""
    directory = tmp_path / "vdsm-hook"
    directory.mkdir()
    shutil.copy(HOOKLIB_DIR / "hooking.py", directory / "hooking.py")
    return directory


def test_install_puts_the_helper_beside_the_scripts_that_import_it(hooks_dir: Path) -> None:
    catalogue.install(["cantmigrate", "pincpu"], hooks_dir)
    helper = hooks_dir / "before_vm_start" / HELPER
    assert helper.read_bytes() == (HOOKLIB_DIR / HELPER).read_bytes()
    assert stat.S_IMODE(helper.stat().st_mode) == 0o644  # no runner takes it for a hook
    assert not (hooks_dir / "before_vm_migrate_source" / HELPER).exists()  # cantmigrate imports only hooking
    record = json.loads((hooks_dir / ".vmhooks-catalogue" / "shared-files.json").read_text())
    assert list(record) == [f"before_vm_start/{HELPER}"]
    assert [s.name for s in discovery.find_scripts(hooks_dir, "before_vm_start")] == ["50_pincpu"]
    removed = actions(catalogue.uninstall(["pincpu", "cantmigrate"], hooks_dir))
    assert removed[f"before_vm_start/{HELPER}"] is Action.REMOVED
    assert not helper.exists() and not (hooks_dir / ".vmhooks-catalogue" / "shared-files.json").exists()


def test_an_edited_or_foreign_helper_is_kept_unless_forced(hooks_dir: Path) -> None:
    catalogue.install(["pincpu"], hooks_dir)
    helper = hooks_dir / "before_vm_start" / HELPER
    helper.write_text("# my local change\n")
    with pytest.raises(CatalogueError, match=rf"{HELPER} \(no longer needed\) was modified"):
        catalogue.uninstall(["pincpu"], hooks_dir)
    assert helper.exists() and catalogue.installed(hooks_dir)  # nothing removed
    with pytest.raises(CatalogueError, match=f"{HELPER} was modified since it was installed"):
        catalogue.install(["numa"], hooks_dir)
    assert helper.read_text() == "# my local change\n" and not (hooks_dir / "before_vm_start" / "50_numa").exists()
    assert actions(catalogue.install(["numa"], hooks_dir, force=True))[f"before_vm_start/{HELPER}"] is Action.REPLACED
    (hooks_dir / ".vmhooks-catalogue" / "shared-files.json").unlink()
    helper.write_text("# someone else's module\n")
    with pytest.raises(CatalogueError, match=f"{HELPER} is not ours"):
        catalogue.install(["pincpu"], hooks_dir)


def test_an_older_helper_of_ours_is_updated(hooks_dir: Path) -> None:
    catalogue.install(["pincpu"], hooks_dir)
    helper = hooks_dir / "before_vm_start" / HELPER
    record = hooks_dir / ".vmhooks-catalogue" / "shared-files.json"
    old = b"# an earlier vmhooks_catalogue\n"
    helper.write_bytes(old)
    record.write_text(json.dumps({f"before_vm_start/{HELPER}": hashlib.sha256(old).hexdigest()}))
    assert actions(catalogue.install(["pincpu"], hooks_dir))[f"before_vm_start/{HELPER}"] is Action.UPDATED
    assert helper.read_bytes() == (HOOKLIB_DIR / HELPER).read_bytes()


def test_the_installed_catalogue_runs_under_vdsms_runner_semantics(
    hooks_dir: Path, vdsm_hook_dir: Path, seed_xml: str
) -> None:
    catalogue.install(list(catalogue.catalogue_names()), hooks_dir)
    vm_id = "3573e29e-5de9-468a-9fae-16050c6b3dcc"
    ours = run_chain("before_vm_start", seed_xml, RunnerConfig(hooks_dir), custom=PROPS, vm_id=vm_id)
    assert not ours.failed, ours.error_message()
    theirs, errors = vdsm_run_hooks_dir(hooks_dir, "before_vm_start", seed_xml, vm_id, PROPS, vdsm_hook_dir)
    assert errors == []
    assert theirs == ours.payload
    assert 'cpuset="0-1"' in theirs and "<hugepages/>" in theirs  # the hooks did act
    # Without the copies beside them, VDSM's runner could not run them.
    for helper in hooks_dir.glob(f"*/{HELPER}"):
        helper.unlink()
    _, errors = vdsm_run_hooks_dir(hooks_dir, "before_vm_start", seed_xml, vm_id, PROPS, vdsm_hook_dir)
    assert errors and all(b"No module named 'vmhooks_catalogue'" in error for error in errors)


@pytest.mark.skipif(not (UPSTREAM_LIB / "vdsm" / "common" / "hooks.py").is_file(),
                    reason="no extracted upstream VDSM tree (set VMHOOKS_UPSTREAM_TREE)")  # fmt: skip
def test_the_installed_catalogue_runs_under_upstreams_own_runner(hooks_dir: Path, seed_xml: str) -> None:
    catalogue.install(list(catalogue.catalogue_names()), hooks_dir)
    ours = run_chain("before_vm_start", seed_xml, RunnerConfig(hooks_dir), custom=PROPS, vm_id="x")
    code = (
        "import json, sys\n"
        "from vdsm.common import hooks\n"
        f"hooks.P_VDSM_HOOKS = {str(hooks_dir) + '/'!r}\n"
        "a = json.load(sys.stdin)\n"
        "print(hooks._runHooksDir(a['xml'], 'before_vm_start', vmconf={'vmId': 'x', 'custom': a['props']}), end='')\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("VMHOOKS_")}
    env["PYTHONPATH"] = str(UPSTREAM_LIB)
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps({"xml": seed_xml, "props": PROPS}),
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ours.payload
