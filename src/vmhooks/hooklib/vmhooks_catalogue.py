"""The helpers the catalogue hooks share: finding and building elements of
the domain XML (a minidom Document), free disk target names, boot orders,
the network of a vNIC.

Standard library, xml.dom.minidom and its sibling `hooking` only. This is
not part of the VDSM `hooking` API: catalogue hooks `import vmhooks_catalogue`, found because the
vmhooks runner appends this directory to the hooks' PYTHONPATH.
"""
from __future__ import annotations

# Type names only: importing typing or minidom here would cost every hook
# run, including those that return before reading the domain XML.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from typing import TypeVar
    from xml.dom.minidom import Document, Element, Node

    Parsed = TypeVar("Parsed")

# The order given to a boot order that is not a number: after every real one.
UNKNOWN_BOOT_ORDER = 1 << 30

# <os><boot dev=...>: the <devices> child tag it stands for, and the
# device='...' values of that tag it takes (None: any).
OS_BOOT_DEVICES = {
    "hd": ("disk", ("disk", "lun")),
    "cdrom": ("disk", ("cdrom",)),
    "fd": ("disk", ("floppy",)),
    "network": ("interface", None),
}


# --- the property, and where the hook works -----------------------------------


def property_or_exit(name: str, parse: Callable[[str], Parsed]) -> Parsed | None:
    """Custom property `name` (also the hook's name) parsed by `parse`; None
    when it is not set. A value `parse` refuses (ValueError) ends the hook
    with exit 1 and one line naming the value."""
    import os

    import hooking

    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        hooking.exit_hook("%s: invalid value %r: %s" % (name, value, exc), 1)
        raise  # not reached: exit_hook exits


def devices_or_exit(hook: str, doc: Document) -> Element:
    """The domain's <devices>; a domain without one ends the hook with exit 1."""
    import hooking

    devices = child(doc.documentElement, "devices")
    if devices is None:
        hooking.exit_hook("%s: the domain has no <devices>" % hook, 1)
    return devices


# --- finding and building elements ------------------------------------------


def elements(parent: Node, tag: str | None = None) -> list[Element]:
    """The child elements of `parent` (not deeper), those named `tag` if given."""
    return [node for node in parent.childNodes
            if node.nodeType == node.ELEMENT_NODE and (tag is None or node.tagName == tag)]


def child(parent: Node, tag: str) -> Element | None:
    """The first child element of `parent` named `tag`, or None."""
    for node in parent.childNodes:
        if node.nodeType == node.ELEMENT_NODE and node.tagName == tag:
            return node
    return None


def text_of(parent: Node, tag: str) -> str:
    """The stripped text of the first `tag` child of `parent`; "" when there is none."""
    found = child(parent, tag)
    return found.firstChild.data.strip() if found is not None and found.firstChild else ""


def element(doc: Document, tag: str, attributes: Mapping[str, str] | None = None,
            children: Iterable[Node] = ()) -> Element:
    """A new `tag` element with `attributes` set in their order, then `children` appended."""
    node = doc.createElement(tag)
    for name, value in (attributes or {}).items():
        node.setAttribute(name, value)
    for item in children:
        node.appendChild(item)
    return node


def ensure_child(doc: Document, parent: Node, tag: str) -> Element:
    """The first `tag` child of `parent`, appended as a new empty element when missing."""
    node = child(parent, tag)
    if node is None:
        node = doc.createElement(tag)
        parent.appendChild(node)
    return node


def insert_after_first(parent: Node, node: Node, anchor_tags: Iterable[str]) -> None:
    """Insert `node` right after the first child of `parent` named by one of
    `anchor_tags` (tried in that order); at the end when none is there."""
    for tag in anchor_tags:
        anchor = child(parent, tag)
        if anchor is not None:
            parent.insertBefore(node, anchor.nextSibling)  # None: at the end
            return
    parent.appendChild(node)


def remove_children(parent: Node, tag: str, predicate: Callable[[Element], bool]) -> int:
    """Remove the `tag` children of `parent` for which `predicate` is true; how many."""
    removed = 0
    for node in elements(parent, tag):
        if predicate(node):
            parent.removeChild(node)
            removed += 1
    return removed


# --- disks ------------------------------------------------------------------


