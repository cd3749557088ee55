"""Live migration between two agents (mutual TLS between them).

Source: `migrate` runs the source points, asks the destination for an offer
(`migrationCreate` there runs the destination points and answers with the
XML to run, its libvirt URI and a migration address), checks the offer,
lets libvirt migrate peer to peer, then tells the destination
(`migrationFinish`, which adopts the VM and runs its after points).
"""
from __future__ import annotations

import logging
import socket
import urllib.parse
from collections.abc import Mapping
from typing import Any

import libvirt

from vmhooks import domxml
from vmhooks.agent import libvirtconn as lv
from vmhooks.agent.context import AgentContext
from vmhooks.agent.registry import RUNNING, summary
from vmhooks.client import Client, client_tls_context
from vmhooks.config import port_range, split_address
from vmhooks.errors import StateError, UsageError, VmhooksError, WrongStateError
from vmhooks.store import VmRecord

log = logging.getLogger("vmhooks.agent")

# What a destination may ask our libvirtd to connect to: libvirt's network
# transports, without options that run programs or turn verification off.
_LIBVIRT_TRANSPORTS = frozenset({"", "tls", "tcp", "ssh", "libssh", "libssh2", "unix"})
_LIBVIRT_URI_OPTIONS = frozenset({"socket", "mode", "name"})


# -- source ------------------------------------------------------------------


def migrate(ctx: AgentContext, vm_id: str, dst: str) -> dict[str, Any]:
    """Live-migrate to the agent at `dst` (HOST:PORT, mutual TLS).

    Source hooks may refuse; the destination's hooks may refuse or edit the
    XML it will run; libvirt migrates peer to peer. Any failure leaves the
    VM running here and says why."""
    peer = _peer(ctx, dst)
    hooks, registry = ctx.hooks, ctx.registry
    with registry.vm(vm_id, RUNNING) as vm:
        domain = ctx.domain(vm)
        xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
        hooks.vm("migrate", "before_vm_migrate_source", xml, vm)
        devices = domxml.custom_devices(vm.xml, vm.device_custom)
        for props, device_xml in devices:
            hooks.device("migrate", "before_device_migrate_source", device_xml, vm, props)
        offer = peer.call("VM.migrationCreate", vmId=vm.vm_id, xml=xml, custom=vm.custom, deviceCustom=vm.device_custom)
        try:
            check_offer(offer, vm)
            vm = registry.update(vm, status="migrating")  # before libvirt: a full disk stops it here
        except (WrongStateError, StateError):
            _tell_peer(peer, vm.vm_id, False)
            raise
        try:
            params = {libvirt.VIR_MIGRATE_PARAM_URI: _reachable_uri(offer["migrationUri"], dst)}
            if offer.get("listenAddress"):  # else the destination's QEMU listens on every address
                params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = offer["listenAddress"]
            if offer["xml"] != xml:
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = offer["xml"]  # honoured, unlike upstream
            flags = libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
            if domain.isPersistent():
                flags |= libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
            lv.call(f"migrating VM {vm.name} to {dst}", domain.migrateToURI3, offer["libvirtUri"], params, flags)
        except BaseException:
            _tell_peer(peer, vm.vm_id, False)
            if lv.is_active(domain):
                registry.follow(vm, status=lv.status_of(domain))
            else:  # it left this host all the same: nothing of it is ours to manage
                log.warning("VM %s: migration failed, and the VM is no longer on this host", vm.vm_id)
                registry.forget(vm.vm_id)
                hooks.vm("migrate", "after_vm_destroy", xml, vm)
            raise
        registry.forget(vm.vm_id)
        for props, device_xml in devices:
            hooks.device("migrate", "after_device_migrate_source", device_xml, vm, props)
        hooks.vm("migrate", "after_vm_migrate_source", xml, vm)
        finished = _tell_peer(peer, vm.vm_id, True)
        return {"vmId": vm.vm_id, "name": vm.name, "status": "migrated", "destination": dst,
                "destinationStatus": finished.get("status") if finished else None}  # fmt: skip


