"""The real-host test infrastructure works: real libvirtd daemons as user
nobody, a diskless VM through its lifecycle on real QEMU, hot(un)plug, a
killed QEMU seen through a lifecycle event, and live migration between two
hosts, on loopback and across two network namespaces.

Skipped only when real hosts cannot run here (qemu_unavailable_reason), and
the namespace tests only when namespaces cannot be made."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest
import realhost
from realhost import (  # noqa: F401  (fixtures are found by name in this module)
    LibvirtHost,
    NetNamespace,
    RealHostError,
    daemon_ids,
    disk_xml,
    domain_xml,
    libvirt_event_loop,
    libvirt_host,
    make_daemon_dir,
    make_disk_image,
    make_host,
    netns_host_pair,
    netns_pair,
    qemu_unavailable_reason,
    realhost_available,
    realhost_dir,
    two_hosts,
    wait_for,
)
from tlsmaterial import TLSMaterial, tls_material  # noqa: F401

MIGRATE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


def start_vm(conn: libvirt.virConnect, **options: bool) -> libvirt.virDomain:
    dom = conn.defineXML(domain_xml(**options))
    dom.create()
    return dom


def open_images(dom: libvirt.virDomain) -> set[str]:
    """The image files QEMU itself has attached (its view, not libvirt's)."""
    reply = libvirt_qemu.qemuMonitorCommand(dom, '{"execute": "query-block"}', 0)
    return {entry["inserted"]["file"] for entry in json.loads(reply)["return"] if "inserted" in entry}


def live_targets(dom: libvirt.virDomain) -> set[str]:
    return {t.get("dev", "") for t in ET.fromstring(dom.XMLDesc()).iterfind("devices/disk/target")}


def net_namespace_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def namespace_id(namespace: NetNamespace) -> str:
    return f"net:[{os.stat(namespace.path).st_ino}]"


def tx_bytes(namespace: NetNamespace) -> int:
    out = subprocess.run(["ip", "-n", namespace.name, "-j", "-s", "link", "show", namespace.interface],
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])


# ------------------------------------------------------------------ no QEMU needed


def test_unavailable_reason_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realhost.os, "geteuid", lambda: 0)
    monkeypatch.setattr(realhost, "_which", lambda name: None if name == "qemu-system-x86_64" else "/bin/true")
    reason = qemu_unavailable_reason()
    if reason is not None and "libvirt-python" in reason:
        pytest.skip(reason)
    assert reason is not None and "qemu-system-x86_64" in reason


def test_netns_unavailable_reason_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(realhost, "_netns_reason", [])
    monkeypatch.setattr(realhost, "qemu_unavailable_reason", lambda: None)
    monkeypatch.setattr(realhost, "_which", lambda name: f"/usr/sbin/{name}")
    failed = subprocess.CompletedProcess([], 1, "", "mount --make-shared /run/netns failed: Operation not permitted")
    monkeypatch.setattr(realhost, "_run_ip", lambda *args, check=True: failed)
    reason = realhost.netns_unavailable_reason()
    assert reason == "'ip netns add' does not work here: mount --make-shared /run/netns failed: Operation not permitted"


def test_domain_xml_is_a_diskless_tcg_vm() -> None:
    root = ET.fromstring(domain_xml("n1", vnc=True, scsi=True, usb=True))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "n1" and len(root.findtext("uuid") or "") == 36
    assert root.findtext("memory") == "64" and root.find("memory").get("unit") == "MiB"
    assert root.find("features/acpi") is not None
    assert root.find("devices/disk") is None
    assert root.find("devices/graphics").get("type") == "vnc"
    assert {c.get("type") for c in root.iterfind("devices/controller")} == {"scsi", "usb"}
    a, b = ET.fromstring(domain_xml()), ET.fromstring(domain_xml())
    assert a.findtext("name") != b.findtext("name") and a.findtext("uuid") != b.findtext("uuid")


# ------------------------------------------------------------------ one host


