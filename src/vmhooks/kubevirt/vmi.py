"""What the sidecar reads from KubeVirt's VirtualMachineInstance (the JSON
virt-launcher sends with each call): its uid, which is the hooks' vmId,
and the custom properties in two annotations.

    vmhooks.io/custom:        {"pincpu": "0-1", "hugepages": "1024"}
    vmhooks.io/deviceCustom:  {"ua-default": {"extnet": "ovs-net"}}

They mean what `custom` and `deviceCustom` mean to `VM.create`. Every
problem raises UsageError naming the annotation, before anything runs."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from vmhooks.domxml import normalise_uuid
from vmhooks.environment import validated
from vmhooks.errors import InvalidEnvironmentError, UsageError

CUSTOM_ANNOTATION = "vmhooks.io/custom"
DEVICE_ANNOTATION = "vmhooks.io/deviceCustom"

# Nested values would reach hooks as Python reprs: refused. Scalars become
# strings as VM.create's do (null -> "", true -> "True").
_NESTED = (Mapping, list)


class Vmi(NamedTuple):
    uid: str  # metadata.uid: the hooks' vmId
    label: str  # namespace/name, for logs
    custom: dict[str, str]
    device_custom: dict[str, dict[str, str]]  # alias, MAC or target dev -> properties


def parse_vmi(data: bytes) -> Vmi:
    vmi = json_object(data, "the VMI")
    metadata = vmi.get("metadata")
    if not isinstance(metadata, Mapping):
        raise UsageError("the VMI has no metadata object")
    uid = metadata.get("uid")
    if not isinstance(uid, str) or not uid:
        raise UsageError("the VMI has no metadata.uid (the hooks' vmId)")
    uid = normalise_uuid(uid, "the VMI's metadata.uid")
    label = "/".join(str(metadata.get(key) or "?") for key in ("namespace", "name"))
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        raise UsageError("the VMI's metadata.annotations is not an object")
    custom = _properties(_annotation(annotations, CUSTOM_ANNOTATION), CUSTOM_ANNOTATION, "custom property")
    devices = _annotation(annotations, DEVICE_ANNOTATION)
    device_custom = {
        key: _properties(props, f"{DEVICE_ANNOTATION} {key!r}", "device custom property")
        for key, props in devices.items()
    }
    return Vmi(uid, label, custom, device_custom)


def json_object(data: bytes | str, what: str) -> dict[str, Any]:
    """`data` parsed, when it is a JSON object; UsageError naming `what` otherwise."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what} is not a JSON object")
    return value


def _annotation(annotations: Mapping[str, Any], name: str) -> dict[str, Any]:
    text = annotations.get(name)
    if text is None:
        return {}
    if not isinstance(text, str):
        raise UsageError(f"annotation {name} is not a string")
    return json_object(text, f"annotation {name}")


def _properties(values: object, where: str, origin: str) -> dict[str, str]:
    """Names and values as the runner will check them (identifiers, not
    reserved, no NUL, bounded size), refused here so nothing runs."""
    if not isinstance(values, Mapping):
        raise UsageError(f"{where}: properties must be a JSON object of name to value")
    for name, value in values.items():
        if isinstance(value, _NESTED):
            raise UsageError(f"{where}: {origin} {name!r} must be a string, not {type(value).__name__}")
    try:
        return validated(values, origin)
    except InvalidEnvironmentError as exc:
        raise UsageError(f"{where}: {exc}") from None
