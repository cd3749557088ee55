"""The sidecar's calls as hook points, in-process (no gRPC): real hook
processes, the real catalogue hooks, the real store, libvirt's test driver
to check that the answer defines."""
from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from agentproc import hook_runs
from conftest import MakeHook
from sidecarproc import DOMAIN_XML, VMI_JSON, vmi_json
from vmhooks.cli import main as cli
from vmhooks.errors import HookError, UsageError
from vmhooks.history import Filters
from vmhooks.kubevirt.sidecar import JsonLines, Sidecar, SidecarSettings

UID = "9b2c1f4e-3a6d-4e8b-9c1d-2f3e4a5b6c7d"
CLOUD_INIT = {
    "DataSource": "noCloud",
    "NoCloudMetaData": {"instance-id": "fedora-hooks.default"},
    "ConfigDriveMetaData": None,
    "UserData": "#cloud-config\npassword: fedora\n",
    "NetworkData": "",
    "DevicesData": None,
    "VolumeName": "cloudinitdisk",
}
NO_CLOUD = {"userData": "#cloud-config\npassword: fedora\n"}


class Events(list[dict[str, Any]]):
    def __call__(self, event: dict[str, Any]) -> None:
        self.append(dict(event))


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_sidecar(tmp_path: Path, hooks_dir: Path, events: Events) -> Iterator[Callable[..., Sidecar]]:
    made: list[Sidecar] = []

    def make(**overrides: Any) -> Sidecar:
        sidecar = Sidecar(SidecarSettings(hooks_dir=hooks_dir, socket_dir=tmp_path / "sockets", **overrides), events)
        made.append(sidecar)
        return sidecar

    yield make
    for sidecar in made:
        sidecar.close()


@pytest.fixture
def catalogue_hooks(hooks_dir: Path) -> Path:
    assert cli(["catalogue", "install", "pincpu", "hugepages", "extnet", "--hooks-dir", str(hooks_dir)]) == 0
    return hooks_dir


def later(seconds: float = 60.0) -> float:
    return time.monotonic() + seconds


def test_define_domain_runs_the_catalogue_hooks_and_libvirt_takes_the_answer(
    catalogue_hooks: Path, make_sidecar: Callable[..., Sidecar], events: Events
) -> None:
    answer = make_sidecar().define_domain(DOMAIN_XML, VMI_JSON, later())
    root = ET.fromstring(answer)
    assert root.find("vcpu").get("cpuset") == "0-1"  # pincpu=0-1
    assert root.find("memoryBacking/hugepages") is not None  # hugepages=1024
    interface = root.find("devices/interface")
    assert interface.get("type") == "network" and interface.find("source").get("network") == "ovs-net"
    assert interface.find("model").get("type") == "virtio-non-transitional"  # the rest of the device kept
    assert root.find("{http://kubevirt.io}metadata") is None
    assert root.find("metadata/{http://kubevirt.io}kubevirt/{http://kubevirt.io}uid").text == UID
    conn = libvirt.open("test:///default")
    try:
        domain = conn.defineXML(answer.decode())
        assert domain.UUIDString() == "5e1a1b8c-7d1f-5b63-9a3e-6d2f0c4b8e11"
        assert 'cpuset="0-1"' in domain.XMLDesc(0).replace("'", '"')
        domain.undefine()
    finally:
        conn.close()
    points = [(event["point"], [s["name"] for s in event["scripts"]]) for event in events if "point" in event]
    assert points == [("before_device_create", ["50_extnet"]), ("before_vm_start", ["50_hugepages", "50_pincpu"])]


def test_same_input_same_output(catalogue_hooks: Path, make_sidecar: Callable[..., Sidecar]) -> None:
    sidecar = make_sidecar()
    first = sidecar.define_domain(DOMAIN_XML, VMI_JSON, later())
    assert sidecar.define_domain(DOMAIN_XML, VMI_JSON, later()) == first
    assert make_sidecar().define_domain(DOMAIN_XML, VMI_JSON, later()) == first


def test_no_hooks_no_properties_gives_the_xml_back_byte_for_byte(make_sidecar: Callable[..., Sidecar]) -> None:
    vmi = vmi_json(drop=("vmhooks.io/custom", "vmhooks.io/deviceCustom"))
    assert make_sidecar().define_domain(DOMAIN_XML, vmi, later()) == DOMAIN_XML