@pytest.mark.realhost
def test_host_is_a_session_daemon_as_nobody(libvirt_host: LibvirtHost) -> None:
    host = libvirt_host
    conn = host.connect()
    capabilities = ET.fromstring(conn.getCapabilities())
    assert capabilities.findtext("host/uuid") == host.host_uuid
    assert host.uri == f"qemu+unix:///session?socket={host.root}/run/libvirt/libvirt-sock"
    assert conn.getURI() == host.uri
    pid = host.pid
    assert pid is not None
    assert Path(f"/proc/{pid}/exe").resolve().name == "libvirtd"
    uid, gid = daemon_ids()
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"Uid:\t{uid}\t{uid}\t{uid}" in status and f"Gid:\t{gid}\t{gid}\t{gid}" in status
    assert re.search(r"^Groups:\s*$", status, re.M)  # no supplementary groups
    assert "CapEff:\t0000000000000000" in status
    for sub in ("home", "config", "cache", "run"):
        assert (host.root / sub).stat().st_uid == uid


@pytest.mark.realhost
def test_lifecycle_pause_resume_save_restore(libvirt_host: LibvirtHost, realhost_dir: Path) -> None:
    conn = libvirt_host.connect()
    dom = start_vm(conn, vnc=True)
    name = dom.name()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    qemu = libvirt_host.qemu_pid(name)
    assert qemu is not None and os.stat(f"/proc/{qemu}").st_uid == daemon_ids()[0]
    graphics = ET.fromstring(dom.XMLDesc()).find("devices/graphics")
    assert graphics.get("listen") == "127.0.0.1" and int(graphics.get("port")) >= 20000

    dom.suspend()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED
    dom.resume()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

    # The daemon (user nobody) writes the save image: its directory must be nobody's.
    save_dir = make_daemon_dir(realhost_dir / "save")
    image = save_dir / f"{name}.save"
    dom.save(str(image))
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert libvirt_host.qemu_pid(name) is None
    assert image.stat().st_size > 0 and image.stat().st_uid == daemon_ids()[0]
    conn.restore(str(image))
    dom = conn.lookupByName(name)
    assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED]

    # A directory nobody cannot write (realhost_dir is root's, 0711): a clear libvirt error.
    with pytest.raises(libvirt.libvirtError, match="Permission denied"):
        dom.save(str(realhost_dir / "not-writable.save"))
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

    dom.destroy()
    dom.undefine()
    assert conn.listAllDomains() == []


