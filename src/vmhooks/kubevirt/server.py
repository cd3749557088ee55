"""The gRPC side of the KubeVirt sidecar: the Info service and both
Callbacks versions on `<socket-dir>/<name>.sock`, each call handed to
`Sidecar` with a deadline that leaves time to answer before virt-launcher
gives up (1 s for Info, 1 minute per call)."""
from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc

from vmhooks.errors import HookError, UsageError, VmhooksError
from vmhooks.kubevirt.proto import (
    info_pb2,
    info_pb2_grpc,
    v1alpha2_pb2,
    v1alpha2_pb2_grpc,
    v1alpha3_pb2,
    v1alpha3_pb2_grpc,
)
from vmhooks.kubevirt.sidecar import Emit, JsonLines, Sidecar, SidecarSettings

log = logging.getLogger("vmhooks.kubevirt")

VERSIONS = ("v1alpha2", "v1alpha3")
HOOK_POINTS = ("OnDefineDomain", "PreCloudInitIso", "Shutdown")  # Shutdown: v1alpha3 only
CALL_BUDGET = 55.0  # seconds for a call that comes with no deadline (virt-launcher sets 60)
ANSWER_MARGIN = 3.0  # kept back from the caller's deadline to kill a late hook's group and answer
WORKERS = 8  # calls served at once; more wait their turn (their deadline runs meanwhile)
STOP_GRACE = 5.0  # seconds calls in flight get to finish when the sidecar stops

Answer = TypeVar("Answer")


def status_for(error: VmhooksError) -> grpc.StatusCode:
    if isinstance(error, UsageError):
        return grpc.StatusCode.INVALID_ARGUMENT  # the VMI, its annotations or the XML: nothing ran
    if isinstance(error, HookError):
        return grpc.StatusCode.FAILED_PRECONDITION  # a hook refused: retrying will not help
    return grpc.StatusCode.INTERNAL


def call_deadline(time_remaining: float | None) -> float:
    """The monotonic time by which a call's hooks must be done."""
    budget = CALL_BUDGET if time_remaining is None else min(CALL_BUDGET, time_remaining - ANSWER_MARGIN)
    return time.monotonic() + max(budget, 0.0)


class InfoServicer(info_pb2_grpc.InfoServicer):
    def __init__(self, name: str) -> None:
        self.result = info_pb2.InfoResult(
            name=name,
            hookPoints=[info_pb2.HookPoint(name=point, priority=0) for point in HOOK_POINTS],
            versions=list(VERSIONS),
        )

    def Info(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (gRPC names)
        return self.result


class CallbacksServicer:
    """Both Callbacks versions: the same calls, each answered in its
    version's own messages (`messages`: the v1alpha2 or v1alpha3 module)."""

    def __init__(self, sidecar: Sidecar, messages: Any, emit: Emit, stop: threading.Event) -> None:
        self.sidecar = sidecar
        self.messages = messages
        self.emit = emit
        self.stop = stop

    def OnDefineDomain(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        xml = self._call(
            context,
            "OnDefineDomain",
            lambda deadline: self.sidecar.define_domain(request.domainXML, request.vmi, deadline),
        )
        return self.messages.OnDefineDomainResult(domainXML=xml)

    def PreCloudInitIso(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        data, source = self._call(
            context,
            "PreCloudInitIso",
            lambda deadline: self.sidecar.pre_cloud_init_iso(
                request.cloudInitData, request.cloudInitNoCloudSource, request.vmi, deadline
            ),
        )
        return self.messages.PreCloudInitIsoResult(cloudInitData=data, cloudInitNoCloudSource=source)

    def Shutdown(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        try:
            self._call(context, "Shutdown", self.sidecar.shutdown)
        finally:
            self.stop.set()  # the server stops once this answer is out, and the process exits 0
        return self.messages.ShutdownResult()

    def _call(self, context: grpc.ServicerContext, call: str, work: Callable[[float], Answer]) -> Answer:
        started = time.monotonic()
        try:
            answer = work(call_deadline(context.time_remaining()))
        except VmhooksError as exc:
            code = status_for(exc)
            self.emit({"level": "error", "msg": f"{call} failed: {exc}", "call": call, "code": code.name})
            context.abort(code, f"vmhooks: {exc}")
        except Exception as exc:  # a bug of ours: one line to virt-launcher, the traceback to stderr
            log.exception("%s failed", call)
            msg = f"{call} failed: internal error: {exc!r}"
            self.emit({"level": "error", "msg": msg, "call": call, "code": "INTERNAL"})
            context.abort(grpc.StatusCode.INTERNAL, f"vmhooks: internal error in {call}: {exc!r}")
        self.emit({"msg": f"{call} answered", "call": call, "ms": round((time.monotonic() - started) * 1000, 1)})
        return answer


def claim_socket(path: Path, emit: Emit) -> None:
    """Make room for our socket: a stale one from a dead process goes, a
    live one (another sidecar of the same name) or anything else is an error."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise VmhooksError(f"{path} exists and is not a socket: not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)
        emit({"msg": f"replaced the stale socket {path} of a process that is gone"})
        return
    except OSError as exc:
        raise VmhooksError(f"cannot tell whether {path} is in use: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise VmhooksError(f"{path} is served by another live process (another sidecar with the same --name?)")


def _bind(server: grpc.Server, path: Path, mode: int) -> tuple[int, int]:
    """Bind `path` created 0600 (no moment with a wider mode), then give it
    `mode`; its (device, inode), to remove only our own socket at exit."""
    previous = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{path}")
    except RuntimeError as exc:
        raise VmhooksError(f"cannot listen on {path}: {exc}") from None
    finally:
        os.umask(previous)
    os.chmod(path, mode)
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _remove_if_ours(path: Path, identity: tuple[int, int]) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) == identity:
        path.unlink(missing_ok=True)


def serve(settings: SidecarSettings, emit: Emit | None = None) -> int:
    """Serve until Shutdown (then exit 0 right after answering) or SIGTERM/SIGINT."""
    emit = emit or JsonLines()
    sidecar = Sidecar(settings, emit)  # a bad --properties fails here, before anything is made
    stop = threading.Event()
    server: grpc.Server | None = None
    identity: tuple[int, int] | None = None
    try:
        try:
            settings.socket_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VmhooksError(f"cannot make the socket directory {settings.socket_dir}: {exc.strerror}") from None
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="kubevirt-call"))
        info_pb2_grpc.add_InfoServicer_to_server(InfoServicer(settings.name), server)
        for messages, add in (
            (v1alpha2_pb2, v1alpha2_pb2_grpc.add_CallbacksServicer_to_server),
            (v1alpha3_pb2, v1alpha3_pb2_grpc.add_CallbacksServicer_to_server),
        ):
            add(CallbacksServicer(sidecar, messages, emit, stop), server)
        claim_socket(settings.socket_path, emit)
        identity = _bind(server, settings.socket_path, settings.socket_mode)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        server.start()
        emit({
            "msg": f"serving KubeVirt hook calls on {settings.socket_path}",
            "socket": str(settings.socket_path), "hooks_dir": str(settings.hooks_dir),
            "state_dir": str(settings.state_path), "versions": list(VERSIONS),
        })  # fmt: skip
        while not stop.wait(0.5):  # wake up now and then: signals run only in the main thread
            pass
        server.stop(STOP_GRACE).wait()
    finally:
        if server is not None:
            server.stop(None)
        if identity is not None:
            _remove_if_ours(settings.socket_path, identity)
        sidecar.close()
    emit({"msg": "sidecar stopped"})
    return 0
