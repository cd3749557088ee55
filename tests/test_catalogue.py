"""The catalogue's management: manifests, install/uninstall, the property
rules of installed hooks (composed with properties.combine), and `vmhooks catalogue`."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import stat
import sys
import tomllib
from pathlib import Path

import pytest

from vmhooks import catalogue, discovery
from vmhooks.catalogue import Action, CatalogueError, Scope
from vmhooks.cli import main
from vmhooks.commands.hooks_check import check_tree
from vmhooks.errors import InvalidEnvironmentError, VmhooksError
from vmhooks.points import get_point
from vmhooks.properties import combine, parse_user_defined
from vmhooks.runner import RunnerConfig, run_chain


def load_rules(hooks_dir, admin_spec):
    """What the agent and `hooks run` compose: installed rules, then the admin's."""
    return combine(catalogue.installed_property_rules(hooks_dir), parse_user_defined(admin_spec))


EXPECTED = {
    "allocate_net", "boot_hostdev", "cantmigrate", "cpuflags", "diskunmap", "directlun", "extnet",
    "floppy", "hostusb", "httpsisoboot", "hugepages", "log_console", "macspoof", "nestedvt", "numa",
    "pincpu", "qemucmdline", "scratchpad", "smartcard", "smbios", "spiceoptions", "vmdisk",
}  # fmt: skip
# The hooks' own path (hooklib/) holds `hooking` and the catalogue's shared helpers.
ALLOWED_IMPORTS = set(sys.stdlib_module_names) | {"hooking", "vmhooks_catalogue"}


def actions(result: list[catalogue.FileAction]) -> dict[str, Action]:
    return {f"{a.path.parent.name}/{a.path.name}": a.action for a in result}


# --- the shipped catalogue --------------------------------------------------


def test_the_catalogue_has_every_hook_of_the_issue():
    assert set(catalogue.catalogue_names()) == EXPECTED


@pytest.mark.parametrize("hook", catalogue.available(), ids=lambda hook: hook.name)
def test_each_hook_is_complete(hook):
    assert hook.summary and "\n" not in hook.summary
    for point in hook.points:
        get_point(point)
    readme = hook.readme()
    assert readme.startswith(f"# {hook.name}")
    for decl in hook.properties:
        assert f"`{decl.name}" in readme, decl.name
        decl.pattern  # compiles
    assert "Example" in readme and "```xml" in readme
    for script in hook.scripts:
        text = hook.source_path(script).read_text()
        assert text.startswith("#!/usr/bin/python3\n"), script
        tree = ast.parse(text)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] in ALLOWED_IMPORTS, f"{script.source} imports {name}"


def test_property_declarations_follow_the_vdsm_syntax():
    rules = {d.name: d.pattern for h in catalogue.available() for d in h.properties}
    good = {
        "pincpu": "1-4,^3,6", "cantmigrate": "", "hugepages": "512", "numa": "strict:1-4,^3",
        "qemu_cmdline": '["-opt","val"]', "smbios": "{'serial': '1234'}^{'vendor': 'oVirt'}",
        "cpuflags": "+f,-f2,SAP", "sap_agent": "true", "diskunmap": "on", "extnet": "ovs",
        "equivnets": "net1 net2", "boot_hostdev": "pci_0000_00_1f_2",
        "httpsisoboot": "https://host:8443/path.iso", "spiceoptions": "{'image': {'compression': 'glz'}}",
        "macspoof": "true", "ifacemacspoof": "false", "floppy": "/path/to/vfd",
        "vmdisk": "/path/a.img:qcow2,/path/b.img:raw", "hostusb": "0x1234:0xbeef&0x2222:0xabaa",
        "smartcard": "true", "directlun": "LUNID:readonly,LUN2", "log_console": "off",
        "scratchpad": "20G,/path:1T,/path2",
    }  # fmt: skip
    assert set(rules) == set(good)
    for name, value in good.items():
        assert rules[name].fullmatch(value), (name, value)
    bad = {"pincpu": "a", "hugepages": "1G", "numa": "loose:1", "cpuflags": "mmx", "diskunmap": "yes",
           "hostusb": "1234:beef", "boot_hostdev": "eth0", "httpsisoboot": "http://h/a.iso",
           "scratchpad": "20G", "directlun": "a/b"}  # fmt: skip
    for name, value in bad.items():
        assert not rules[name].fullmatch(value), (name, value)


