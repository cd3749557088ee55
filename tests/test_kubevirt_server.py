"""A real `vmhooks kubevirt-sidecar` process and a gRPC client playing
virt-launcher: Info, both Callbacks versions, errors and deadlines,
concurrency, Shutdown, the socket's life."""
from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import libvirt
import pytest

from conftest import MakeHook
from sidecarproc import Launcher, SidecarProcess, vmi_json
from vmhooks.cli import main as cli
from vmhooks.kubevirt.server import ANSWER_MARGIN, call_deadline

UID = "9b2c1f4e-3a6d-4e8b-9c1d-2f3e4a5b6c7d"


@pytest.fixture
def sidecars(tmp_path: Path, hooks_dir: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """make(*extra_args, name=...) -> a sidecar in the test's pod directory,
    not started; every one still running is stopped afterwards, pass or fail."""
    made: list[SidecarProcess] = []

    def make(*extra: str, name: str = "vmhooks") -> SidecarProcess:
        made.append(SidecarProcess(tmp_path / "pod", hooks_dir, *extra, name=name))
        return made[-1]

    yield make
    for process in made:
        if process.proc is not None and process.proc.poll() is None:
            assert process.stop() == 0, process.output()


@pytest.fixture
def sidecar(sidecars: Callable[..., SidecarProcess]) -> SidecarProcess:
    return sidecars()


@pytest.fixture
def launcher(sidecar: SidecarProcess) -> Iterator[Launcher]:
    client = sidecar.start().launcher()
    yield client
    client.close()


def install_catalogue(hooks_dir: Path) -> None:
    assert cli(["catalogue", "install", "pincpu", "hugepages", "extnet", "--hooks-dir", str(hooks_dir)]) == 0


def test_info_answers_name_versions_and_points(launcher: Launcher) -> None:
    info = launcher.info()  # within virt-launcher's 1 s
    assert info.name == "vmhooks"
    assert list(info.versions) == ["v1alpha2", "v1alpha3"]
    assert [(point.name, point.priority) for point in info.hookPoints] == [
        ("OnDefineDomain", 0), ("PreCloudInitIso", 0), ("Shutdown", 0),
    ]  # fmt: skip


@pytest.mark.parametrize("version", ["v1alpha2", "v1alpha3"])
def test_on_define_domain_applies_the_catalogue_hooks_and_libvirt_defines_it(
    hooks_dir: Path, sidecar: SidecarProcess, version: str
) -> None:
    install_catalogue(hooks_dir)
    launcher = sidecar.start().launcher()
    answer = launcher.on_define_domain(version=version)
    root = ET.fromstring(answer)
    assert root.find("vcpu").get("cpuset") == "0-1"
    assert root.find("memoryBacking/hugepages") is not None
    assert root.find("devices/interface/source").get("network") == "ovs-net"
    conn = libvirt.open("test:///default")
    try:
        conn.defineXML(answer.decode()).undefine()
    finally:
        conn.close()
    assert launcher.on_define_domain(version=version) == answer  # virt-launcher may ask again
    chains = [line for line in sidecar.lines() if line.get("point")]
    assert [(c["call"], c["point"], c["vmId"], c["changed"]) for c in chains[:2]] == [
        ("OnDefineDomain", "before_device_create", UID, True),
        ("OnDefineDomain", "before_vm_start", UID, True),
    ]
    launcher.close()


# Hooks written as upstream VDSM's are (the same imports and idioms: minidom
# through `hooking` or by hand, `from vdsm.hook import hooking`, a namespace
# declared with setAttribute), run unmodified through the sidecar.
UPSTREAM_STYLE = {
    "10_qemucmdline": """
        import json, os, sys, traceback
        import hooking
        if 'qemu_cmdline' in os.environ:
            try:
                domxml = hooking.read_domxml()
                domain = domxml.getElementsByTagName('domain')[0]
                domain.setAttribute('xmlns:qemu', 'http://libvirt.org/schemas/domain/qemu/1.0')
                qctag = domxml.createElement('qemu:commandline')
                for cmd in json.loads(os.environ['qemu_cmdline']):
                    qatag = domxml.createElement('qemu:arg')
                    qatag.setAttribute('value', cmd)
                    qctag.appendChild(qatag)
                domain.appendChild(qctag)
                hooking.write_domxml(domxml)
            except:
                sys.stderr.write('qemu_cmdline: [unexpected error]: %s\\n' % traceback.format_exc())
                sys.exit(2)
        """,
    "20_smbios": """
        import ast, os
        from vdsm.hook import hooking
        if 'smbios' in os.environ:
            domxml = hooking.read_domxml()
            system = domxml.getElementsByTagName('sysinfo')[0].getElementsByTagName('system')[0]
            for key, value in ast.literal_eval(os.environ['smbios']).items():
                entry = domxml.createElement('entry')
                entry.setAttribute('name', key)
                entry.appendChild(domxml.createTextNode(value))
                system.appendChild(entry)
            hooking.write_domxml(domxml)
        """,
    "30_cpuflags": """
        import os
        from xml.dom import minidom
        if 'cpuflags' in os.environ:
            path = os.environ['_hook_domxml']
            with open(path) as f:
                dom = minidom.parse(f)
            cpu = dom.getElementsByTagName('cpu')[0]
            for flag in os.environ['cpuflags'].split(','):
                feature = dom.createElement('feature')
                feature.setAttribute('policy', 'require' if flag[0] == '+' else 'disable')
                feature.setAttribute('name', flag[1:])
                cpu.appendChild(feature)
            with open(path, 'w') as f:
                f.write(dom.toxml())
        """,
    "40_diskunmap": """
        import os
        import hooking
        if os.environ.get('diskunmap') == 'on':
            domxml = hooking.read_domxml()
            for disk in domxml.getElementsByTagName('disk'):
                if disk.getAttribute('device') in ('disk', 'lun'):
                    disk.getElementsByTagName('driver')[0].setAttribute('discard', 'unmap')
                    disk.getElementsByTagName('driver')[0].setAttribute('detect_zeroes', 'unmap')
            hooking.write_domxml(domxml)
        """,
}


def test_upstream_style_hooks_edit_the_domain_through_the_sidecar(
    make_hook: MakeHook, sidecar: SidecarProcess
) -> None:
    for name, body in UPSTREAM_STYLE.items():
        make_hook("before_vm_start", name, body, lang="python")
    custom = {
        "qemu_cmdline": '["-device", "pvpanic"]',
        "smbios": "{'serial': 'KV-0001'}",
        "cpuflags": "+vmx,-svm",
        "diskunmap": "on",
    }
    launcher = sidecar.start().launcher()
    answer = launcher.on_define_domain(vmi=vmi_json({"vmhooks.io/custom": custom}, drop=("vmhooks.io/deviceCustom",)))
    launcher.close()
    root = ET.fromstring(answer)
    qemu = "{http://libvirt.org/schemas/domain/qemu/1.0}"
    assert [arg.get("value") for arg in root.findall(f"{qemu}commandline/{qemu}arg")] == ["-device", "pvpanic"]
    assert root.find("sysinfo/system/entry[@name='serial']").text == "KV-0001"
    assert [(f.get("name"), f.get("policy")) for f in root.findall("cpu/feature")] == [("vmx", "require"), ("svm", "disable")]
    assert {d.find("driver").get("detect_zeroes") for d in root.findall("devices/disk")} == {"unmap"}
    chain = next(line for line in sidecar.lines() if line.get("point") == "before_vm_start")
    assert [(s["name"], s["status"], s["changed"]) for s in chain["scripts"]] == [
        (name, "ok", True) for name in UPSTREAM_STYLE
    ]
    conn = libvirt.open("test:///default")
    try:
        conn.defineXML(answer.decode()).undefine()
    finally:
        conn.close()


def test_failing_hook_is_a_grpc_error_naming_script_and_stderr(
    make_hook: MakeHook, launcher: Launcher
) -> None:
    make_hook("before_vm_start", "10_ok", "exit 0\n")
    make_hook("before_vm_start", "20_refuse", "echo 'node has no SR-IOV' >&2\nexit 1\n")
    with pytest.raises(grpc.RpcError) as caught:
        launcher.on_define_domain()
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == "vmhooks: before_vm_start: 20_refuse failed (exit 1): node has no SR-IOV"


def test_hook_timeout_is_a_grpc_error_well_within_the_minute(
    make_hook: MakeHook, sidecars: Callable[..., SidecarProcess]
) -> None:
    make_hook("before_vm_start", "10_hang", "sleep 600\n")
    process = sidecars("--hook-timeout", "1").start()
    launcher = process.launcher()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        launcher.on_define_domain()
    assert time.monotonic() - started < 10
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "10_hang failed (timed out after 1s, killed with every process it started)" in caught.value.details()
    launcher.close()
    assert process.stop() == 0


def test_the_answer_comes_before_the_callers_deadline(make_hook: MakeHook, launcher: Launcher) -> None:
    # The hook's own timeout (30 s) is longer than the call may take: the
    # sidecar cuts it so that virt-launcher hears why, not a bare deadline.
    make_hook("before_vm_start", "10_ok", "exit 0\n")
    make_hook("before_vm_start", "20_hang", "sleep 600\n")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        launcher.on_define_domain(timeout=ANSWER_MARGIN + 2)
    assert time.monotonic() - started < ANSWER_MARGIN + 2
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
    assert "20_hang failed (timed out after" in caught.value.details()


def test_call_deadline_leaves_room_to_answer() -> None:
    now = time.monotonic()
    assert call_deadline(60.0) - now == pytest.approx(55.0, abs=0.5)  # min(budget, 60 - margin)
    assert call_deadline(None) - now == pytest.approx(55.0, abs=0.5)
    assert call_deadline(10.0) - now == pytest.approx(10.0 - ANSWER_MARGIN, abs=0.5)
    assert call_deadline(1.0) <= time.monotonic()  # no time left: no hook starts


def test_twenty_concurrent_calls_are_all_answered_correctly(
    make_hook: MakeHook, launcher: Launcher
) -> None:
    # Each VMI's hook writes its own uid into the XML: answers must not mix.
    make_hook("before_vm_start", "50_tag", """
        import os, hooking
        doc = hooking.read_domxml()
        desc = doc.createElement("description")
        desc.appendChild(doc.createTextNode(os.environ["vmId"] + " " + os.environ["site"]))
        doc.documentElement.appendChild(desc)
        hooking.write_domxml(doc)
        """, lang="python")  # fmt: skip
    uids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(20)]

    def call(uid: str) -> tuple[str, str]:
        vmi = vmi_json({"vmhooks.io/custom": {"site": uid[-4:]}}, uid=uid, drop=("vmhooks.io/deviceCustom",))
        version = "v1alpha2" if uid.endswith(("1", "3", "5")) else "v1alpha3"
        answer = launcher.on_define_domain(vmi=vmi, version=version)
        return uid, ET.fromstring(answer).findtext("description")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(call, uids))
    assert results == [(uid, f"{uid} {uid[-4:]}") for uid in uids]