def _peer(ctx: AgentContext, address: str) -> Client:
    settings = ctx.settings
    split_address(address, "dst")
    if not (settings.tls_cert and settings.tls_key and settings.tls_ca):
        raise UsageError("migration needs this agent's --tls-cert, --tls-key and --tls-ca")
    context = client_tls_context(settings.tls_cert, settings.tls_key, settings.tls_ca)
    return Client(address=address, tls=context)


def _tell_peer(peer: Client, vm_id: str, success: bool) -> dict[str, Any] | None:
    try:
        return peer.call("VM.migrationFinish", vmId=vm_id, success=success)
    except VmhooksError as exc:
        log.error("VM %s: telling the destination the migration %s failed: %s",
                  vm_id, "succeeded" if success else "failed", exc)  # fmt: skip
        return None


def check_offer(offer: object, vm: VmRecord) -> None:
    """A destination's answer is input too: refuse what could turn our own
    libvirtd against us (an ext:// transport runs a program) or start
    another VM than the one we migrate."""
    if not isinstance(offer, dict) or not all(isinstance(offer.get(k), str) for k in ("xml", "libvirtUri", "migrationUri")):
        raise WrongStateError("the destination's migration offer is malformed")
    uri = urllib.parse.urlsplit(offer["libvirtUri"])
    driver, _, transport = uri.scheme.partition("+")
    options = {key for key, _ in urllib.parse.parse_qsl(uri.query, keep_blank_values=True)}
    if not driver or transport not in _LIBVIRT_TRANSPORTS or not options <= _LIBVIRT_URI_OPTIONS:
        raise WrongStateError(f"the destination offered a libvirt URI we refuse: {offer['libvirtUri']!r}")
    if not offer["migrationUri"].startswith("tcp://"):
        raise WrongStateError(f"the destination offered a migration URI we refuse: {offer['migrationUri']!r}")
    if offer.get("listenAddress") is not None and not isinstance(offer["listenAddress"], str):
        raise WrongStateError("the destination's migration offer is malformed")
    try:
        root = domxml.parse_domain(offer["xml"])
    except UsageError as exc:
        raise WrongStateError(f"the destination offered a domain XML we refuse: {exc}") from None
    if domxml.identity(root) != (vm.vm_id, vm.name):
        raise WrongStateError("the destination offered the XML of another domain (uuid or name differs)")


def _reachable_uri(uri: str, dst: str) -> str:
    """A destination that listens for migrations on every address (0.0.0.0,
    ::) gets the data where its agent was reached, not at 0.0.0.0 (which
    would be this host itself)."""
    scheme, _, address = uri.partition("://")
    host, port = split_address(address, "migration URI")
    if host not in ("0.0.0.0", "::"):
        return uri
    peer = split_address(dst, "dst")[0]
    return f"{scheme}://[{peer}]:{port}" if ":" in peer else f"{scheme}://{peer}:{port}"


# -- destination ---------------------------------------------------------------


def migration_create(
    ctx: AgentContext,
    vm_id: str,
    xml: str,
    custom: Mapping[str, object] | None = None,
    device_custom: Mapping[str, Mapping[str, object]] | None = None,
) -> dict[str, Any]:
    """Destination side, before libvirt migrates: run the destination hooks
    and say where and with which XML to migrate."""
    root = domxml.parse_domain(xml)
    vm_id, rewritten = domxml.ensure_uuid(root, vm_id)
    if rewritten:
        xml = domxml.to_string(root)
    _, name = domxml.identity(root)
    vm_custom = ctx.hooks.check_custom(custom, "custom property")
    checked_devices = {
        str(key).lower(): ctx.hooks.check_custom(props, "device custom property")
        for key, props in (device_custom or {}).items()
    }
    with ctx.registry.locked(vm_id, blocking=False):  # busy: e.g. a migration from this very host
        return _create_incoming(ctx, vm_id, name or vm_id, xml, vm_custom, checked_devices)