def test_device_properties_are_declared_as_such():
    scopes = {d.name: d.scope for h in catalogue.available() for d in h.properties}
    assert {n for n, s in scopes.items() if s is Scope.DEVICE} == {"extnet", "equivnets", "ifacemacspoof"}


def test_a_bad_manifest_is_refused(tmp_path):
    hook = tmp_path / "bad"
    hook.mkdir()
    (hook / "manifest.toml").write_text('name = "bad"\nsummary = "x"\n[points]\nbefore_vm_strat = "a.py"\n')
    with pytest.raises(CatalogueError, match="unknown hook point 'before_vm_strat'"):
        catalogue.load_manifest(hook)
    (hook / "manifest.toml").write_text(
        'name = "bad"\nsummary = "x"\n[points]\nbefore_vm_start = "a.py"\n'
        '[[properties]]\nname = "LD_PRELOAD"\nregex = ".*"\n'
    )
    with pytest.raises(CatalogueError, match="reserved"):
        catalogue.load_manifest(hook)
    (hook / "manifest.toml").write_text('name = "bad"\nsummary = "x"\n[points]\nbefore_vm_start = "a.py"\n'
                                        '[[properties]]\nname = "p"\nregex = "("\n')
    with pytest.raises(CatalogueError, match="invalid regex"):
        catalogue.load_manifest(hook)


def test_unknown_hook_names_the_available_ones(hooks_dir):
    with pytest.raises(CatalogueError, match="no catalogue hook named 'pinnedcpu' \\(available: allocate_net"):
        catalogue.install(["pinnedcpu"], hooks_dir)


# --- install / uninstall ----------------------------------------------------


def test_install_writes_scripts_by_point_with_mode_0755_and_a_record(hooks_dir):
    result = catalogue.install(["scratchpad"], hooks_dir)
    assert actions(result) == {
        "before_vm_start/50_scratchpad": Action.CREATED,
        "before_vm_migrate_source/50_scratchpad": Action.CREATED,
        "after_vm_destroy/50_scratchpad": Action.CREATED,
        ".vmhooks-catalogue/scratchpad.toml": Action.CREATED,
        "before_vm_start/vmhooks_catalogue.py": Action.CREATED,  # only that script imports it
    }
    hook = catalogue.get_hook("scratchpad")
    for script in hook.scripts:
        path = hooks_dir / script.point / "50_scratchpad"
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
        assert path.read_bytes() == hook.source_path(script).read_bytes()
        assert discovery.unsafe_reason(path) is None
    record = tomllib.loads((hooks_dir / ".vmhooks-catalogue" / "scratchpad.toml").read_text())
    assert record["name"] == "scratchpad" and record["properties"][0]["name"] == "scratchpad"
    assert set(record["installed"]["files"]) == {f"{p}/50_scratchpad" for p in hook.points}


def test_install_is_idempotent(hooks_dir):
    catalogue.install(["pincpu", "macspoof"], hooks_dir)
    again = catalogue.install(["pincpu", "macspoof"], hooks_dir)
    assert set(actions(again).values()) == {Action.UNCHANGED}
    assert len(again) == 7  # the four scripts and three helpers; the records did not change


def test_install_fixes_the_mode(hooks_dir):
    catalogue.install(["pincpu"], hooks_dir)
    script = hooks_dir / "before_vm_start" / "50_pincpu"
    os.chmod(script, 0o700)
    assert actions(catalogue.install(["pincpu"], hooks_dir))["before_vm_start/50_pincpu"] is Action.MODE_FIXED
    assert stat.S_IMODE(script.stat().st_mode) == 0o755


def test_install_over_a_modified_copy_asks_for_force(hooks_dir):
    catalogue.install(["pincpu"], hooks_dir)
    script = hooks_dir / "before_vm_start" / "50_pincpu"
    script.write_text("#!/bin/sh\n# my local fix\n")
    with pytest.raises(CatalogueError, match="was modified since it was installed.*--force"):
        catalogue.install(["cantmigrate", "pincpu"], hooks_dir)
    assert "my local fix" in script.read_text()
    assert not (hooks_dir / "before_vm_migrate_source").exists()  # all or nothing
    forced = catalogue.install(["pincpu"], hooks_dir, force=True)
    assert actions(forced)["before_vm_start/50_pincpu"] is Action.REPLACED
    assert script.read_bytes().startswith(b"#!/usr/bin/python3")