def test_shutdown_runs_after_vm_destroy_and_the_process_exits_0(
    make_hook: MakeHook, sidecar: SidecarProcess, marks: Path
) -> None:
    make_hook("after_vm_destroy", "10_seen", f'cp "$_hook_domxml" {marks}/xml; echo "$vmId" > {marks}/vmid\n')
    launcher = sidecar.start().launcher()
    answer = launcher.on_define_domain(vmi=vmi_json(drop=("vmhooks.io/deviceCustom",)))
    launcher.shutdown()
    assert sidecar.wait(timeout=10) == 0
    assert (marks / "xml").read_bytes() == answer
    assert (marks / "vmid").read_text() == f"{UID}\n"
    assert not sidecar.socket.exists()
    assert sidecar.lines()[-1]["msg"] == "sidecar stopped"
    launcher.close()


@pytest.mark.parametrize(
    ("annotations", "detail"),
    [
        ({"vmhooks.io/custom": "{not json"}, "annotation vmhooks.io/custom is not valid JSON"),
        ({"vmhooks.io/custom": {"PATH": "/tmp"}}, "custom property name 'PATH' is reserved"),
        ({"vmhooks.io/custom": {"pincpu": "0-1;reboot"}}, "pincpu='0-1;reboot' does not match its declared regex"),
    ],
)
def test_bad_annotation_is_invalid_argument_and_runs_nothing(
    hooks_dir: Path, make_hook: MakeHook, sidecar: SidecarProcess, marks: Path, annotations: dict, detail: str
) -> None:
    install_catalogue(hooks_dir)
    make_hook("before_vm_start", "01_mark", f"touch {marks}/ran\n")
    make_hook("before_device_create", "01_mark", f"touch {marks}/ran\n")
    launcher = sidecar.start().launcher()
    with pytest.raises(grpc.RpcError) as caught:
        launcher.on_define_domain(vmi=vmi_json(annotations))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("vmhooks: ") and detail in caught.value.details()
    assert "\n" not in caught.value.details()
    assert not (marks / "ran").exists()
    launcher.close()


