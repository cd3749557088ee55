"""Agent-to-agent migration on libvirt's test driver: mutual TLS, and the
source and destination hooks that may refuse a migration. (The test driver
cannot migrate: the live migration itself is tested on real QEMU hosts in
test_realhost_agent.py.)"""
from __future__ import annotations

import http.client
import os
import pwd
import socket
import ssl
import uuid
from functools import partial
from pathlib import Path

import pytest
from agentproc import AgentProcess, domain_xml, trace_hooks, traced, whole_history
from realhost import free_port
from tlsmaterial import make_tls_material

from vmhooks.client import AgentUnreachable, Client, RpcError


class Host:
    """One 'host': an agent on its own test driver, listening for peers over TLS."""

    def __init__(self, root: Path, tls, name: str) -> None:
        self.hooks = root / f"{name}-hooks"
        self.hooks.mkdir(mode=0o755)
        creds = tls.authority.issue(tls.directory, name, f"agent-{name}", server=True, client=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.agent = AgentProcess(
            root / name, self.hooks, "test:///default",
            "--listen", self.address, "--tls-cert", str(creds.cert), "--tls-key", str(creds.key),
            "--tls-ca", str(tls.ca),
        )  # fmt: skip

    def hook(self, point: str, name: str, body: str) -> None:
        directory = self.hooks / point
        directory.mkdir(mode=0o755, exist_ok=True)
        path = directory / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)


@pytest.fixture
def tls(tmp_path: Path):
    return make_tls_material(tmp_path / "tls")


@pytest.fixture
def hosts(tmp_path: Path, tls):
    os.chmod(tmp_path, 0o755)
    source, destination = Host(tmp_path, tls, "src"), Host(tmp_path, tls, "dst")
    log = tmp_path / "trace.log"
    points = ["before_vm_migrate_source", "after_vm_migrate_source",
              "before_vm_migrate_destination", "after_vm_migrate_destination"]  # fmt: skip
    for host in (source, destination):
        trace_hooks(host.hooks, points, log)
    source.agent.start()
    destination.agent.start()
    yield source, destination, log
    for host in (source, destination):
        host.agent.stop()


def test_cantmigrate_refuses_and_the_vm_keeps_running(hosts):
    source, destination, log = hosts
    source.hook("before_vm_migrate_source", "50_cantmigrate",
                'if [ -n "${cantmigrate+x}" ]; then echo "cantmigrate: cannot migrate this VM" >&2; exit 2; fi')  # fmt: skip
    vm_id = str(uuid.uuid4())
    source.agent.call("VM.create", xml=domain_xml("pinned", vm_id), custom={"cantmigrate": ""})
    with pytest.raises(RpcError) as error:
        source.agent.call("VM.migrate", vmId=vm_id, dst=destination.address)
    assert "50_cantmigrate failed (exit 2, chain stopped): cantmigrate: cannot migrate this VM" in str(error.value)
    assert traced(log, vm_id) == ["before_vm_migrate_source"]
    assert source.agent.call("VM.list")[0]["status"] == "up"
    assert destination.agent.call("VM.list") == []


def test_destination_hook_refuses_cleanly(hosts):
    source, destination, log = hosts
    destination.hook("before_vm_migrate_destination", "50_full", "echo 'host is full' >&2; exit 1")
    vm_id = str(uuid.uuid4())
    source.agent.call("VM.create", xml=domain_xml("refused", vm_id))
    with pytest.raises(RpcError) as error:
        source.agent.call("VM.migrate", vmId=vm_id, dst=destination.address)
    assert "before_vm_migrate_destination: 50_full failed (exit 1): host is full" in str(error.value)
    assert traced(log, vm_id) == ["before_vm_migrate_source", "before_vm_migrate_destination"]
    assert source.agent.call("VM.list")[0]["status"] == "up"
    assert destination.agent.call("VM.list") == []


