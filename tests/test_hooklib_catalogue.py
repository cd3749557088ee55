"""vmhooks_catalogue, the helpers the catalogue hooks share: its functions on
their edge cases (the hooks' tests cover the common paths), and that an
installed hook finds it through the runner's PYTHONPATH alone."""
from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.dom import minidom

import pytest

from vmhooks.cli import main
from vmhooks.environment import HOOKLIB_DIR
from vmhooks.runner import RunnerConfig, Status, run_chain

MODULE_PATH = HOOKLIB_DIR / "vmhooks_catalogue.py"
_spec = importlib.util.spec_from_file_location("vmhooks_catalogue", MODULE_PATH)
assert _spec is not None and _spec.loader is not None
vc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vc)


def parse(xml: str) -> minidom.Document:
    return minidom.parseString(xml)


def tags(parent: minidom.Node) -> list[str]:
    return [node.tagName for node in vc.elements(parent)]


# --- the module itself ------------------------------------------------------


def test_it_imports_only_the_standard_library_and_hooking():
    nodes = list(ast.walk(ast.parse(MODULE_PATH.read_text())))
    imported = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in nodes if isinstance(node, ast.ImportFrom)}
    # ... and its sibling on the hooks' path, `hooking`.
    assert imported and {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names) | {"hooking"}


def test_importing_it_loads_neither_minidom_nor_typing():
    # A hook whose property is absent returns before reading any XML.
    code = ("import sys; before = set(sys.modules); import vmhooks_catalogue; "
            "print(sorted({'typing', 'xml.dom.minidom'} & (set(sys.modules) - before)))")
    env = {**os.environ, "PYTHONPATH": str(HOOKLIB_DIR)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- elements ---------------------------------------------------------------


def test_elements_and_child_see_only_direct_child_elements():
    doc = parse("<a> text <!-- c --><b n='1'><b n='deep'/></b><c/><b n='2'/></a>")
    root = doc.documentElement
    assert tags(root) == ["b", "c", "b"]
    assert [b.getAttribute("n") for b in vc.elements(root, "b")] == ["1", "2"]
    assert vc.child(root, "b").getAttribute("n") == "1"
    assert vc.child(root, "missing") is None
    assert vc.elements(root, "missing") == []


@pytest.mark.parametrize(
    ("xml", "expected"),
    [("<d><name> vm1 \n</name></d>", "vm1"), ("<d><name/></d>", ""), ("<d/>", ""),
     ("<d><name>first</name><name>second</name></d>", "first")],
)  # fmt: skip
def test_text_of(xml, expected):
    assert vc.text_of(parse(xml).documentElement, "name") == expected


def test_element_keeps_the_attribute_order_and_appends_children():
    doc = parse("<d/>")
    node = vc.element(doc, "disk", {"type": "file", "device": "disk", "snapshot": "no"},
                      [vc.element(doc, "source", {"file": "/a"}), doc.createElement("readonly")])
    assert node.toxml() == '<disk type="file" device="disk" snapshot="no"><source file="/a"/><readonly/></disk>'
    assert vc.element(doc, "empty").toxml() == "<empty/>"


def test_ensure_child_returns_the_first_or_appends_one():
    doc = parse("<d><x/><cpu n='1'/><cpu n='2'/></d>")
    root = doc.documentElement
    assert vc.ensure_child(doc, root, "cpu").getAttribute("n") == "1"
    added = vc.ensure_child(doc, root, "devices")
    assert root.lastChild is added and tags(root) == ["x", "cpu", "cpu", "devices"]


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ("<d><vcpu/><cputune/><os/></d>", ["vcpu", "cputune", "new", "os"]),  # the first anchor tag wins
        ("<d><vcpu/><os/></d>", ["vcpu", "new", "os"]),  # then the next one
        ("<d><os/><cputune/></d>", ["os", "cputune", "new"]),  # anchor last: at the end
        ("<d><os/></d>", ["os", "new"]),  # no anchor: at the end
    ],
)
def test_insert_after_first(xml, expected):
    doc = parse(xml)
    vc.insert_after_first(doc.documentElement, doc.createElement("new"), ("cputune", "vcpu"))
    assert tags(doc.documentElement) == expected


