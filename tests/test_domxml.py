"""Domain XML helpers shared by the agent and the KubeVirt sidecar."""
from __future__ import annotations

from pathlib import Path

from vmhooks import domxml

DOMAIN_XML = (Path(__file__).resolve().parent / "data" / "kubevirt-domain.xml").read_bytes()


def test_devices_are_found_by_alias_mac_or_target_dev_in_any_case() -> None:
    root = domxml.parse_domain(DOMAIN_XML.decode())
    interface = domxml.find_device(root, "ua-default")
    assert interface is not None and interface.tag == "interface"
    assert domxml.find_device(root, "02:5E:1A:00:00:01") is interface
    assert domxml.find_device(root, "VDB").find("alias").get("name") == "ua-cloudinitdisk"
    assert domxml.find_device(root, "default") is None


def test_replace_device_keeps_its_place_and_kubevirt_metadata_keeps_its_namespace() -> None:
    root = domxml.parse_domain(DOMAIN_XML.decode())
    old = domxml.find_device(root, "ua-default")
    index = list(root.find("devices")).index(old)
    new = domxml.parse('<interface type="network"><source network="n"/><alias name="ua-default"/></interface>', "device")
    domxml.replace_device(root, old, new)
    assert list(root.find("devices"))[index] is new
    text = domxml.to_string(root)
    assert 'xmlns:kubevirt="http://kubevirt.io"' in text and "<kubevirt:uid>" in text and "ns0" not in text