def test_pre_cloud_init_iso_over_grpc(make_hook: MakeHook, launcher: Launcher) -> None:
    data = json.dumps({"DataSource": "noCloud", "UserData": "#cloud-config\n", "NoCloudMetaData": {}}).encode()
    source = json.dumps({"userData": "#cloud-config\n"}).encode()
    assert launcher.pre_cloud_init_iso(data, source) == (data, source)  # no hooks: untouched
    make_hook("before_cloudinit_iso", "50_edit", """
        import hooking
        data = hooking.read_json()
        data["UserData"] += "runcmd: [touch, /etc/edited]\\n"
        hooking.write_json(data)
        """, lang="python")  # fmt: skip
    edited, legacy = launcher.pre_cloud_init_iso(data, source, version="v1alpha2")
    assert json.loads(edited)["UserData"] == "#cloud-config\nruncmd: [touch, /etc/edited]\n"
    assert json.loads(legacy) == {"userData": "#cloud-config\nruncmd: [touch, /etc/edited]\n"}


def test_socket_is_0600_and_removed_on_sigterm(sidecar: SidecarProcess) -> None:
    sidecar.start()
    mode = os.stat(sidecar.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert sidecar.stop() == 0
    assert not sidecar.socket.exists()


def test_socket_mode_can_be_widened(sidecars: Callable[..., SidecarProcess]) -> None:
    process = sidecars("--socket-mode", "0660").start()
    assert stat.S_IMODE(os.stat(process.socket).st_mode) == 0o660
    assert process.stop() == 0


def test_stale_socket_of_a_dead_process_is_replaced(sidecar: SidecarProcess) -> None:
    sidecar.socket_dir.mkdir(parents=True)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(sidecar.socket))  # bound, never listening, closed: what a killed server leaves
    dead.close()
    launcher = sidecar.start().launcher()
    assert launcher.info().name == "vmhooks"
    assert any("replaced the stale socket" in line["msg"] for line in sidecar.lines())
    launcher.close()