def test_remove_children_removes_only_the_matching_tag_and_predicate():
    doc = parse("<i><f n='no-x'/><g n='no-x'/><f n='keep'/><f n='no-x'/></i>")
    root = doc.documentElement
    assert vc.remove_children(root, "f", lambda node: node.getAttribute("n").startswith("no-")) == 2
    assert [(n.tagName, n.getAttribute("n")) for n in vc.elements(root)] == [("g", "no-x"), ("f", "keep")]
    assert vc.remove_children(root, "f", lambda node: False) == 0


# --- disks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "name"),
    [(0, "vda"), (1, "vdb"), (25, "vdz"), (26, "vdaa"), (27, "vdab"), (701, "vdzz"), (702, "vdaaa")],
)
def test_disk_name(index, name):
    assert vc.disk_name("vd", index) == name


def test_free_disk_names_skips_the_used_ones_and_leaves_them_alone():
    used = {"vda", "vdc"}
    names = vc.free_disk_names("vd", used)
    assert [next(names) for _ in range(3)] == ["vdb", "vdd", "vde"]
    assert used == {"vda", "vdc"}


def test_free_disk_names_within_a_limit():
    assert list(vc.free_disk_names("hd", ["hda", "hdc"], limit=4)) == ["hdb", "hdd"]
    assert next(vc.free_disk_names("hd", ["hda", "hdb", "hdc", "hdd"], limit=4), None) is None
    assert list(vc.free_disk_names("hd", [], limit=0)) == []


def test_target_devs_and_source_values():
    doc = parse("<devices><disk><source file='/a'/><target dev='vda'/></disk>"
                "<disk><source dev='/dev/b'/><target dev='sda'/></disk><disk/></devices>")
    disks = vc.elements(doc.documentElement, "disk")
    assert vc.target_devs(disks) == {"vda", "sda"}
    assert vc.source_values(disks, "file") == {"/a", ""}  # a <source> without it counts as ""
    assert vc.source_values(disks, "dev") == {"/dev/b", ""}


def test_insert_disk_goes_after_the_last_disk_in_order():
    doc = parse("<devices><emulator/><disk n='0'/><disk n='1'/><interface/></devices>")
    devices = doc.documentElement
    for n in ("a", "b"):
        vc.insert_disk(devices, vc.element(doc, "disk", {"n": n}))
    assert [(n.tagName, n.getAttribute("n")) for n in vc.elements(devices)] == [
        ("emulator", ""), ("disk", "0"), ("disk", "1"), ("disk", "a"), ("disk", "b"), ("interface", "")]


def test_insert_disk_without_disks_appends():
    doc = parse("<devices><interface/></devices>")
    vc.insert_disk(doc.documentElement, doc.createElement("disk"))
    assert tags(doc.documentElement) == ["interface", "disk"]


# --- boot order -------------------------------------------------------------


def test_boot_order_reading():
    doc = parse("<devices><disk/><disk><boot/></disk><disk><boot order=' 3 '/></disk>"
                "<disk><boot order='0x2'/></disk></devices>")
    none, no_order, three, hexadecimal = vc.elements(doc.documentElement, "disk")
    assert vc.boot_order(none) is None and vc.boot_order(no_order) is None
    assert vc.boot_order(three) == 3
    assert vc.boot_order(hexadecimal) == vc.UNKNOWN_BOOT_ORDER
    assert vc.boot_order(hexadecimal, parse=lambda text: int(text, 16)) == 2


def test_set_boot_order_adds_or_updates_the_boot_element():
    doc = parse("<devices><disk><boot order='4'/></disk><disk/></devices>")
    first, second = vc.elements(doc.documentElement, "disk")
    vc.set_boot_order(doc, first, 1)
    vc.set_boot_order(doc, second, 2)
    assert doc.documentElement.toxml() == (
        '<devices><disk><boot order="1"/></disk><disk><boot order="2"/></disk></devices>')