def test_hooks_get_vmid_and_properties_and_every_chain_is_recorded(
    make_hook: MakeHook, make_sidecar: Callable[..., Sidecar], marks: Path
) -> None:
    make_hook("before_vm_start", "10_env", f'echo "$vmId $pincpu $extnet" > {marks}/vm\n')
    make_hook("before_device_create", "10_env", f'echo "$vmId $extnet $pincpu" > {marks}/dev\n')
    sidecar = make_sidecar()
    sidecar.define_domain(DOMAIN_XML, VMI_JSON, later())
    assert (marks / "vm").read_text() == f"{UID} 0-1 \n"  # the VM's properties, not the device's
    assert (marks / "dev").read_text() == f"{UID} ovs-net \n"
    page = sidecar.store.history(Filters(vm_id=UID))
    history = hook_runs(page)
    assert [(row["operation"], row["point"], row["script"]) for row in history] == [
        ("OnDefineDomain", "before_device_create", "10_env"),
        ("OnDefineDomain", "before_vm_start", "10_env"),
    ]
    # named as `vmhooks history --vm` finds it, and who asked
    assert {(o["vm_name"], o["caller"]) for o in page["operations"]} == {("default/fedora-hooks", "kubevirt virt-launcher")}


def test_failing_hook_names_the_script_and_its_stderr(
    make_hook: MakeHook, make_sidecar: Callable[..., Sidecar], events: Events
) -> None:
    make_hook("before_vm_start", "20_refuse", "echo 'no hugepages on this node' >&2\nexit 1\n")
    with pytest.raises(HookError) as caught:
        make_sidecar().define_domain(DOMAIN_XML, VMI_JSON, later())
    assert str(caught.value) == "before_vm_start: 20_refuse failed (exit 1): no hugepages on this node"
    assert events[-1]["level"] == "error" and events[-1]["aborted"] is True


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"vmhooks.io/custom": "{not json"}, "annotation vmhooks.io/custom is not valid JSON"),
        ({"vmhooks.io/custom": "[1, 2]"}, "annotation vmhooks.io/custom is not a JSON object"),
        ({"vmhooks.io/custom": {"LD_PRELOAD": "/tmp/x.so"}}, "custom property name 'LD_PRELOAD' is reserved"),
        ({"vmhooks.io/custom": {"pincpu": "all of them"}}, "pincpu='all of them' does not match its declared regex"),
        ({"vmhooks.io/custom": {"pincpu": {"a": 1}}}, "'pincpu' must be a string, not dict"),
        ({"vmhooks.io/deviceCustom": {"ua-default": {"extnet": "a/b"}}}, "extnet='a/b' does not match"),
        ({"vmhooks.io/deviceCustom": {"ua-nope": {"extnet": "x"}}}, "no device with that alias, MAC or target dev"),
        ({"vmhooks.io/deviceCustom": {"ua-default": "extnet=x"}}, "properties must be a JSON object"),
        (
            {"vmhooks.io/deviceCustom": {"ua-default": {"extnet": "a"}, "02:5E:1A:00:00:01": {"extnet": "b"}}},
            "names the same device as 'ua-default'",
        ),
    ],
)
def test_bad_annotation_is_refused_and_nothing_runs(
    catalogue_hooks: Path,
    make_hook: MakeHook,
    make_sidecar: Callable[..., Sidecar],
    marks: Path,
    annotations: dict[str, Any],
    message: str,
) -> None:
    for point in ("before_device_create", "before_vm_start"):
        make_hook(point, "01_mark", f"touch {marks}/{point}\n")
    sidecar = make_sidecar()
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        sidecar.define_domain(DOMAIN_XML, vmi_json(annotations), later())
    assert list(marks.iterdir()) == []
    assert sidecar.store.history()["operations"] == []


def test_kubevirt_spec_name_gets_a_hint_to_its_alias(make_sidecar: Callable[..., Sidecar]) -> None:
    with pytest.raises(UsageError, match="KubeVirt's alias for it is 'ua-default'"):
        make_sidecar().define_domain(DOMAIN_XML, vmi_json({"vmhooks.io/deviceCustom": {"default": {"x": "1"}}}), later())


