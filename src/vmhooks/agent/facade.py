"""`Agent`: the host agent's one entry point. Its methods are the API's
(VDSM's names and parameters); each hands over to the module that owns the
concern. Operations on one VM are serialised by that VM's lock; operations
on different VMs run in parallel in the callers' threads. Each operation
leaves one record of its outcome in the history (`outcome`)."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from vmhooks import domxml, history
from vmhooks.agent import devices, events, lifecycle, migration, stats, views
from vmhooks.agent.context import AgentContext, empty_directory
from vmhooks.agent.outcome import Operation
from vmhooks.config import AgentSettings
from vmhooks.errors import UsageError

log = logging.getLogger("vmhooks.agent")

# Seconds the operations still in flight at stop have to end once their hooks
# are killed (SIGTERM, then SIGKILL after the runner's kill_grace).
STOP_WAIT = 10.0

# The API's parameter names are VDSM's (vmId, deviceCustom...).
# ruff: noqa: N802, N803


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.context = AgentContext(settings)
        self.events = events.LifecycleEvents(self.context)
        self._operation = self.context.operation
        self.observers = self.context.recorder.observers  # told of each chain and operation (metrics register here)

    def _vm_operation(self, name: str, vm_id: object, polled: bool = False) -> AbstractContextManager[Operation]:
        """An operation on one VM, named in its record as the registry knows it."""
        key = _vm_key(vm_id)
        known = self.context.registry.get(key) if key is not None else None
        return self._operation(name, key, vm_name=known.name if known else None, polled=polled)

    @property
    def conn(self) -> Any:
        return self.context.conn

    # -- life of the agent ---------------------------------------------------

    def start(self) -> None:
        """Clean up after a crash, run before_vdsm_start, connect, re-attach."""
        ctx = self.context
        empty_directory(ctx.payload_dir)  # payload dirs of a run that crashed
        empty_directory(ctx.flags_dir)
        ctx.recorder.maintain()
        with self._operation("start", caller="agent"):
            ctx.hooks.host("start", "before_vdsm_start", None)
        ctx.connect()
        self.events.subscribe()
        events.recover(ctx)

    def stop(self) -> None:
        """After the API stopped serving: end the operations still in flight
        (their requests had the shutdown grace already) and the event
        handlers, run after_vdsm_stop, release everything."""
        ctx = self.context
        # Their running hooks are killed and no later chain of theirs starts,
        # nor one an event handler begins meanwhile: all is recorded.
        ctx.hooks.cut_off("the agent is stopping")
        running = ctx.recorder.wait_idle(STOP_WAIT)
        if running:
            log.warning("stopping with %s still running after their hooks were killed: the next start reconciles "
                        "their VMs with libvirt", ", ".join(sorted(_described(op) for op in running)))  # fmt: skip
        self.events.close()
        ctx.disconnect()
        fired = ctx.hooks.reopen()
        with self._operation("stop", caller="agent"):
            ctx.hooks.host("stop", "after_vdsm_stop", None)
        if not ctx.registry.save_unsaved():
            log.error("the records of VMs %s on disk are out of date: the next start reconciles them with libvirt",
                      ", ".join(ctx.registry.unsaved()))  # fmt: skip
        ctx.store.close()
        if not running:  # else a thread may still wait on them: the process ends soon anyway
            fired.close()
            ctx.hooks.cutoff.close()

    # -- operations ------------------------------------------------------------

    def create(
        self,
        xml: str,
        vmId: str | None = None,
        custom: Mapping[str, object] | None = None,
        deviceCustom: Mapping[str, Mapping[str, object]] | None = None,
        launchPaused: bool = False,
    ) -> dict[str, Any]:
        with self._vm_operation("create", vmId):
            return lifecycle.create(self.context, xml, vmId, custom, deviceCustom, launchPaused)

    def destroy(self, vmId: str) -> dict[str, Any]:
        with self._vm_operation("destroy", vmId):
            return lifecycle.destroy(self.context, vmId)

    def pause(self, vmId: str) -> dict[str, Any]:
        with self._vm_operation("pause", vmId):
            return lifecycle.simple(self.context, "pause", vmId)

    def cont(self, vmId: str) -> dict[str, Any]:
        with self._vm_operation("cont", vmId):
            return lifecycle.simple(self.context, "cont", vmId)

    def hibernate(self, vmId: str) -> dict[str, Any]:
        with self._vm_operation("hibernate", vmId):
            return lifecycle.hibernate(self.context, vmId)

    def dehibernate(self, vmId: str) -> dict[str, Any]:
        with self._vm_operation("dehibernate", vmId):
            return lifecycle.dehibernate(self.context, vmId)

    def device_operation(self, name: str, vmId: str, xml: str, custom: Mapping[str, object] | None = None) -> dict[str, Any]:
        with self._vm_operation(name, vmId):
            return devices.device_operation(self.context, name, vmId, xml, custom)

    def setTicket(
        self,
        vmId: str,
        password: str,
        ttl: int | None = None,
        existingConnAction: str = "disconnect",
        params: Mapping[str, object] | None = None,
    ) -> dict[str, Any]:
        with self._vm_operation("setTicket", vmId):
            return devices.set_ticket(self.context, vmId, password, ttl, existingConnAction, params)

    def setNumberOfCpus(self, vmId: str, numberOfCpus: int) -> dict[str, Any]:
        with self._vm_operation("setNumberOfCpus", vmId):
            return devices.set_number_of_cpus(self.context, vmId, numberOfCpus)

    def migrate(self, vmId: str, dst: str) -> dict[str, Any]:
        with self._vm_operation("migrate", vmId):
            return migration.migrate(self.context, vmId, dst)

    def migrationCreate(
        self,
        vmId: str,
        xml: str,
        custom: Mapping[str, object] | None = None,
        deviceCustom: Mapping[str, Mapping[str, object]] | None = None,
    ) -> dict[str, Any]:
        with self._vm_operation("migrationCreate", vmId):
            return migration.migration_create(self.context, vmId, xml, custom, deviceCustom)

    def migrationFinish(self, vmId: str, success: bool) -> dict[str, Any]:
        with self._vm_operation("migrationFinish", vmId):
            return migration.migration_finish(self.context, vmId, success)

    # -- reports and read-only views -------------------------------------------

    # Polled all the time: kept in the history only when a hook ran, and
    # then only the latest few per VM (history.POLLED_KEPT).

    def getStats(self, vmId: str) -> dict[str, Any]:
        with self._vm_operation("getStats", vmId, polled=True):
            return stats.vm_stats(self.context, vmId)

    def getAllVmStats(self) -> list[Any]:
        with self._operation("getAllVmStats", polled=True):
            return stats.all_vm_stats(self.context)

    def getHostStats(self) -> dict[str, Any]:
        with self._operation("getStats", polled=True):
            return stats.host_stats(self.context)

    def getCapabilities(self) -> dict[str, Any]:
        with self._operation("getCapabilities", polled=True):
            return stats.capabilities(self.context)

    def getXML(self, vmId: str) -> str:
        return views.vm_xml(self.context, vmId)

    def hooks_inventory(self) -> dict[str, dict[str, dict[str, str]]]:
        return views.hooks_inventory(self.context)

    def list_vms(self) -> list[dict[str, Any]]:
        return views.list_vms(self.context)

    def history(
        self,
        vmId: str | None = None,
        point: str | None = None,
        limit: int = history.DEFAULT_PAGE,
        before: int | None = None,
        since: float | None = None,
        until: float | None = None,
        failed: bool = False,
    ) -> dict[str, Any]:
        return views.history(self.context, vmId, point, limit, before, since, until, failed)

    def history_vms(self) -> list[dict[str, Any]]:
        return views.history_vms(self.context)


def _vm_key(vm_id: object) -> str | None:
    """The VM an operation names, for its record: a well-formed UUID only
    (anything else is refused by the operation itself)."""
    try:
        return domxml.normalise_uuid(vm_id) if vm_id is not None else None
    except UsageError:
        return None


def _described(operation: Operation) -> str:
    return f"{operation.name} of VM {operation.vm_id}" if operation.vm_id else operation.name