def test_socket_of_a_live_process_is_an_error(
    sidecars: Callable[..., SidecarProcess], sidecar: SidecarProcess
) -> None:
    launcher = sidecar.start().launcher()
    second = sidecars()  # same directory, same name
    with pytest.raises(RuntimeError, match="exited with 1"):
        second.start()
    err = second.stderr_path.read_text()
    assert err.strip().splitlines() == [
        f"vmhooks: {sidecar.socket} is served by another live process (another sidecar with the same --name?)"
    ]
    assert launcher.info().name == "vmhooks"  # the first one still serves
    launcher.close()


def test_something_else_at_the_socket_path_is_left_alone(sidecar: SidecarProcess) -> None:
    sidecar.socket_dir.mkdir(parents=True)
    sidecar.socket.write_text("precious")
    with pytest.raises(RuntimeError, match="exited with 1"):
        sidecar.start()
    assert sidecar.socket.read_text() == "precious"
    assert "exists and is not a socket" in sidecar.stderr_path.read_text()


def test_two_sidecars_with_their_own_names_share_the_directory(sidecars: Callable[..., SidecarProcess]) -> None:
    first = sidecars(name="vmhooks-a").start()
    second = sidecars(name="vmhooks-b").start()
    names = []
    for process in (first, second):
        client = process.launcher()
        names.append(client.info().name)
        client.close()
    assert names == ["vmhooks-a", "vmhooks-b"]
    assert sorted(p.name for p in first.socket_dir.iterdir() if p.is_socket()) == ["vmhooks-a.sock", "vmhooks-b.sock"]
    assert first.stop() == 0 and second.stop() == 0


def test_stdout_is_json_lines_only(make_hook: MakeHook, sidecar: SidecarProcess) -> None:
    make_hook("before_vm_start", "10_noisy", "echo to-stdout; echo to-stderr >&2\n")
    launcher = sidecar.start().launcher()
    launcher.on_define_domain(vmi=vmi_json(drop=("vmhooks.io/deviceCustom", "vmhooks.io/custom")))
    launcher.close()
    assert sidecar.stop() == 0
    lines = sidecar.stdout_path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # a hook's stdout never reaches ours
    chain = next(event for event in events if event.get("point") == "before_vm_start")
    assert chain["scripts"][0]["stderr"] == "to-stderr"


def test_calls_are_served_while_one_hangs(make_hook: MakeHook, sidecar: SidecarProcess) -> None:
    # One slow call does not hold Info (virt-launcher gives Info 1 s).
    make_hook("before_vm_start", "10_slow", "sleep 3\n")
    process = sidecar.start()
    launcher = process.launcher()
    slow = threading.Thread(target=launcher.on_define_domain, daemon=True)
    slow.start()
    time.sleep(0.3)
    assert launcher.info().name == "vmhooks"
    slow.join(10)
    launcher.close()
    assert process.stop() == 0