@pytest.mark.parametrize(
    ("vmi", "message"),
    [
        (b"", "the VMI is not valid JSON"),
        (b"[]", "the VMI is not a JSON object"),
        (vmi_json(uid=""), "no metadata.uid"),
        (vmi_json(uid="not-a-uuid"), "is not a UUID"),
    ],
)
def test_bad_vmi_is_refused(make_sidecar: Callable[..., Sidecar], vmi: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_sidecar().define_domain(DOMAIN_XML, vmi, later())


@pytest.mark.parametrize(
    ("xml", "message"),
    [(b"<domain", "domain XML is malformed"), (b"<pool/>", "expected <domain>"), (b"\xff<domain/>", "not UTF-8")],
)
def test_bad_domain_xml_is_refused(make_sidecar: Callable[..., Sidecar], xml: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_sidecar().define_domain(xml, VMI_JSON, later())


def test_hook_that_renames_the_domain_is_refused(make_hook: MakeHook, make_sidecar: Callable[..., Sidecar]) -> None:
    make_hook("before_vm_start", "50_rename", 'sed -i "s/default_fedora-hooks/other/" "$_hook_domxml"\n')
    with pytest.raises(HookError, match="output rejected: 50_rename changed the domain <name>"):
        make_sidecar().define_domain(DOMAIN_XML, VMI_JSON, later())


def test_deadline_passed_runs_nothing(make_hook: MakeHook, make_sidecar: Callable[..., Sidecar], marks: Path) -> None:
    make_hook("before_vm_start", "10_mark", f"touch {marks}/ran\n")
    with pytest.raises(HookError, match="deadline"):
        make_sidecar().define_domain(DOMAIN_XML, VMI_JSON, time.monotonic() - 1)
    assert not (marks / "ran").exists()


# -- PreCloudInitIso -----------------------------------------------------------


def test_cloud_init_without_hooks_comes_back_untouched(make_sidecar: Callable[..., Sidecar]) -> None:
    data, source = json.dumps(CLOUD_INIT, indent=3).encode(), json.dumps(NO_CLOUD).encode()
    assert make_sidecar().pre_cloud_init_iso(data, source, VMI_JSON, later()) == (data, source)


def test_cloud_init_hook_edits_the_data_and_the_legacy_source_follows(
    make_hook: MakeHook, make_sidecar: Callable[..., Sidecar]
) -> None:
    make_hook(
        "before_cloudinit_iso",
        "50_ssh",
        """
        import json, os, hooking
        data = hooking.read_json()
        data["UserData"] += "ssh_pwauth: true\\n# pincpu=%s vmId=%s\\n" % (os.environ["pincpu"], os.environ["vmId"])
        hooking.write_json(data)
        """,
        lang="python",
    )
    data, source = make_sidecar().pre_cloud_init_iso(
        json.dumps(CLOUD_INIT).encode(), json.dumps(NO_CLOUD).encode(), VMI_JSON, later()
    )
    edited = json.loads(data)
    assert edited["UserData"] == f"#cloud-config\npassword: fedora\nssh_pwauth: true\n# pincpu=0-1 vmId={UID}\n"
    assert edited["NoCloudMetaData"] == CLOUD_INIT["NoCloudMetaData"]
    assert json.loads(source) == {"userData": edited["UserData"], "networkData": ""}


def test_cloud_init_from_an_old_launcher_edits_the_nocloud_source(
    make_hook: MakeHook, make_sidecar: Callable[..., Sidecar]
) -> None:
    make_hook("before_cloudinit_iso", "50_edit", """
        import hooking
        data = hooking.read_json()
        data["userData"] = "#cloud-config\\n"
        hooking.write_json(data)
        """, lang="python")  # fmt: skip
    data, source = make_sidecar().pre_cloud_init_iso(b"", json.dumps(NO_CLOUD).encode(), VMI_JSON, later())
    assert data == b"" and json.loads(source) == {"userData": "#cloud-config\n"}


def test_cloud_init_hook_must_leave_an_object(make_hook: MakeHook, make_sidecar: Callable[..., Sidecar]) -> None:
    make_hook("before_cloudinit_iso", "50_list", 'echo "[1]" > "$_hook_json"\n')
    with pytest.raises(HookError, match="left a JSON list, not an object"):
        make_sidecar().pre_cloud_init_iso(json.dumps(CLOUD_INIT).encode(), b"{}", VMI_JSON, later())


def test_cloud_init_failing_hook_fails_the_call(make_hook: MakeHook, make_sidecar: Callable[..., Sidecar]) -> None:
    make_hook("before_cloudinit_iso", "50_fail", "echo nope >&2; exit 1\n")
    with pytest.raises(HookError, match="before_cloudinit_iso: 50_fail failed \\(exit 1\\): nope"):
        make_sidecar().pre_cloud_init_iso(json.dumps(CLOUD_INIT).encode(), b"{}", VMI_JSON, later())


def test_cloud_init_data_that_is_not_json_is_refused(make_sidecar: Callable[..., Sidecar]) -> None:
    with pytest.raises(UsageError, match="the cloud-init data is not valid JSON"):
        make_sidecar().pre_cloud_init_iso(b"{", b"{}", VMI_JSON, later())


# -- Shutdown ----------------------------------------------------------------------


def test_shutdown_runs_after_vm_destroy_on_the_defined_domain_even_after_a_restart(
    catalogue_hooks: Path, make_hook: MakeHook, make_sidecar: Callable[..., Sidecar], marks: Path
) -> None:
    make_hook("after_vm_destroy", "10_seen", f'cp "$_hook_domxml" {marks}/xml; echo "$vmId $pincpu" > {marks}/env\n')
    answer = make_sidecar().define_domain(DOMAIN_XML, VMI_JSON, later())
    restarted = make_sidecar()  # a new container process, the same emptyDir
    restarted.shutdown(later())
    assert (marks / "xml").read_bytes() == answer
    assert (marks / "env").read_text() == f"{UID} 0-1\n"
    (marks / "env").unlink()
    restarted.shutdown(later())  # once only
    make_sidecar().shutdown(later())
    assert not (marks / "env").exists()


def test_shutdown_without_a_domain_runs_nothing(
    make_hook: MakeHook, make_sidecar: Callable[..., Sidecar], marks: Path, events: Events
) -> None:
    make_hook("after_vm_destroy", "10_seen", f"touch {marks}/ran\n")
    make_sidecar().shutdown(later())
    assert not (marks / "ran").exists()
    assert "after_vm_destroy not run" in events[-1]["msg"]


def test_a_failing_after_vm_destroy_does_not_fail_shutdown(
    make_hook: MakeHook, make_sidecar: Callable[..., Sidecar], events: Events
) -> None:
    make_hook("after_vm_destroy", "10_fail", "exit 1\n")
    sidecar = make_sidecar()
    sidecar.define_domain(DOMAIN_XML, vmi_json(drop=("vmhooks.io/custom", "vmhooks.io/deviceCustom")), later())
    sidecar.shutdown(later())
    assert events[-1]["point"] == "after_vm_destroy" and events[-1]["level"] == "warning"


# -- logging ---------------------------------------------------------------------------


def test_json_lines_are_one_object_a_line(tmp_path: Path) -> None:
    path = tmp_path / "out"
    with open(path, "w") as stream:
        emit = JsonLines(stream)
        emit({"msg": "a\nb", "level": "error", "call": "X"})
        emit({"msg": "c"})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["msg"], line["level"], line["component"]) for line in lines] == [
        ("a\nb", "error", "vmhooks-kubevirt-sidecar"),
        ("c", "info", "vmhooks-kubevirt-sidecar"),
    ]
    assert lines[0]["timestamp"].endswith("Z")