def test_install_over_someone_elses_script_asks_for_force(hooks_dir, make_hook):
    make_hook("before_vm_start", "50_pincpu", "echo mine\n")
    with pytest.raises(CatalogueError, match="50_pincpu is not ours"):
        catalogue.install(["pincpu"], hooks_dir)


def test_install_updates_an_unmodified_older_version_and_drops_stale_points(hooks_dir):
    catalogue.install(["pincpu"], hooks_dir)
    record_path = hooks_dir / ".vmhooks-catalogue" / "pincpu.toml"
    script = hooks_dir / "before_vm_start" / "50_pincpu"
    old = b"#!/usr/bin/python3\n# version 0\n"
    script.write_bytes(old)
    stale = hooks_dir / "after_vm_start" / "50_pincpu"
    stale.parent.mkdir()
    stale.write_bytes(old)
    digest = hashlib.sha256(old).hexdigest()
    text = record_path.read_text()
    text = re.sub(r'"before_vm_start/50_pincpu" = "[0-9a-f]+"', f'"before_vm_start/50_pincpu" = "{digest}"', text)
    record_path.write_text(text + f'"after_vm_start/50_pincpu" = "{digest}"\n')
    result = actions(catalogue.install(["pincpu"], hooks_dir))
    assert result["before_vm_start/50_pincpu"] is Action.UPDATED
    assert result["after_vm_start/50_pincpu"] is Action.REMOVED
    assert not stale.exists()
    assert "after_vm_start" not in (hooks_dir / ".vmhooks-catalogue" / "pincpu.toml").read_text()


def test_uninstall_removes_scripts_and_record(hooks_dir):
    catalogue.install(["macspoof", "pincpu"], hooks_dir)
    result = actions(catalogue.uninstall(["macspoof"], hooks_dir))
    assert result == {
        "before_vm_start/50_macspoof": Action.REMOVED,
        "before_device_create/50_macspoof": Action.REMOVED,
        "before_nic_hotplug/50_macspoof": Action.REMOVED,
        ".vmhooks-catalogue/macspoof.toml": Action.REMOVED,
        "before_device_create/vmhooks_catalogue.py": Action.REMOVED,
        "before_nic_hotplug/vmhooks_catalogue.py": Action.REMOVED,
        "before_vm_start/vmhooks_catalogue.py": Action.UNCHANGED,  # pincpu still imports it
    }
    assert set(catalogue.installed(hooks_dir)) == {"pincpu"}
    assert (hooks_dir / "before_vm_start" / "50_pincpu").exists()
    with pytest.raises(CatalogueError, match="macspoof is not installed"):
        catalogue.uninstall(["macspoof"], hooks_dir)


def test_uninstall_keeps_a_modified_copy_unless_forced(hooks_dir):
    catalogue.install(["pincpu"], hooks_dir)
    script = hooks_dir / "before_vm_start" / "50_pincpu"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(CatalogueError, match="was modified since pincpu was installed"):
        catalogue.uninstall(["pincpu"], hooks_dir)
    assert script.exists()
    catalogue.uninstall(["pincpu"], hooks_dir, force=True)
    assert not script.exists() and catalogue.installed(hooks_dir) == {}


def test_uninstall_without_a_record_removes_unmodified_copies(hooks_dir):
    catalogue.install(["cantmigrate"], hooks_dir)
    (hooks_dir / ".vmhooks-catalogue" / "cantmigrate.toml").unlink()
    result = actions(catalogue.uninstall(["cantmigrate"], hooks_dir))
    assert result == {"before_vm_migrate_source/50_cantmigrate": Action.REMOVED}


def test_the_record_directory_is_invisible_to_discovery_and_check(hooks_dir):
    catalogue.install(list(catalogue.catalogue_names()), hooks_dir)
    assert ".vmhooks-catalogue" not in discovery.inventory(hooks_dir)
    assert list(check_tree(hooks_dir)) == []


def test_hooks_check_passes_on_the_whole_catalogue(hooks_dir, capsys):
    assert main(["catalogue", "install", "--all", "--hooks-dir", str(hooks_dir)]) == 0
    capsys.readouterr()
    assert main(["hooks", "check", "--hooks-dir", str(hooks_dir)]) == 0
    assert "no problems found" in capsys.readouterr().out
    points = sorted(p.name for p in hooks_dir.iterdir() if not p.name.startswith("."))
    assert points == ["after_vm_destroy", "before_device_create", "before_nic_hotplug",
                      "before_vm_migrate_source", "before_vm_start"]


