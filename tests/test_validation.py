"""Output guardrails: what a chain whose output is used may hand back."""
from __future__ import annotations

import pytest

from vmhooks.points import get_point
from vmhooks.validation import canonical_xml, output_problem, same_xml

DOMAIN = get_point("before_vm_start")
DEVICE = get_point("before_nic_hotplug")
JSON_POINT = get_point("after_get_caps")

DOM = b"<domain type='kvm'><name>vm1</name><uuid>u-1</uuid><memory>1</memory></domain>"


def test_same_domain_is_fine() -> None:
    assert output_problem(DOMAIN, DOM, DOM) == ""


def test_edited_domain_is_fine() -> None:
    after = DOM.replace(b"<memory>1</memory>", b"<memory>2</memory><description>x</description>")
    assert output_problem(DOMAIN, DOM, after) == ""


def test_rewritten_with_declaration_and_other_quotes_is_fine() -> None:
    after = b'<?xml version="1.0" encoding="utf-8"?><domain type="kvm"><name>vm1</name>' \
        b"<uuid> u-1 </uuid><memory>1</memory></domain>"
    assert output_problem(DOMAIN, DOM, after) == ""


@pytest.mark.parametrize(
    ("after", "phrase"),
    [
        (b"<domain><name>vm1</name>", "malformed XML"),
        (b"", "malformed XML"),
        (b"not xml at all", "malformed XML"),
        (b"<vm><name>vm1</name><uuid>u-1</uuid></vm>", "root element from <domain> to <vm>"),
        (DOM.replace(b"u-1", b"u-2"), "<uuid> from 'u-1' to 'u-2'"),
        (DOM.replace(b"<uuid>u-1</uuid>", b""), "<uuid> from 'u-1' to None"),
        (DOM.replace(b"vm1", b"vm2"), "<name> from 'vm1' to 'vm2'"),
        (DOM.replace(b"vm1", "vm\u00e9".encode("latin-1")), "not UTF-8"),
    ],
)
def test_domain_problems(after: bytes, phrase: str) -> None:
    assert phrase in output_problem(DOMAIN, DOM, after)


def test_device_root_must_stay() -> None:
    nic = b"<interface type='bridge'><mac address='00:11:22:33:44:55'/></interface>"
    assert output_problem(DEVICE, nic, nic.replace(b"00:11", b"00:12")) == ""
    disk = b"<disk type='file'/>"
    assert "root element from <interface> to <disk>" in output_problem(DEVICE, nic, disk)


def test_device_has_no_uuid_rule() -> None:
    nic = b"<interface><name>a</name></interface>"
    assert output_problem(DEVICE, nic, b"<interface><name>b</name></interface>") == ""


def test_json() -> None:
    assert output_problem(JSON_POINT, b"{}", b'{"a": [1, 2]}') == ""
    assert output_problem(JSON_POINT, b"{}", b"[]") == ""
    assert "invalid JSON" in output_problem(JSON_POINT, b"{}", b"{'a': 1}")
    assert "invalid JSON" in output_problem(JSON_POINT, b"{}", b"")


def test_input_that_was_no_xml_is_not_compared() -> None:
    assert output_problem(DOMAIN, b"", b"<anything/>") == ""


def test_canonical_xml_normalises() -> None:
    a = "<?xml version='1.0'?><a y=\"2\" x='1'><b/></a>"
    b = '<a x="1" y="2"><b></b></a>'
    assert canonical_xml(a) == canonical_xml(b)
    assert canonical_xml("<a x='1'/>") != canonical_xml("<a x='2'/>")


def test_canonical_xml_of_non_xml_is_itself() -> None:
    assert canonical_xml("<broken") == "<broken"


@pytest.mark.parametrize(
    "other",
    [
        "<?xml version='1.0' encoding='utf-8'?>\n<a y=\"2\" x='1'><b>t</b><c/></a>",  # declaration, quotes, order
        '<a x="1" y="2"><b>t</b><c></c></a>',  # an empty element either way
        '<a x="1" y="2"><b>&#116;</b><c/></a>',  # a character reference
    ],
)
def test_same_xml_ignores_how_a_document_is_written(other):
    assert same_xml('<a x="1" y="2"><b>t</b><c/></a>', other)


def test_same_xml_reads_namespaces_by_uri_not_prefix():
    assert same_xml('<p:a xmlns:p="urn:x"><p:b/></p:a>', '<q:a xmlns:q="urn:x"><q:b/></q:a>')
    assert not same_xml('<p:a xmlns:p="urn:x"/>', '<p:a xmlns:p="urn:y"/>')


@pytest.mark.parametrize(
    "other",
    [
        '<a x="1" y="3"><b>t</b><c/></a>',  # a value
        '<a x="1"><b>t</b><c/></a>',  # an attribute fewer
        '<a x="1" y="2"><b>u</b><c/></a>',  # text
        '<a x="1" y="2"><c/><b>t</b></a>',  # child order
        '<a x="1" y="2"><b>t</b><c/> </a>',  # whitespace that is there (C14N keeps it too)
        '<a x="1" y="2"><b>t</b></a>',  # a child fewer
        "not xml",
    ],
)
def test_same_xml_sees_every_real_change(other):
    assert not same_xml('<a x="1" y="2"><b>t</b><c/></a>', other)


def test_same_xml_walks_any_depth_without_recursion():
    deep = "<a>" * 100_000 + "</a>" * 100_000
    assert same_xml(deep, deep)
    assert not same_xml(deep, deep.replace("<a></a>", "<a>x</a>", 1))