def test_libvirt_failure_leaves_the_vm_on_the_source(hosts):
    source, destination, log = hosts
    vm_id = str(uuid.uuid4())
    source.agent.call("VM.create", xml=domain_xml("stays", vm_id))
    with pytest.raises(RpcError) as error:
        source.agent.call("VM.migrate", vmId=vm_id, dst=destination.address)
    assert error.value.code == 5 and "not supported by this libvirt driver" in str(error.value)
    assert traced(log, vm_id) == ["before_vm_migrate_source", "before_vm_migrate_destination"]
    assert source.agent.call("VM.list")[0]["status"] == "up"
    assert destination.agent.call("VM.list") == []  # the incoming record was dropped


def test_migrate_to_an_unreachable_agent_says_so(hosts):
    source, _destination, _log = hosts
    vm_id = str(uuid.uuid4())
    source.agent.call("VM.create", xml=domain_xml("lonely", vm_id))
    with pytest.raises(RpcError) as error:
        source.agent.call("VM.migrate", vmId=vm_id, dst=f"127.0.0.1:{free_port()}")
    assert "no agent at 127.0.0.1" in str(error.value)
    assert source.agent.call("VM.list")[0]["status"] == "up"


def test_peer_port_requires_mutual_tls(hosts, tls):
    _source, destination, _log = hosts
    client = tls.authority.issue(tls.directory, "peer", "peer", client=True)
    good = Client(address=destination.address, tls=tls.client_context(client))

    def answers(peer: Client) -> int:
        """The JSON-RPC error code the agent answers a peer with (it knows no such VM)."""
        with pytest.raises(RpcError) as answer:
            peer.call("VM.migrationFinish", vmId=str(uuid.uuid4()), success=False)
        return answer.value.code

    assert answers(good) == 2
    # Peers get the migration handshake and nothing else.
    with pytest.raises(RpcError) as refused:
        good.call("VM.create", xml=domain_xml("intruder", str(uuid.uuid4())))
    assert refused.value.code == -32601
    assert destination.agent.call("VM.list") == []
    # A client certificate from another CA.
    stranger = Client(address=destination.address, tls=tls.client_context(tls.other_client))
    with pytest.raises(AgentUnreachable):
        answers(stranger)
    # No client certificate at all.
    context = ssl.create_default_context(cafile=str(tls.ca))
    bare = Client(address=destination.address, tls=context)
    with pytest.raises(AgentUnreachable):
        answers(bare)
    # A server certificate from another CA is refused by the client.
    wrong_ca = Client(address=destination.address, tls=tls.client_context(client, ca=tls.other_ca))
    with pytest.raises(AgentUnreachable, match="TLS"):
        answers(wrong_ca)
    # Plain HTTP gets nothing.
    plain = http.client.HTTPConnection("127.0.0.1", destination.port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, socket.timeout)):
        plain.request("POST", "/rpc", b'{"jsonrpc": "2.0", "method": "VM.list", "id": 1}')
        plain.getresponse().read()
    # And the agent still serves.
    assert answers(good) == 2


def test_listen_without_tls_is_refused(tmp_path, hooks_dir):
    agent = AgentProcess(tmp_path / "a", hooks_dir, "test:///default", "--listen", "127.0.0.1:1")
    with pytest.raises(RuntimeError, match="needs --tls-cert, --tls-key and --tls-ca"):
        agent.start()


def test_history_names_the_peer_and_the_local_caller(hosts):
    source, destination, _log = hosts
    vm_id = str(uuid.uuid4())
    source.agent.call("VM.create", xml=domain_xml("asked", vm_id))
    with pytest.raises(RpcError):
        source.agent.call("VM.migrate", vmId=vm_id, dst=destination.address)
    me = f"uid {os.getuid()} ({pwd.getpwuid(os.getuid()).pw_name}) pid {os.getpid()}"
    asked = {(o["operation"], o["caller"]) for o in whole_history(partial(source.agent.call, "Host.getHookHistory"), vmId=vm_id)}
    assert {("create", me), ("migrate", me)} <= asked
    received = whole_history(partial(destination.agent.call, "Host.getHookHistory"), vmId=vm_id)
    assert received and {o["caller"] for o in received} == {"peer agent-src at 127.0.0.1"}
    assert "by peer agent-src at 127.0.0.1" in destination.agent.log()