@pytest.mark.realhost
def test_hotplug_and_unplug_scsi_and_usb_disks(libvirt_host: LibvirtHost, realhost_dir: Path) -> None:
    conn = libvirt_host.connect()
    dom = start_vm(conn, scsi=True, usb=True)
    qcow2 = make_disk_image(realhost_dir / "scsi.qcow2")
    raw = make_disk_image(realhost_dir / "usb.img", fmt="raw", size_mib=4)
    scsi_disk = disk_xml(qcow2, "sda", bus="scsi")
    usb_disk = disk_xml(raw, "sdb", bus="usb", fmt="raw")

    dom.attachDeviceFlags(scsi_disk, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    dom.attachDeviceFlags(usb_disk, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert live_targets(dom) == {"sda", "sdb"}
    assert open_images(dom) == {str(qcow2), str(raw)}  # QEMU (user nobody) opened both

    # SCSI and USB unplug complete without a guest OS (PCI unplug would not).
    dom.detachDeviceFlags(scsi_disk, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    dom.detachDeviceFlags(usb_disk, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    wait_for(lambda: not live_targets(dom), 10, what="disks gone from the live XML")
    assert open_images(dom) == set()
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


@pytest.mark.realhost
def test_killed_qemu_shuts_the_domain_off_with_an_event(
    libvirt_event_loop: None, libvirt_host: LibvirtHost
) -> None:
    conn = libvirt_host.connect()  # opened after the event loop: it gets events
    events: queue.Queue[tuple[str, int, int]] = queue.Queue()

    def on_lifecycle(_conn: object, dom: libvirt.virDomain, event: int, detail: int, _opaque: object) -> None:
        events.put((dom.name(), event, detail))

    callback = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None)
    try:
        dom = start_vm(conn)
        name = dom.name()

        def next_event(kind: int) -> tuple[str, int, int]:
            while True:
                got = events.get(timeout=20)
                if got[0] == name and got[1] == kind:
                    return got

        next_event(libvirt.VIR_DOMAIN_EVENT_STARTED)
        qemu = libvirt_host.qemu_pid(name)
        assert qemu is not None
        os.kill(qemu, signal.SIGKILL)

        _, _, detail = next_event(libvirt.VIR_DOMAIN_EVENT_STOPPED)
        assert detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED
        assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED]
        assert libvirt_host.qemu_pid(name) is None
        # The daemon is fine and the domain still defined: it starts again.
        dom.create()
        next_event(libvirt.VIR_DOMAIN_EVENT_STARTED)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        conn.domainEventDeregisterAny(callback)


@pytest.mark.realhost
def test_stop_leaves_nothing_behind(realhost_available: None) -> None:
    with LibvirtHost(None, "solo") as host:  # its own base directory
        dom = start_vm(host.connect(), vnc=True)
        pids = host.pids()
        assert set(pids) == {"libvirtd", "virtlogd", f"qemu:{dom.name()}"}
        base = host.root.parent
    assert not base.exists()
    assert not any(realhost._process_alive(pid) for pid in pids.values())
    host.stop()  # idempotent


@pytest.mark.realhost
def test_a_test_process_that_dies_hard_leaves_nothing_running(realhost_available: None) -> None:
    """SIGKILL the process that owns a host (no teardown, no atexit): the
    reaper takes the daemons and QEMU down, reap_stale_hosts the files and
    namespaces."""
    with_netns = realhost.netns_unavailable_reason() is None
    script = f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from realhost import LibvirtHost, domain_xml, make_netns_pair
if {with_netns}:
    namespace = make_netns_pair().__enter__()[0].name
else:
    namespace = "-"
host = LibvirtHost(None, "orphan").start()
host.connect().defineXML(domain_xml()).create()
print(host.root.parent, namespace, *host.pids().values(), flush=True)
time.sleep(600)
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
    finally:
        child.kill()
        _, errors = child.communicate()
    assert line, f"the child failed: {errors}"
    base, namespace, *pids = line.split()
    assert len(pids) == 3  # libvirtd, virtlogd, qemu
    wait_for(lambda: not any(realhost._process_alive(int(pid)) for pid in pids), 10, what="the orphans to die")
    assert Path(base).exists()
    realhost.reap_stale_hosts()
    assert not Path(base).exists()
    if with_netns:
        assert not Path(f"/run/netns/{namespace}").exists()


@pytest.mark.realhost
def test_a_daemon_that_dies_at_start_is_reported_with_its_log(realhost_dir: Path) -> None:
    host = LibvirtHost(realhost_dir, "bad", extra_conf="this is not a setting")
    with pytest.raises(RealHostError, match=r"(?s)libvirtd exited.*last lines of .*libvirtd\.log.*\n.+"):
        host.start()
    assert not host.root.exists()
    assert realhost._processes_under(realhost_dir) == []


@pytest.mark.realhost
def test_a_directory_nobody_cannot_reach_is_refused(realhost_available: None) -> None:
    private = Path(tempfile.mkdtemp(prefix="vmhtest-private-"))  # 0700, root's
    try:
        with pytest.raises(RealHostError, match="'nobody' cannot reach it"):
            LibvirtHost(private, "x").start()
        assert list(private.iterdir()) == []
    finally:
        private.rmdir()


@pytest.mark.realhost
def test_paths_too_long_for_unix_sockets_are_refused(tmp_path: Path, realhost_available: None) -> None:
    deep = tmp_path / ("d" * 40)
    deep.mkdir()
    with pytest.raises(RealHostError, match="too long"):
        LibvirtHost(deep, "x").start()


# ------------------------------------------------------------------ two hosts


def migrate(source: LibvirtHost, destination: LibvirtHost, name: str) -> libvirt.virDomain:
    dom = source.connect().lookupByName(name)
    dom.migrateToURI3(destination.uri, destination.migration_params(), MIGRATE_FLAGS)
    return destination.connect().lookupByName(name)


def assert_only_on(host: LibvirtHost, other: LibvirtHost, name: str) -> None:
    dom = host.connect().lookupByName(name)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert dom.isPersistent()
    assert host.qemu_pid(name) is not None
    with pytest.raises(libvirt.libvirtError):  # UNDEFINE_SOURCE: gone from the source
        other.connect().lookupByName(name)
    assert other.qemu_pid(name) is None


@pytest.mark.realhost
def test_live_migration_there_and_back(two_hosts: tuple[LibvirtHost, LibvirtHost]) -> None:
    a, b = two_hosts
    assert a.host_uuid != b.host_uuid
    assert a.address == b.address == "127.0.0.1" if a.netns is None else a.address != b.address
    dom = start_vm(a.connect(), vnc=True)
    name, uuid = dom.name(), dom.UUIDString()

    moved = migrate(a, b, name)
    assert moved.UUIDString() == uuid
    assert_only_on(b, a, name)

    migrate(b, a, name)  # and back
    assert_only_on(a, b, name)


@pytest.mark.realhost
def test_two_daemons_with_one_host_uuid_are_one_host(make_host: Callable[..., LibvirtHost]) -> None:
    """Why every host gets its own host_uuid: libvirt refuses to migrate to itself."""
    a = make_host("ua")
    b = make_host("ub", host_uuid=a.host_uuid)
    name = start_vm(a.connect()).name()
    with pytest.raises(libvirt.libvirtError, match="same host"):
        migrate(a, b, name)
    assert a.connect().lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING


@pytest.mark.realhost
def test_migration_between_namespaces_goes_over_the_veth(netns_host_pair: tuple[LibvirtHost, LibvirtHost]) -> None:
    a, b = netns_host_pair
    assert (a.address, b.address) == (f"{realhost.NETNS_SUBNET}.1", f"{realhost.NETNS_SUBNET}.2")
    assert a.netns is not None and b.netns is not None
    own_namespace = os.readlink("/proc/self/ns/net")
    assert net_namespace_of(a.pid) == namespace_id(a.netns) != own_namespace
    dom = start_vm(a.connect(), vnc=True)
    name = dom.name()
    assert net_namespace_of(a.qemu_pid(name)) == namespace_id(a.netns)
    sent_before = tx_bytes(a.netns)

    params = b.migration_params()
    assert params[libvirt.VIR_MIGRATE_PARAM_URI].startswith(f"tcp://{b.address}:")
    migrate(a, b, name)

    assert_only_on(b, a, name)
    assert net_namespace_of(b.qemu_pid(name)) == namespace_id(b.netns)
    # The guest's memory went over the veth pair (its only route).
    assert tx_bytes(a.netns) - sent_before > 100_000
    assert os.readlink("/proc/self/ns/net") == own_namespace


@pytest.mark.realhost
def test_mutual_tls_across_namespaces(
    netns_pair: tuple[NetNamespace, NetNamespace], tls_material: TLSMaterial
) -> None:
    """What agents will do: a TLS server on one namespace's address, a client
    in the other namespace, certificates valid for those addresses."""
    client_ns, server_ns = netns_pair
    with server_ns.entered():
        listener = socket.create_server((server_ns.address, 0))
    port = listener.getsockname()[1]
    seen: list[str] = []

    def serve() -> None:
        connection, peer = listener.accept()
        with tls_material.server_context().wrap_socket(connection, server_side=True) as tls:
            seen.append(peer[0])
            seen.append(dict(item[0] for item in tls.getpeercert()["subject"])["commonName"])
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client_ns.entered():
            raw = socket.create_connection((server_ns.address, port), timeout=10)
        with tls_material.client_context().wrap_socket(raw, server_hostname=server_ns.address) as tls:
            assert tls.recv(2) == b"ok"
    finally:
        thread.join(10)
        listener.close()
    assert seen == [client_ns.address, "vmhooks-client"]