def test_admin_rules_are_checked(make_sidecar: Callable[..., Sidecar]) -> None:
    sidecar = make_sidecar(properties="site=^[a-z]+$")
    with pytest.raises(UsageError, match="site='Paris' does not match"):
        sidecar.define_domain(DOMAIN_XML, vmi_json({"vmhooks.io/custom": {"site": "Paris"}}), later())
    with pytest.raises(UsageError, match="is not of the form name=regex"):
        make_sidecar(properties="not a rule")


def test_a_hook_linked_to_where_kubevirt_mounts_a_configmap(
    hooks_dir: Path, tmp_path: Path, make_sidecar: Callable[..., Sidecar], marks: Path
) -> None:
    # The image links before_vm_start/90_configmap to /usr/bin/onDefineDomain,
    # where KubeVirt mounts a sidecar's ConfigMap key (mode 0755).
    mount = tmp_path / "usr-bin"
    mount.mkdir(mode=0o755)
    (hooks_dir / "before_vm_start").mkdir(mode=0o755)
    (hooks_dir / "before_vm_start" / "90_configmap").symlink_to(mount / "onDefineDomain")
    plain = vmi_json(drop=("vmhooks.io/custom", "vmhooks.io/deviceCustom"))
    sidecar = make_sidecar()
    assert sidecar.define_domain(DOMAIN_XML, plain, later()) == DOMAIN_XML  # no ConfigMap: the link dangles
    script = mount / "onDefineDomain"
    script.write_text(f"#!/bin/sh\necho \"$vmId\" > {marks}/ran\n")
    script.chmod(0o755)
    sidecar.define_domain(DOMAIN_XML, plain, later())
    assert (marks / "ran").read_text() == f"{UID}\n"
