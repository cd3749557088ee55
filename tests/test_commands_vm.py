"""The `vm`, `history` and `host` subcommands against a real agent process,
run as a user types them."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from agentproc import VMHOOKS, AgentProcess, domain_xml


@pytest.fixture
def agent(tmp_path: Path, hooks_dir: Path, make_hook):
    make_hook("before_vm_start", "50_pin", "sed -i \"s|<vcpu placement='static'>|<vcpu placement='static' cpuset='$pincpu'>|\" \"$_hook_domxml\"")
    make_hook("before_vm_pause", "50_guard", 'if [ -n "$nopause" ]; then echo "pausing $vmId is forbidden" >&2; exit 2; fi')
    process = AgentProcess(tmp_path / "agent", hooks_dir).start()
    yield process
    process.stop()


def vmhooks(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VMHOOKS, *args, "--socket", str(agent.socket)], capture_output=True, text=True, timeout=60)


def test_vm_commands_by_name_and_uuid(agent, tmp_path):
    vm_id = str(uuid.uuid4())
    xml = tmp_path / "vm.xml"
    xml.write_text(domain_xml("cli-vm", vm_id))
    created = vmhooks(agent, "vm", "create", str(xml), "--prop", "pincpu=0-1", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["vmId"] == vm_id
    listing = vmhooks(agent, "vm", "list")
    assert "cli-vm" in listing.stdout and vm_id in listing.stdout and "pincpu=0-1" in listing.stdout
    assert vmhooks(agent, "vm", "pause", "cli-vm").stdout.strip() == f"cli-vm ({vm_id}): paused"
    assert vmhooks(agent, "vm", "cont", vm_id).returncode == 0
    stats = vmhooks(agent, "vm", "stats", "cli-vm", "--json")
    assert json.loads(stats.stdout)["statsList"][0]["vcpuCount"] == "2"
    history = vmhooks(agent, "history", "--vm", "cli-vm")
    assert "before_vm_start" in history.stdout and "50_pin" in history.stdout and "yes" in history.stdout
    diff = vmhooks(agent, "history", "--point", "before_vm_start", "--diff")
    assert "cpuset=\"0-1\"" in diff.stdout
    assert vmhooks(agent, "vm", "destroy", "cli-vm").returncode == 0
    assert vmhooks(agent, "vm", "list").stdout.strip() == "no VMs"


def test_errors_are_one_line(agent, tmp_path):
    vm_id = str(uuid.uuid4())
    xml = tmp_path / "vm.xml"
    xml.write_text(domain_xml("guarded", vm_id))
    assert vmhooks(agent, "vm", "create", str(xml), "--prop", "pincpu=0", "--prop", "nopause=1").returncode == 0
    refused = vmhooks(agent, "vm", "pause", "guarded")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert "50_guard failed (exit 2, chain stopped)" in refused.stderr and "forbidden" in refused.stderr
    missing = vmhooks(agent, "vm", "pause", "no-such-vm")
    assert missing.returncode == 2 and missing.stderr.strip() == "vmhooks: no VM named 'no-such-vm' or with a UUID starting with it"
    unreadable = vmhooks(agent, "vm", "create", str(tmp_path / "absent.xml"))
    assert unreadable.returncode == 2 and "cannot read domain XML" in unreadable.stderr


def test_host_caps(agent):
    caps = vmhooks(agent, "host", "caps", "--json")
    data = json.loads(caps.stdout)
    assert data["hooks"]["before_vm_start"]["50_pin"]["checksum"]
    assert data["libvirtUri"] == "test:///default"
    human = vmhooks(agent, "host", "caps")
    assert "before_vm_start/50_pin" in human.stdout


def test_no_agent_is_one_clear_line(tmp_path):
    result = subprocess.run([*VMHOOKS, "vm", "list", "--socket", str(tmp_path / "none.sock")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("vmhooks: no agent at") and result.stderr.count("\n") == 1


def test_match_vm_by_uuid_name_or_prefix():
    from vmhooks.commands.common import match_vm
    from vmhooks.errors import UsageError

    vms = [("3573e29e-5de9-468a-9fae-16050c6b3dcc", "web"), ("3573e29e-0000-468a-9fae-16050c6b3dcc", "db"),
           ("8b1f0c7e-5de9-468a-9fae-16050c6b3dcc", "web2")]
    assert match_vm("web", vms) == vms[0][0]
    assert match_vm("8b1f0c7e", vms) == vms[2][0]
    assert match_vm("3573E29E-5DE9-468A-9FAE-16050C6B3DCC", vms) == vms[0][0]
    with pytest.raises(UsageError, match="could be 2 VMs: .*3573e29e-0000.*3573e29e-5de9"):
        match_vm("3573e29e", vms)
    with pytest.raises(UsageError, match="at least 8 characters"):
        match_vm("8b1f", vms)
    with pytest.raises(UsageError, match="no VM named 'nope'"):
        match_vm("nope", vms)


# --- every API method on the command line ---------------------------------------------


def test_every_action_has_help_with_an_example():
    from vmhooks.cli import build_parser

    def actions(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from actions(sub, [*path, name])
                return
        yield path

    commands = [path for path in actions(build_parser(), []) if path[0] in ("vm", "host", "hooks", "catalogue")]
    assert ["vm", "hotplug-memory"] in commands and ["vm", "set-ticket"] in commands and ["hooks", "points"] in commands
    for path in commands:
        done = subprocess.run([*VMHOOKS, *path, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "example" in done.stdout and f"vmhooks {' '.join(path)}" in done.stdout.split("example")[-1], path


def test_xml_and_set_cpus_by_name_and_uuid_prefix(agent, tmp_path, make_hook):
    make_hook("before_set_num_of_cpus", "50_log", f'echo "$vmId" >> {tmp_path}/cpus.log')
    vm_id = str(uuid.uuid4())
    (tmp_path / "vm.xml").write_text(domain_xml("cpu-vm", vm_id))
    assert vmhooks(agent, "vm", "create", str(tmp_path / "vm.xml"), "--prop", "pincpu=0").returncode == 0
    xml = vmhooks(agent, "vm", "xml", vm_id[:8])
    assert xml.returncode == 0 and ET.fromstring(xml.stdout).findtext("uuid") == vm_id
    assert json.loads(vmhooks(agent, "vm", "xml", "cpu-vm", "--json").stdout)["vmId"] == vm_id
    done = vmhooks(agent, "vm", "set-cpus", vm_id[:13], "1")
    assert done.stdout.strip() == f"cpu-vm ({vm_id}): 1 vCPUs, up", done.stderr
    assert (tmp_path / "cpus.log").read_text().split() == [vm_id]
    live = ET.fromstring(vmhooks(agent, "vm", "xml", "cpu-vm").stdout)
    assert live.find("vcpu").get("current") == "1"


DEVICES = {
    "hotplug-nic": ("before_nic_hotplug", "<interface type='bridge'><mac address='52:54:00:00:00:99'/><source bridge='br1'/></interface>"),
    "hotunplug-nic": ("before_nic_hotunplug", "<interface type='bridge'><mac address='52:54:00:12:34:56'/></interface>"),
    "hotplug-disk": ("before_disk_hotplug", "<disk type='file' device='disk'><source file='/x.img'/><target dev='vdb' bus='virtio'/></disk>"),
    "hotunplug-disk": ("before_disk_hotunplug", "<disk type='file' device='disk'><target dev='vda' bus='virtio'/></disk>"),
    "update-device": ("before_update_device", "<interface type='bridge'><mac address='52:54:00:12:34:56'/><link state='down'/></interface>"),
    "hotplug-memory": ("before_memory_hotplug", "<memory model='dimm'><target><size unit='MiB'>128</size><node>0</node></target></memory>"),
}


@pytest.mark.parametrize("action", sorted(DEVICES))
def test_device_actions_run_their_hooks_with_the_device_properties(agent, tmp_path, make_hook, action):
    """libvirt's test driver has no device hotplug: the agent runs the before
    point with the properties given, then reports the driver's refusal (code 5)."""
    point, device = DEVICES[action]
    make_hook(point, "50_log", f'echo "{point} $vmId $speed" >> {tmp_path}/devices.log')
    vm_id = str(uuid.uuid4())
    (tmp_path / "vm.xml").write_text(domain_xml("dev-vm", vm_id))
    (tmp_path / "device.xml").write_text(device)
    assert vmhooks(agent, "vm", "create", str(tmp_path / "vm.xml"), "--prop", "pincpu=0").returncode == 0
    done = vmhooks(agent, "vm", action, "dev-vm", str(tmp_path / "device.xml"), "--prop", "speed=fast", "--json")
    assert done.returncode == 1 and done.stderr == ""
    error = json.loads(done.stdout)["error"]
    assert error["code"] == 5 and "not supported by this libvirt driver" in error["message"]
    assert (tmp_path / "devices.log").read_text().split() == [point, vm_id, "fast"]
    text = vmhooks(agent, "vm", action, vm_id[:8], str(tmp_path / "device.xml"))
    assert text.returncode == 1 and text.stdout == "" and text.stderr.count("\n") == 1
    assert text.stderr.startswith("vmhooks: ") and "not supported" in text.stderr


