"""`vmhooks catalogue` as a user types it: install --all around a conflict,
properties --all, the legend of `list`."""
from __future__ import annotations

import subprocess
from pathlib import Path

from agentproc import VMHOOKS

from vmhooks import catalogue


def vmhooks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMHOOKS, *args], capture_output=True, text=True, timeout=60)


def test_install_all_installs_what_it_can_and_reports_what_it_skipped(hooks_dir: Path):
    assert vmhooks("catalogue", "install", "pincpu", "--hooks-dir", str(hooks_dir)).returncode == 0
    edited = hooks_dir / "before_vm_start" / "50_pincpu"
    edited.write_text("#!/bin/sh\n# the admin's own version\n")
    done = vmhooks("catalogue", "install", "--all", "--hooks-dir", str(hooks_dir))
    assert done.returncode == 0, done.stderr
    assert set(catalogue.installed(hooks_dir)) == set(catalogue.catalogue_names())
    assert edited.read_text() == "#!/bin/sh\n# the admin's own version\n"  # kept
    tail = done.stdout.splitlines()[-2:]
    assert tail == ["skipped 1 hook(s):", f"  pincpu: not installing: {edited} was modified since it was installed"
                    " (use --force to overwrite)"]  # fmt: skip
    again = vmhooks("catalogue", "install", "--all", "--hooks-dir", str(hooks_dir))
    assert "skipped 1 hook(s):" in again.stdout and "0 file(s) changed" in again.stdout
    forced = vmhooks("catalogue", "install", "--all", "--force", "--hooks-dir", str(hooks_dir))
    assert forced.returncode == 0 and "skipped" not in forced.stdout
    assert "pincpu         replaced   before_vm_start/50_pincpu" in forced.stdout
    assert edited.read_bytes() == (catalogue.get_hook("pincpu").directory / "before_vm_start.py").read_bytes()


def test_install_of_named_hooks_is_still_all_or_nothing(hooks_dir: Path):
    assert vmhooks("catalogue", "install", "pincpu", "--hooks-dir", str(hooks_dir)).returncode == 0
    (hooks_dir / "before_vm_start" / "50_pincpu").write_text("#!/bin/sh\n")
    done = vmhooks("catalogue", "install", "numa", "pincpu", "--hooks-dir", str(hooks_dir))
    assert done.returncode == 2 and "use --force" in done.stderr
    assert not (hooks_dir / "before_vm_start" / "50_numa").exists()


def test_properties_all_covers_every_hook_installed_or_not(tmp_path: Path):
    done = vmhooks("catalogue", "properties", "--all", "--hooks-dir", str(tmp_path / "empty"))
    assert done.returncode == 0, done.stderr
    vm_line, device_line = done.stdout.splitlines()[1], done.stdout.splitlines()[3]
    declared = {(d.name, d.scope) for hook in catalogue.available() for d in hook.properties}
    for name, scope in declared:
        assert f"{name}=^" in (vm_line if scope is catalogue.Scope.VM else device_line), name
    none = vmhooks("catalogue", "properties", "--hooks-dir", str(tmp_path / "empty"))
    assert none.returncode == 2 and "name hooks to describe, or --all" in none.stderr
    both = vmhooks("catalogue", "properties", "--all", "pincpu")
    assert both.returncode == 2 and both.stderr == "vmhooks: give hook names or --all, not both\n"


def test_list_explains_its_marks(hooks_dir: Path):
    assert vmhooks("catalogue", "install", "extnet", "--hooks-dir", str(hooks_dir)).returncode == 0
    lines = vmhooks("catalogue", "list", "--hooks-dir", str(hooks_dir)).stdout.splitlines()
    assert any(line.startswith("* extnet") for line in lines) and any(line.startswith("  pincpu") for line in lines)
    assert lines[-1] == f"* = installed under {hooks_dir}; (device) = a device custom property (--device-prop)"
    missing = vmhooks("catalogue", "list", "--hooks-dir", str(hooks_dir / "nope")).stdout.splitlines()
    assert missing[-1].startswith(f"* = installed under {hooks_dir / 'nope'} (which does not exist);")