def _create_incoming(
    ctx: AgentContext, vm_id: str, name: str, xml: str, vm_custom: dict[str, str], device_custom: dict[str, dict[str, str]]
) -> dict[str, Any]:
    registry, hooks = ctx.registry, ctx.hooks
    if vm_id in registry or lv.is_active(ctx.lookup(vm_id)):
        raise WrongStateError(f"VM {vm_id} already runs on this host")
    vm = registry.put(VmRecord(vm_id, name, "incoming", xml, vm_custom, device_custom))
    try:
        result = hooks.vm("migrationCreate", "before_vm_migrate_destination", xml, vm)
        for props, device_xml in domxml.custom_devices(vm.xml, vm.device_custom):
            hooks.device("migrationCreate", "before_device_migrate_destination", device_xml, vm, props)
        address = _migration_address(ctx)
        registry.update(vm, xml=result.payload)
    except BaseException:
        registry.forget(vm_id)
        raise
    ctx.schedule(ctx.incoming_timeout, _expire_incoming, ctx, vm_id)
    return {
        "xml": result.payload,
        "libvirtUri": ctx.settings.migration_libvirt_uri or ctx.settings.libvirt_uri,
        "migrationUri": f"tcp://{address}",
        "listenAddress": split_address(address)[0],  # where the port was found free
    }


def _expire_incoming(ctx: AgentContext, vm_id: str) -> None:
    """An incoming VM that never arrived (the source died before libvirt
    started) is dropped; one still arriving is given more time."""
    try:
        with ctx.registry.locked(vm_id):
            vm = ctx.registry.get(vm_id)
            if vm is None or vm.status != "incoming":
                return
            if ctx.lookup(vm_id) is not None:
                ctx.schedule(ctx.incoming_timeout, _expire_incoming, ctx, vm_id)
                return
            with ctx.operation("event", vm_id, vm_name=vm.name, caller="agent",
                               reason="the announced migration never arrived: forgotten"):  # fmt: skip
                ctx.registry.forget(vm_id)
    except Exception:
        log.exception("expiring incoming VM %s", vm_id)


def migration_finish(ctx: AgentContext, vm_id: str, success: bool) -> dict[str, Any]:
    """Destination side, after libvirt: adopt the VM and run the after hooks."""
    with ctx.registry.vm(vm_id, frozenset({"incoming"}) | RUNNING) as vm:
        if vm.status in RUNNING:
            return summary(vm)  # already adopted when libvirt said it arrived
        domain = ctx.lookup(vm.vm_id)
        if not lv.is_active(domain):
            ctx.registry.forget(vm.vm_id)
            return {"vmId": vm.vm_id, "name": vm.name, "status": "down"}
        assert domain is not None
        if not success:  # libvirt runs it here all the same: manage it, do not orphan it
            log.warning("VM %s: the source reports a failed migration, but it runs here", vm.vm_id)
        return ctx.registry.answer(adopt(ctx, vm, domain, "migrationFinish"))


def adopt(ctx: AgentContext, vm: VmRecord, domain: libvirt.virDomain, operation: str) -> VmRecord:
    live = domain.XMLDesc(0)
    vm = ctx.registry.follow(vm, status=lv.status_of(domain), xml=live)
    for props, device_xml in domxml.custom_devices(vm.xml, vm.device_custom):
        ctx.hooks.device(operation, "after_device_migrate_destination", device_xml, vm, props)
    ctx.hooks.vm(operation, "after_vm_migrate_destination", live, vm)
    return vm


def adopt_if_still_incoming(ctx: AgentContext, vm_id: str) -> None:
    """The source never said how its migration ended (it died, or the
    network did): libvirt says the VM arrived, so take it over."""
    try:
        with ctx.registry.locked(vm_id):
            vm = ctx.registry.get(vm_id)
            domain = ctx.lookup(vm_id) if vm is not None and vm.status == "incoming" else None
            if vm is not None and domain is not None and lv.is_active(domain):
                with ctx.operation("event", vm_id, vm_name=vm.name, caller="agent",
                                   reason="migrated in, but the source never finished it: adopted"):  # fmt: skip
                    adopt(ctx, vm, domain, "event")
    except Exception:
        log.exception("adopting incoming VM %s", vm_id)


def _migration_address(ctx: AgentContext) -> str:
    """HOST:PORT where this host's QEMU will listen for the incoming VM."""
    settings = ctx.settings
    host = settings.migration_address or (split_address(settings.listen)[0] if settings.listen else "127.0.0.1")
    for port in port_range(settings.migration_ports):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    raise WrongStateError(f"no free migration port in {settings.migration_ports} on {host}")