def test_set_ticket_reads_the_password_from_stdin_and_passes_params(agent, tmp_path, make_hook):
    make_hook("before_vm_set_ticket", "50_log", f'echo "$userName" >> {tmp_path}/ticket.log')
    vm_id = str(uuid.uuid4())
    (tmp_path / "vm.xml").write_text(domain_xml("vnc-vm", vm_id))
    assert vmhooks(agent, "vm", "create", str(tmp_path / "vm.xml"), "--prop", "pincpu=0").returncode == 0
    command = [*VMHOOKS, "vm", "set-ticket", "vnc-vm", "--password-file", "-", "--ttl", "60",
               "--param", "userName=admin", "--socket", str(agent.socket), "--json"]  # fmt: skip
    done = subprocess.run(command, input="s3cret\n", capture_output=True, text=True, timeout=60)
    # The test driver cannot update a live display: the hook ran, libvirt refused.
    assert done.returncode == 1 and json.loads(done.stdout)["error"]["code"] == 5
    assert (tmp_path / "ticket.log").read_text().split() == ["admin"]
    empty = subprocess.run([*command[:-1]], input="\n", capture_output=True, text=True, timeout=60)
    assert empty.returncode == 2 and empty.stderr == "vmhooks: the password is empty\n"


def test_device_prop_takes_a_mac_address(agent, tmp_path, make_hook):
    make_hook("before_device_create", "50_log", f'echo "$extnet" >> {tmp_path}/device.log')
    vm_id = str(uuid.uuid4())
    (tmp_path / "vm.xml").write_text(domain_xml("mac-vm", vm_id))
    done = vmhooks(agent, "vm", "create", str(tmp_path / "vm.xml"), "--prop", "pincpu=0",
                   "--device-prop", "52:54:00:12:34:56:extnet=a:b=c")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "device.log").read_text().split() == ["a:b=c"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prop", "flag"], "--prop 'flag': expected NAME=VALUE (NAME= for an empty value)"),
        (["--prop", "a=1", "--prop", "a=2"], "--prop 'a' is given twice"),
        (["--device-prop", "vda:x=1", "--device-prop", "vda:x=2"], "--device-prop 'x' is given twice for device 'vda'"),
        (["--device-prop", "extnet=1"], "--device-prop 'extnet=1': expected DEVICE:NAME=VALUE"),
        (["--device-prop", "vda:x"], "--device-prop 'vda:x': expected DEVICE:NAME=VALUE"),
    ],
)
def test_bad_properties_are_refused_before_the_agent_is_asked(tmp_path, args, message):
    (tmp_path / "vm.xml").write_text(domain_xml("x", str(uuid.uuid4())))
    done = subprocess.run([*VMHOOKS, "vm", "create", str(tmp_path / "vm.xml"), *args, "--socket", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stderr) == (2, f"vmhooks: {message}\n")


def test_json_errors_keep_the_exit_codes(agent, tmp_path, make_hook):
    missing = vmhooks(agent, "vm", "pause", "no-such-vm", "--json")
    assert missing.returncode == 2 and missing.stderr == ""
    assert json.loads(missing.stdout) == {"error": {"code": 3, "message": "no VM named 'no-such-vm' or with a UUID starting with it"}}
    make_hook("before_vm_pause", "50_no", "echo not now >&2; exit 2")
    vm_id = str(uuid.uuid4())
    (tmp_path / "vm.xml").write_text(domain_xml("json-vm", vm_id))
    assert vmhooks(agent, "vm", "create", str(tmp_path / "vm.xml"), "--prop", "pincpu=0").returncode == 0
    refused = vmhooks(agent, "vm", "pause", "json-vm", "--json")
    error = json.loads(refused.stdout)["error"]
    assert refused.returncode == 1 and error["code"] == 1 and "not now" in error["message"]
    assert error["data"]["scripts"][0]["name"] == "50_no"
    usage = vmhooks(agent, "vm", "pause", "--json")
    assert usage.returncode == 2
    assert json.loads(usage.stdout)["error"]["message"].startswith("vm pause: the following arguments are required: VM")
    nobody = subprocess.run([*VMHOOKS, "host", "stats", "--json", "--socket", str(tmp_path / "none.sock")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert nobody.returncode == 1 and json.loads(nobody.stdout)["error"]["code"] == 7


def test_host_reports_in_human_units(agent, tmp_path):
    vm_id = str(uuid.uuid4())
    (tmp_path / "vm.xml").write_text(domain_xml("stats-vm", vm_id))
    assert vmhooks(agent, "vm", "create", str(tmp_path / "vm.xml"), "--prop", "pincpu=0").returncode == 0
    raw = json.loads(vmhooks(agent, "host", "stats", "--json").stdout)
    text = dict(line.split(None, 1) for line in vmhooks(agent, "host", "stats").stdout.splitlines()[1:])
    assert set(text) >= set(raw)  # every field, whatever the payload's shape
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"
    human_duration = r"0 s|\d+ (us|ms)|\d+\.\d s|\d+[mhd] \d\d[smh]"
    times = [name for name in raw if "time" in name.lower()]
    assert times, raw
    for name in times:  # points in time in ISO 8601, durations in human units
        assert re.fullmatch(iso, text[name]) or re.fullmatch(human_duration, text[name]), (name, text[name])
    assert any(re.fullmatch(iso, text[name]) for name in times)
    vm_stats = dict(line.split(None, 1) for line in vmhooks(agent, "vm", "stats", "stats-vm").stdout.splitlines()[1:])
    assert re.fullmatch(human_duration, vm_stats["elapsedTime"]), vm_stats
    assert "disks.vda.readLatency" in vm_stats  # nested fields as dotted names
    all_stats = vmhooks(agent, "host", "all-vm-stats")
    assert "stats-vm" in all_stats.stdout and vm_id in all_stats.stdout
    assert vmhooks(agent, "host", "hooks").stdout.splitlines()[1].strip().startswith("before_vm_pause/50_guard  sha256:")