def disk_name(prefix: str, index: int) -> str:
    """The `index`th (from 0) target name of `prefix`: vda..vdz, vdaa, vdab..."""
    suffix = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        suffix = chr(ord("a") + rest) + suffix
    return prefix + suffix


def free_disk_names(prefix: str, used: Iterable[str], limit: int | None = None) -> Iterator[str]:
    """The names `disk_name(prefix, 0, 1, ...)` not in `used`, in order; only
    among the first `limit` names when given, endless otherwise."""
    taken = set(used)
    index = 0
    while limit is None or index < limit:
        name = disk_name(prefix, index)
        index += 1
        if name not in taken:
            yield name


def target_devs(disks: Iterable[Element]) -> set[str]:
    """The dev='...' of every <target> of these <disk> elements."""
    return {target.getAttribute("dev") for disk in disks for target in elements(disk, "target")}


def source_values(disks: Iterable[Element], attribute: str) -> set[str]:
    """The `attribute` ('file', 'dev'...) of every <source> of these <disk> elements."""
    return {source.getAttribute(attribute) for disk in disks for source in elements(disk, "source")}


def insert_disk(devices: Element, disk: Element) -> None:
    """Add `disk` to <devices> after its last <disk>, at the end when it has none."""
    disks = elements(devices, "disk")
    devices.insertBefore(disk, disks[-1].nextSibling if disks else None)


# --- boot order -------------------------------------------------------------


def decimal(text: str) -> int | None:
    """`text` as a decimal integer (blanks around allowed), None when it is not one."""
    try:
        return int((text or "").strip())
    except ValueError:
        return None


def boot_order(device: Element, parse: Callable[[str], int | None] = decimal) -> int | None:
    """The <boot order> of `device`: None without one, UNKNOWN_BOOT_ORDER when
    `parse` does not read it as a number."""
    boot = child(device, "boot")
    if boot is None or not boot.hasAttribute("order"):
        return None
    order = parse(boot.getAttribute("order"))
    return order if order is not None else UNKNOWN_BOOT_ORDER


def set_boot_order(doc: Document, device: Element, order: int) -> None:
    """Give `device` <boot order='order'/>, adding the <boot> when missing."""
    ensure_child(doc, device, "boot").setAttribute("order", str(order))


def convert_os_boot(doc: Document, domain: Element, devices: Element) -> None:
    """Replace <os><boot dev=...> by device boot orders (libvirt takes one or
    the other, never both). When a device already has a boot order, the
    <os><boot> elements are only removed."""
    os_element = child(domain, "os")
    boots = elements(os_element, "boot") if os_element is not None else []
    if not boots:
        return
    wanted = [boot.getAttribute("dev") for boot in boots]
    for boot in boots:
        os_element.removeChild(boot)
    if any(boot_order(device) is not None for device in elements(devices)):
        return
    order = 1
    for dev in wanted:
        tag, kinds = OS_BOOT_DEVICES.get(dev, (None, None))
        for device in elements(devices, tag) if tag else ():
            if kinds is None or (device.getAttribute("device") or "disk") in kinds:
                set_boot_order(doc, device, order)
                order += 1
                break


def boot_first(doc: Document, domain: Element, devices: Element, first: Element,
               parse: Callable[[str], int | None] = decimal) -> None:
    """`first` gets boot order 1; every other device boot order (read with
    `parse`) goes up by one. A legacy <os><boot> list is converted first."""
    convert_os_boot(doc, domain, devices)
    for device in elements(devices):
        order = boot_order(device, parse)
        if device is not first and order is not None:
            set_boot_order(doc, device, order + 1)
    set_boot_order(doc, first, 1)


# --- interfaces -------------------------------------------------------------


def set_interface_source(doc: Document, interface: Element, kind: str, name: str) -> None:
    """Make the <source> of `interface` exactly kind='name' (e.g. network='ovs'):
    its other attributes go; a missing <source> is added after <mac>, or first."""
    source = child(interface, "source")
    if source is None:
        source = doc.createElement("source")
        mac = child(interface, "mac")
        interface.insertBefore(source, mac.nextSibling if mac is not None else interface.firstChild)
    while source.attributes.length:
        source.removeAttribute(source.attributes.item(0).name)
    source.setAttribute(kind, name)