# --- property rules ---------------------------------------------------------


def test_installed_property_rules(hooks_dir):
    assert catalogue.installed_property_rules(hooks_dir) == {}
    catalogue.install(["pincpu", "macspoof", "cpuflags"], hooks_dir)
    rules = catalogue.installed_property_rules(hooks_dir)
    assert set(rules) == {"pincpu", "macspoof", "ifacemacspoof", "cpuflags", "sap_agent"}
    assert rules["pincpu"].fullmatch("1-4,^3,6") and not rules["pincpu"].fullmatch("x")


def test_two_hooks_declaring_one_property_accept_either_syntax(hooks_dir):
    catalogue.install(["pincpu"], hooks_dir)
    record = hooks_dir / ".vmhooks-catalogue" / "mine.toml"
    record.write_text('name = "mine"\nsummary = "x"\n[points]\nbefore_vm_start = "a.py"\n'
                      '[[properties]]\nname = "pincpu"\nregex = "^all$"\n')
    rule = catalogue.installed_property_rules(hooks_dir)["pincpu"]
    assert rule.fullmatch("all") and rule.fullmatch("1-2") and not rule.fullmatch("none")


def test_an_unreadable_record_is_an_error_not_silence(hooks_dir):
    catalogue.install(["pincpu"], hooks_dir)
    (hooks_dir / ".vmhooks-catalogue" / "pincpu.toml").write_text("name = [")
    with pytest.raises(VmhooksError, match="catalogue record .*pincpu.toml cannot be read"):
        load_rules(hooks_dir, None)


def test_load_rules_is_none_when_nothing_is_declared(hooks_dir):
    assert load_rules(hooks_dir, None) is None
    assert load_rules(hooks_dir, "  ") is None
    assert load_rules(hooks_dir / "missing", None) is None
    catalogue.install(["nestedvt"], hooks_dir)  # declares no property
    assert load_rules(hooks_dir, None) is None


def test_load_rules_merges_admin_definitions_which_win(hooks_dir):
    catalogue.install(["pincpu"], hooks_dir)
    rules = load_rules(hooks_dir, "pincpu=^all$;sla=^(gold|silver)$")
    assert set(rules) == {"pincpu", "sla"}
    assert rules["pincpu"].fullmatch("all") and not rules["pincpu"].fullmatch("1-2")
    with pytest.raises(InvalidEnvironmentError, match="not of the form name=regex"):
        load_rules(hooks_dir, "just-a-word")


def test_a_bad_value_is_refused_before_any_hook_runs(hooks_dir, make_hook, seed_xml):
    catalogue.install(["pincpu"], hooks_dir)
    marker = make_hook("before_vm_start", "10_marker", 'touch "$0.ran"\n')
    config = RunnerConfig(hooks_dir, property_rules=load_rules(hooks_dir, None))
    with pytest.raises(InvalidEnvironmentError, match="pincpu='1-4;reboot' does not match its declared regex"):
        run_chain("before_vm_start", seed_xml, config, custom={"pincpu": "1-4;reboot"})
    assert not Path(f"{marker}.ran").exists()


def test_undeclared_properties_are_allowed_with_a_warning(hooks_dir, seed_xml):
    catalogue.install(["pincpu"], hooks_dir)
    config = RunnerConfig(hooks_dir, property_rules=load_rules(hooks_dir, None))
    result = run_chain("before_vm_start", seed_xml, config, custom={"pincpu": "0", "myprop": "x"})
    assert not result.failed
    assert result.warnings == ("custom property 'myprop' is declared by no installed hook or admin rule",)


def test_device_properties_are_checked_at_device_points(hooks_dir):
    catalogue.install(["extnet"], hooks_dir)
    config = RunnerConfig(hooks_dir, property_rules=load_rules(hooks_dir, None))
    with pytest.raises(InvalidEnvironmentError, match="extnet='a/b'"):
        run_chain("before_device_create", "<interface type='bridge'/>", config, custom={"extnet": "a/b"})


# --- the CLI ----------------------------------------------------------------


