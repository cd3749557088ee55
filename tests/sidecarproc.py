"""A real `vmhooks kubevirt-sidecar` process, and a gRPC client that plays
virt-launcher against it: the same calls, messages and deadlines (1 s for
Info, 1 minute per call), from the stubs of the sidecar's own .proto files
(tests/test_kubevirt_proto.py checks those against KubeVirt's wire facts
and against a fresh regeneration)."""
from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from vmhooks.kubevirt.proto import (
    info_pb2,
    info_pb2_grpc,
    v1alpha2_pb2,
    v1alpha2_pb2_grpc,
    v1alpha3_pb2,
    v1alpha3_pb2_grpc,
)

DATA = Path(__file__).resolve().parent / "data"
DOMAIN_XML = (DATA / "kubevirt-domain.xml").read_bytes()
VMI_JSON = (DATA / "kubevirt-vmi.json").read_bytes()
INFO_TIMEOUT = 1.0  # what virt-launcher gives Info
CALL_TIMEOUT = 60.0  # what it gives every callback
_RUNS = itertools.count()
VERSIONS = {"v1alpha2": (v1alpha2_pb2, v1alpha2_pb2_grpc), "v1alpha3": (v1alpha3_pb2, v1alpha3_pb2_grpc)}


def vmi_json(annotations: dict[str, Any] | None = None, uid: str | None = None, drop: tuple[str, ...] = ()) -> bytes:
    """The fixture VMI with annotations replaced (None removes one)."""
    vmi = json.loads(VMI_JSON)
    current = vmi["metadata"]["annotations"]
    for name, value in (annotations or {}).items():
        if value is None:
            current.pop(name, None)
        else:
            current[name] = value if isinstance(value, str) else json.dumps(value)
    for name in drop:
        current.pop(name, None)
    if uid is not None:
        vmi["metadata"]["uid"] = uid
    return json.dumps(vmi).encode()


class Launcher:
    """What virt-launcher does on one socket: Info, then the callbacks of
    the newest version both sides speak (or the one asked for)."""

    def __init__(self, socket: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix:{socket}")

    def close(self) -> None:
        self.channel.close()

    def info(self, timeout: float = INFO_TIMEOUT) -> Any:
        return info_pb2_grpc.InfoStub(self.channel).Info(info_pb2.InfoParams(), timeout=timeout)

    def _stub(self, version: str) -> tuple[Any, Any]:
        messages, services = VERSIONS[version]
        return messages, services.CallbacksStub(self.channel)

    def on_define_domain(
        self, xml: bytes = DOMAIN_XML, vmi: bytes = VMI_JSON, version: str = "v1alpha3", timeout: float = CALL_TIMEOUT
    ) -> bytes:
        messages, stub = self._stub(version)
        params = messages.OnDefineDomainParams(domainXML=xml, vmi=vmi)
        return stub.OnDefineDomain(params, timeout=timeout).domainXML

    def pre_cloud_init_iso(
        self, data: bytes, source: bytes, vmi: bytes = VMI_JSON, version: str = "v1alpha3", timeout: float = CALL_TIMEOUT
    ) -> tuple[bytes, bytes]:
        messages, stub = self._stub(version)
        params = messages.PreCloudInitIsoParams(cloudInitData=data, cloudInitNoCloudSource=source, vmi=vmi)
        result = stub.PreCloudInitIso(params, timeout=timeout)
        return result.cloudInitData, result.cloudInitNoCloudSource

    def shutdown(self, timeout: float = CALL_TIMEOUT) -> None:
        messages, stub = self._stub("v1alpha3")
        stub.Shutdown(messages.ShutdownParams(), timeout=timeout)


class SidecarProcess:
    """`vmhooks kubevirt-sidecar` with its sockets and state under `root`."""

    def __init__(self, root: Path, hooks_dir: Path, *extra: str, name: str = "vmhooks") -> None:
        self.root = root
        self.hooks_dir = hooks_dir
        self.extra = extra
        self.name = name
        self.socket_dir = root / "kubevirt-hooks"
        self.socket = self.socket_dir / f"{name}.sock"
        run = next(_RUNS)  # two processes in one pod directory keep their own output
        self.stdout_path = root / f"{name}-{run}.stdout"
        self.stderr_path = root / f"{name}-{run}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vmhooks.cli", "kubevirt-sidecar", "--hooks-dir", str(self.hooks_dir),
            "--socket-dir", str(self.socket_dir), "--name", self.name, *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 20.0) -> SidecarProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.output()}")
            if any("serving" in line.get("msg", "") for line in self.lines()):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"sidecar did not start within {timeout}s:\n{self.output()}")

    def launcher(self) -> Launcher:
        return Launcher(self.socket)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"sidecar did not stop within {timeout}s:\n{self.output()}") from None

    def lines(self) -> list[dict[str, Any]]:
        """The JSON lines of stdout so far (every line must be one)."""
        try:
            text = self.stdout_path.read_text()
        except FileNotFoundError:
            return []
        complete = text[: text.rfind("\n") + 1]  # a line being written is not one yet
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def output(self) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            try:
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')}")
            except FileNotFoundError:
                pass
        return "\n".join(parts)
