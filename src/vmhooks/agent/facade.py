"""`Agent`: the host agent's one entry point. Its methods are the API's
(VDSM's names and parameters); each hands over to the module that owns the
concern. Operations on one VM are serialised by that VM's lock; operations
on different VMs run in parallel in the callers' threads."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmhooks.agent import devices, events, lifecycle, migration, stats, views
from vmhooks.agent.context import AgentContext, empty_directory
from vmhooks.config import AgentSettings

# The API's parameter names are VDSM's (vmId, deviceCustom...).
# ruff: noqa: N802, N803


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.context = AgentContext(settings)
        self.events = events.LifecycleEvents(self.context)

    @property
    def conn(self) -> Any:
        return self.context.conn

    # -- life of the agent ---------------------------------------------------

    def start(self) -> None:
        """Clean up after a crash, run before_vdsm_start, connect, re-attach."""
        ctx = self.context
        empty_directory(ctx.payload_dir)  # payload dirs of a run that crashed
        empty_directory(ctx.flags_dir)
        ctx.hooks.prune_history()
        ctx.hooks.host("start", "before_vdsm_start", None)
        ctx.connect()
        self.events.subscribe()
        events.recover(ctx)

    def stop(self) -> None:
        """After the API stopped serving: run after_vdsm_stop, release everything."""
        self.events.close()
        self.context.disconnect()
        self.context.hooks.host("stop", "after_vdsm_stop", None)
        self.context.store.close()

    # -- operations ------------------------------------------------------------

    def create(
        self,
        xml: str,
        vmId: str | None = None,
        custom: Mapping[str, object] | None = None,
        deviceCustom: Mapping[str, Mapping[str, object]] | None = None,
        launchPaused: bool = False,
    ) -> dict[str, Any]:
        return lifecycle.create(self.context, xml, vmId, custom, deviceCustom, launchPaused)

    def destroy(self, vmId: str) -> dict[str, Any]:
        return lifecycle.destroy(self.context, vmId)

    def pause(self, vmId: str) -> dict[str, Any]:
        return lifecycle.simple(self.context, "pause", vmId)

    def cont(self, vmId: str) -> dict[str, Any]:
        return lifecycle.simple(self.context, "cont", vmId)

    def hibernate(self, vmId: str) -> dict[str, Any]:
        return lifecycle.hibernate(self.context, vmId)

    def dehibernate(self, vmId: str) -> dict[str, Any]:
        return lifecycle.dehibernate(self.context, vmId)

    def device_operation(self, name: str, vmId: str, xml: str, custom: Mapping[str, object] | None = None) -> dict[str, Any]:
        return devices.device_operation(self.context, name, vmId, xml, custom)

    def setTicket(
        self,
        vmId: str,
        password: str,
        ttl: int | None = None,
        existingConnAction: str = "disconnect",
        params: Mapping[str, object] | None = None,
    ) -> dict[str, Any]:
        return devices.set_ticket(self.context, vmId, password, ttl, existingConnAction, params)

    def setNumberOfCpus(self, vmId: str, numberOfCpus: int) -> dict[str, Any]:
        return devices.set_number_of_cpus(self.context, vmId, numberOfCpus)

    def migrate(self, vmId: str, dst: str) -> dict[str, Any]:
        return migration.migrate(self.context, vmId, dst)

    def migrationCreate(
        self,
        vmId: str,
        xml: str,
        custom: Mapping[str, object] | None = None,
        deviceCustom: Mapping[str, Mapping[str, object]] | None = None,
    ) -> dict[str, Any]:
        return migration.migration_create(self.context, vmId, xml, custom, deviceCustom)

    def migrationFinish(self, vmId: str, success: bool) -> dict[str, Any]:
        return migration.migration_finish(self.context, vmId, success)

    # -- reports and read-only views -------------------------------------------

    def getStats(self, vmId: str) -> dict[str, Any]:
        return stats.vm_stats(self.context, vmId)

    def getAllVmStats(self) -> list[Any]:
        return stats.all_vm_stats(self.context)

    def getHostStats(self) -> dict[str, Any]:
        return stats.host_stats(self.context)

    def getCapabilities(self) -> dict[str, Any]:
        return stats.capabilities(self.context)

    def getXML(self, vmId: str) -> str:
        return views.vm_xml(self.context, vmId)

    def hooks_inventory(self) -> dict[str, dict[str, dict[str, str]]]:
        return views.hooks_inventory(self.context)

    def list_vms(self) -> list[dict[str, Any]]:
        return views.list_vms(self.context)

    def history(self, vmId: str | None = None, point: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return views.history(self.context, vmId, point, limit)
