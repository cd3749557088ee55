"""The KubeVirt .proto files and their checked-in stubs: the stubs are what
grpcio-tools makes of the .proto files today, and the .proto files say what
KubeVirt's wire format says (method paths, field names and numbers)."""
from __future__ import annotations

import subprocess
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from conftest import REPO
from vmhooks.kubevirt.proto import info_pb2, v1alpha2_pb2, v1alpha3_pb2

PROTO_DIR = REPO / "src" / "vmhooks" / "kubevirt" / "proto"
BYTES, STRING, INT32, MESSAGE = (
    FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_MESSAGE,
)  # fmt: skip

# KubeVirt's wire format (pkg/hooks/info, v1alpha2, v1alpha3): service ->
# {method: (request, response)}, message -> {field: (number, type, repeated)}.
SERVICES = {
    "kubevirt.hooks.info.Info": {"Info": ("InfoParams", "InfoResult")},
    "kubevirt.hooks.v1alpha2.Callbacks": {
        "OnDefineDomain": ("OnDefineDomainParams", "OnDefineDomainResult"),
        "PreCloudInitIso": ("PreCloudInitIsoParams", "PreCloudInitIsoResult"),
    },
    "kubevirt.hooks.v1alpha3.Callbacks": {
        "OnDefineDomain": ("OnDefineDomainParams", "OnDefineDomainResult"),
        "PreCloudInitIso": ("PreCloudInitIsoParams", "PreCloudInitIsoResult"),
        "Shutdown": ("ShutdownParams", "ShutdownResult"),
    },
}
CALLBACK_MESSAGES = {
    "OnDefineDomainParams": {"domainXML": (1, BYTES, False), "vmi": (2, BYTES, False)},
    "OnDefineDomainResult": {"domainXML": (1, BYTES, False)},
    "PreCloudInitIsoParams": {
        "cloudInitNoCloudSource": (1, BYTES, False), "vmi": (2, BYTES, False), "cloudInitData": (3, BYTES, False),
    },
    "PreCloudInitIsoResult": {"cloudInitNoCloudSource": (1, BYTES, False), "cloudInitData": (3, BYTES, False)},
}  # fmt: skip
MESSAGES = {
    info_pb2: {
        "InfoParams": {},
        "InfoResult": {"name": (1, STRING, False), "hookPoints": (3, MESSAGE, True), "versions": (4, STRING, True)},
        "HookPoint": {"name": (1, STRING, False), "priority": (2, INT32, False)},
    },
    v1alpha2_pb2: CALLBACK_MESSAGES,
    v1alpha3_pb2: {**CALLBACK_MESSAGES, "ShutdownParams": {}, "ShutdownResult": {}},
}


def _fields(message: object) -> dict[str, tuple[int, int, bool]]:
    return {
        field.name: (field.number, field.type, field.is_repeated)
        for field in message.DESCRIPTOR.fields  # type: ignore[attr-defined]
    }


@pytest.mark.parametrize("module", MESSAGES, ids=lambda module: module.__name__.rsplit(".", 1)[-1])
def test_messages_are_kubevirts(module: object) -> None:
    names = module.DESCRIPTOR.message_types_by_name  # type: ignore[attr-defined]
    declared = {name: _fields(getattr(module, name)) for name in names}
    assert declared == MESSAGES[module]


def test_services_are_kubevirts() -> None:
    found = {}
    for module in MESSAGES:
        for service in module.DESCRIPTOR.services_by_name.values():  # type: ignore[attr-defined]
            found[service.full_name] = {
                method.name: (method.input_type.name, method.output_type.name) for method in service.methods
            }
    assert found == SERVICES
    assert info_pb2.DESCRIPTOR.package == "kubevirt.hooks.info"


def test_checked_in_stubs_are_what_the_proto_files_generate(tmp_path: Path) -> None:
    subprocess.run([str(REPO / "scripts" / "generate-kubevirt-stubs"), str(tmp_path)], check=True, timeout=120)
    fresh_dir = tmp_path / "vmhooks" / "kubevirt" / "proto"
    fresh = {path.name: path.read_text() for path in fresh_dir.iterdir()}
    checked_in = {path.name: path.read_text() for path in PROTO_DIR.glob("*_pb2*.py")}
    assert sorted(fresh) == sorted(checked_in) == [
        "info_pb2.py", "info_pb2_grpc.py", "v1alpha2_pb2.py", "v1alpha2_pb2_grpc.py",
        "v1alpha3_pb2.py", "v1alpha3_pb2_grpc.py",
    ]  # fmt: skip
    for name, text in fresh.items():
        assert checked_in[name] == text, f"{name} is stale: run scripts/generate-kubevirt-stubs"


def test_proto_files_are_installed_with_the_package() -> None:
    installed = resources.files("vmhooks.kubevirt.proto")
    assert sorted(p.name for p in installed.iterdir() if p.name.endswith(".proto")) == [
        "info.proto", "v1alpha2.proto", "v1alpha3.proto",
    ]  # fmt: skip