DOMAIN = """<domain><os><type>hvm</type><boot dev='network'/><boot dev='cdrom'/><boot dev='hd'/></os>
<devices><disk device='cdrom' n='cd'/><disk n='hd'/><interface n='net'/><hostdev n='first'/></devices>
</domain>"""


def boot_orders(doc: minidom.Document) -> dict[str, str]:
    root = ET.fromstring(doc.toxml())
    return {dev.get("n"): dev.find("boot").get("order") for dev in root.iterfind("devices/*")
            if dev.find("boot") is not None}


def test_boot_first_converts_a_legacy_os_boot_list():
    doc = parse(DOMAIN)
    domain = doc.documentElement
    devices = vc.child(domain, "devices")
    vc.boot_first(doc, domain, devices, vc.child(devices, "hostdev"))
    assert vc.elements(vc.child(domain, "os"), "boot") == []
    assert boot_orders(doc) == {"first": "1", "net": "2", "cd": "3", "hd": "4"}


def test_boot_first_drops_the_os_boot_list_when_devices_have_orders():
    doc = parse(DOMAIN.replace("<disk n='hd'/>", "<disk n='hd'><boot order='junk'/></disk>"))
    domain = doc.documentElement
    devices = vc.child(domain, "devices")
    vc.boot_first(doc, domain, devices, vc.child(devices, "hostdev"))
    assert vc.elements(vc.child(domain, "os"), "boot") == []
    assert boot_orders(doc) == {"first": "1", "hd": str(vc.UNKNOWN_BOOT_ORDER + 1)}


def test_boot_first_on_a_device_that_already_boots():
    doc = parse("<domain><devices><disk n='a'><boot order='1'/></disk><disk n='b'><boot order='2'/></disk>"
                "</devices></domain>")
    domain = doc.documentElement
    devices = vc.child(domain, "devices")
    vc.boot_first(doc, domain, devices, vc.elements(devices, "disk")[1])
    assert boot_orders(doc) == {"a": "2", "b": "1"}


# --- interfaces -------------------------------------------------------------


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        ("<interface><mac/><source bridge='b' extra='x'/><model/></interface>",
         '<interface><mac/><source network="ovs"/><model/></interface>'),
        ("<interface><model/><mac/><target/></interface>",
         '<interface><model/><mac/><source network="ovs"/><target/></interface>'),
        ("<interface><model/></interface>", '<interface><source network="ovs"/><model/></interface>'),
        ("<interface/>", '<interface><source network="ovs"/></interface>'),
    ],
)
def test_set_interface_source(xml, expected):
    doc = parse(xml)
    vc.set_interface_source(doc, doc.documentElement, "network", "ovs")
    assert doc.documentElement.toxml() == expected


# --- installed hooks find it ------------------------------------------------


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="catalogue hooks run under /usr/bin/python3")
def test_an_installed_hook_finds_the_module_through_the_runner(hooks_dir: Path, tmp_path: Path, seed_xml: str):
    assert main(["catalogue", "install", "vmdisk", "--hooks-dir", str(hooks_dir)]) == 0
    # install puts a copy beside the script (for VDSM's runner, see
    # test_catalogue_helpers); without it, vmhooks' runner finds hooklib's.
    (copy,) = hooks_dir.rglob("vmhooks_catalogue*")
    copy.unlink()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    work = tmp_path / "work"
    work.mkdir()
    config = RunnerConfig(hooks_dir, timeout=60, base_env=env, work_dir=work)
    result = run_chain("before_vm_start", seed_xml, config, custom={"vmdisk": "/images/x.img:raw"})
    (run,) = result.scripts
    assert run.status is Status.OK, (run.rc, run.stderr)
    sources = [source.get("file") for source in ET.fromstring(result.payload).iter("source")]
    assert "/images/x.img" in sources
