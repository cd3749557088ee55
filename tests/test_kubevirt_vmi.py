"""Reading the VMI virt-launcher sends: the uid (vmId) and the two
annotations, as VM.create reads custom and deviceCustom."""
from __future__ import annotations

import json
from typing import Any

import pytest

from sidecarproc import VMI_JSON, vmi_json
from vmhooks.errors import UsageError
from vmhooks.kubevirt.vmi import parse_vmi

UID = "9b2c1f4e-3a6d-4e8b-9c1d-2f3e4a5b6c7d"


def test_the_fixture_vmi() -> None:
    vmi = parse_vmi(VMI_JSON)
    assert vmi.uid == UID
    assert vmi.label == "default/fedora-hooks"
    assert vmi.custom == {"pincpu": "0-1", "hugepages": "1024"}
    assert vmi.device_custom == {"ua-default": {"extnet": "ovs-net"}}


def test_uid_is_normalised_and_annotations_are_optional() -> None:
    vmi = parse_vmi(json.dumps({"metadata": {"uid": UID.upper()}}).encode())
    assert (vmi.uid, vmi.label, vmi.custom, vmi.device_custom) == (UID, "?/?", {}, {})


def test_scalars_become_strings_as_in_vm_create() -> None:
    custom = {"a": 1, "b": True, "c": None, "d": 1.5, "e": "x"}
    vmi = parse_vmi(vmi_json({"vmhooks.io/custom": custom}))
    assert vmi.custom == {"a": "1", "b": "True", "c": "", "d": "1.5", "e": "x"}


def _vmi_with(annotations: Any) -> bytes:
    return json.dumps({"metadata": {"uid": UID, "annotations": annotations}}).encode()


@pytest.mark.parametrize(
    ("vmi", "message"),
    [
        (b"\xff", "the VMI is not valid JSON"),
        (b'{"metadata": []}', "the VMI has no metadata object"),
        (json.dumps({"metadata": {"uid": 7}}).encode(), "no metadata.uid"),
        (_vmi_with(["x"]), "metadata.annotations is not an object"),
        (_vmi_with({"vmhooks.io/custom": {"a": "b"}}), "annotation vmhooks.io/custom is not a string"),
        (_vmi_with({"vmhooks.io/custom": '{"a": "b\\u0000"}'}), "has a NUL byte"),
        (_vmi_with({"vmhooks.io/custom": '{"a b": "1"}'}), "is not an identifier"),
        (_vmi_with({"vmhooks.io/custom": '{"_hook_domxml": "/etc/passwd"}'}), "is reserved"),
        (_vmi_with({"vmhooks.io/custom": '{"a": [1]}'}), "must be a string, not list"),
        (
            _vmi_with({"vmhooks.io/deviceCustom": '{"vda": {"BASH_ENV": "x"}}'}),
            "vmhooks.io/deviceCustom 'vda': device custom property name 'BASH_ENV' is reserved",
        ),
        (_vmi_with({"vmhooks.io/deviceCustom": '["vda"]'}), "annotation vmhooks.io/deviceCustom is not a JSON object"),
        (_vmi_with({"vmhooks.io/custom": json.dumps({"big": "x" * (40 << 10)})}), "over 32 KiB"),
    ],
)
def test_refusals_name_what_and_why(vmi: bytes, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_vmi(vmi)
