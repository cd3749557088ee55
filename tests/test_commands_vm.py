"""The `vm`, `history` and `host` subcommands against a real agent process."""
from __future__ import annotations

import json
import subprocess
import uuid
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