def test_cli_list(hooks_dir, capsys):
    catalogue.install(["pincpu"], hooks_dir)
    assert main(["catalogue", "list", "--hooks-dir", str(hooks_dir)]) == 0
    out = capsys.readouterr().out
    assert "* pincpu" in out and "  cantmigrate" in out
    assert "points: before_vm_start, before_device_create, before_nic_hotplug" in out  # macspoof
    assert "properties: extnet (device)" in out
    assert f"* = installed under {hooks_dir}; (device) = a device custom property" in out
    assert main(["catalogue", "list", "--json", "--hooks-dir", str(hooks_dir)]) == 0
    listed = {h["name"]: h for h in json.loads(capsys.readouterr().out)}
    assert set(listed) == EXPECTED and listed["pincpu"]["installed"] is True
    assert listed["cpuflags"]["properties"][1]["name"] == "sap_agent"


def test_cli_show(capsys):
    assert main(["catalogue", "show", "httpsisoboot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# httpsisoboot") and "manifest.toml" in out and "[[properties]]" in out


def test_cli_install_reports_and_uninstall(hooks_dir, capsys):
    assert main(["catalogue", "install", "pincpu", "numa", "--hooks-dir", str(hooks_dir)]) == 0
    out = capsys.readouterr().out
    assert "pincpu         created    before_vm_start/50_pincpu" in out
    assert "(shared)       created    before_vm_start/vmhooks_catalogue.py" in out
    assert "5 file(s) changed" in out
    assert main(["catalogue", "install", "pincpu", "--hooks-dir", str(hooks_dir)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert main(["catalogue", "uninstall", "numa", "--hooks-dir", str(hooks_dir)]) == 0
    assert "numa           removed    before_vm_start/50_numa" in capsys.readouterr().out


def test_cli_install_errors(hooks_dir, capsys):
    assert main(["catalogue", "install", "--hooks-dir", str(hooks_dir)]) == 2
    assert "name the hooks to install" in capsys.readouterr().err
    assert main(["catalogue", "install", "nope", "--hooks-dir", str(hooks_dir)]) == 2
    assert "no catalogue hook named 'nope'" in capsys.readouterr().err
    catalogue.install(["pincpu"], hooks_dir)
    (hooks_dir / "before_vm_start" / "50_pincpu").write_text("#!/bin/sh\n")
    assert main(["catalogue", "install", "pincpu", "--hooks-dir", str(hooks_dir)]) == 2
    assert "use --force" in capsys.readouterr().err
    assert main(["catalogue", "install", "pincpu", "--force", "--hooks-dir", str(hooks_dir)]) == 0


def test_cli_install_uses_the_hooks_dir_from_the_environment(hooks_dir, monkeypatch, capsys):
    monkeypatch.setenv("VMHOOKS_HOOKS_DIR", str(hooks_dir))
    assert main(["catalogue", "install", "smartcard"]) == 0
    assert (hooks_dir / "before_vm_start" / "50_smartcard").exists()


def test_cli_properties_prints_ovirt_engine_config_forms(hooks_dir, capsys):
    catalogue.install(["pincpu", "extnet", "macspoof"], hooks_dir)
    assert main(["catalogue", "properties", "--hooks-dir", str(hooks_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# UserDefinedVMProperties"
    assert lines[1].startswith("macspoof=^") and ";pincpu=^" in lines[1]
    assert lines[2].startswith("# CustomDeviceProperties")
    assert lines[3].startswith("{type=interface;prop={extnet=^") and "ifacemacspoof=" in lines[3]
    assert main(["catalogue", "properties", "hugepages"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "hugepages=^[0-9]+$"


def test_cli_hooks_run_checks_properties(hooks_dir, capsys, tmp_path):
    xml = tmp_path / "vm.xml"
    xml.write_text((Path(__file__).parent / "data" / "seed-domain.xml").read_text())
    catalogue.install(["pincpu"], hooks_dir)
    base = ["hooks", "run", "before_vm_start", "--hooks-dir", str(hooks_dir), "--xml", str(xml)]
    assert main([*base, "--prop", "pincpu=bad"]) == 2
    assert "custom property pincpu='bad' does not match its declared regex" in capsys.readouterr().err
    assert main([*base, "--prop", "pincpu=1", "--prop", "sla=gold"]) == 0
    assert "warning: custom property 'sla' is declared by no installed hook" in capsys.readouterr().out
    assert main([*base, "--prop", "pincpu=1", "--prop", "sla=gold", "--properties", "sla=^(gold|silver)$"]) == 0
    assert "warning" not in capsys.readouterr().out
    assert main([*base, "--prop", "sla=bronze", "--properties", "sla=^(gold|silver)$"]) == 2
    assert "sla='bronze' does not match" in capsys.readouterr().err
