"""The VMs the agent runs: their records, in memory and in SQLite, and one
lock per VM that serialises the operations on it.

Two kinds of change, for a full disk:
- `put`/`update`, before libvirt acts: SQLite is written first, so a write
  that fails leaves memory and disk as they were, and the operation stops
  there with the error (nothing ran in libvirt, no after hook).
- `follow`/`forget`, once libvirt has acted (or to undo a record that never
  became a VM): memory follows at once, since it must say what runs; a
  disk write that fails is kept and retried before every later write, and
  recovery reconciles the disk with libvirt at the next start anyway.

A VM's lock lives only while the VM is known or someone holds or waits for
it: ids that come and go leave nothing behind.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vmhooks import domxml
from vmhooks.agent.outcome import note_vm
from vmhooks.agent.vmlock import OFFERED_TOKEN, VmLock
from vmhooks.errors import NoSuchVmError, StateError, WrongStateError
from vmhooks.store import Store, VmRecord

log = logging.getLogger("vmhooks.agent")

RUNNING = frozenset({"up", "paused"})

class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._vms: dict[str, VmRecord] = {}
        self._locks: dict[str, VmLock] = {}
        self._guard = threading.Lock()
        self._started: dict[str, float] = {}  # when each VM was last seen to start running
        self._unsaved: dict[str, VmRecord | None] = {}  # vm_id -> record (None: deleted) not on disk yet
        self._saving = threading.Lock()

    def load(self) -> list[VmRecord]:
        """Take the records SQLite kept from the last run."""
        records = self.store.vms()
        self._vms.update((vm.vm_id, vm) for vm in records)
        # Their start went unseen: elapsedTime counts from when we took them back.
        self._started.update((vm.vm_id, time.time()) for vm in records if vm.status in RUNNING)
        return records

    # -- locking -------------------------------------------------------------

    @contextmanager
    def locked(self, vm_id: str, blocking: bool = True) -> Iterator[None]:
        """Hold `vm_id`'s lock; with blocking=False, WrongStateError when busy.
        A request that offers the holder's token (OFFERED_TOKEN) while it
        lends the lock takes it over at once."""
        with self._guard:
            entry = self._locks.get(vm_id)
            if entry is None:
                entry = self._locks[vm_id] = VmLock()
            entry.users += 1
        try:
            if not entry.acquire(blocking, OFFERED_TOKEN.get()):
                raise WrongStateError(f"VM {vm_id} is busy on this host")
            try:
                yield
            finally:
                entry.release()
        finally:
            with self._guard:
                entry.users -= 1
                if entry.users == 0 and vm_id not in self._vms:
                    del self._locks[vm_id]

    @contextmanager
    def lend(self, vm_id: str | None) -> Iterator[str | None]:
        """While an after_* chain runs for `vm_id`: the token its hooks may
        show to take the VM's lock over (None when this thread does not
        hold it). See `vmlock`."""
        entry = self._locks.get(vm_id) if vm_id is not None else None
        if entry is None:
            yield None
            return
        with entry.lending() as token:
            yield token

    @contextmanager
    def vm(self, vm_id: object, allowed: frozenset[str] | None = None) -> Iterator[VmRecord]:
        """Hold the VM's lock for the whole operation and yield its record."""
        key = domxml.normalise_uuid(vm_id)
        if key not in self._vms:  # no lock is made for ids we never had
            raise NoSuchVmError(f"no VM with id {key}")
        with self.locked(key):
            vm = self._vms.get(key)
            if vm is None:
                raise NoSuchVmError(f"no VM with id {key}")
            note_vm(vm.vm_id, vm.name)
            if allowed is not None and vm.status not in allowed:
                raise WrongStateError(f"VM {vm.name} ({key}) is {vm.status}")
            yield vm

    # -- records -------------------------------------------------------------

    def get(self, vm_id: str) -> VmRecord | None:
        return self._vms.get(vm_id)

    def __contains__(self, vm_id: object) -> bool:
        return vm_id in self._vms

    def all(self) -> list[VmRecord]:
        """A snapshot: other threads add and remove VMs meanwhile."""
        return list(self._vms.values())

    def put(self, vm: VmRecord) -> VmRecord:
        """Before libvirt acts: raises StateError, changing nothing, when the
        disk refuses."""
        note_vm(vm.vm_id, vm.name)
        self.save_unsaved()
        with self._saving:
            self.store.put_vm(vm)  # first: a failed write changes nothing
            self._unsaved.pop(vm.vm_id, None)
        self._remember(vm)
        return vm

    def _remember(self, vm: VmRecord) -> None:
        previous = self._vms.get(vm.vm_id)
        if vm.status in RUNNING and (previous is None or previous.status not in RUNNING | {"migrating"}):
            self._started[vm.vm_id] = time.time()
        self._vms[vm.vm_id] = vm

    def started(self, vm_id: str) -> float | None:
        """When the VM started running (as this agent saw it), for VDSM's elapsedTime."""
        return self._started.get(vm_id)

    def update(self, vm: VmRecord, **changes: Any) -> VmRecord:
        return self.put(vm._replace(**changes))

    def follow(self, vm: VmRecord, **changes: Any) -> VmRecord:
        """libvirt has changed the VM: memory says so at once, the disk as
        soon as it can. Never raises."""
        vm = vm._replace(**changes)
        self._remember(vm)
        self._save(vm.vm_id, vm)
        return vm

    def forget(self, vm_id: str) -> None:
        """The VM is gone (or never started): out of memory at once, off the
        disk as soon as it can. Never raises."""
        self._vms.pop(vm_id, None)
        self._started.pop(vm_id, None)
        self._save(vm_id, None)

    def _save(self, vm_id: str, vm: VmRecord | None) -> None:
        with self._saving:
            self._unsaved[vm_id] = vm
        self.save_unsaved()

    def save_unsaved(self) -> bool:
        """Write what the disk refused before; False while it still refuses."""
        with self._saving:
            for vm_id, vm in list(self._unsaved.items()):
                try:
                    if vm is None:
                        self.store.delete_vm(vm_id)
                    else:
                        self.store.put_vm(vm)
                except StateError as exc:
                    log.error("VM %s: its record on disk is out of date, retried at the next write: %s", vm_id, exc)
                    return False
                del self._unsaved[vm_id]
        return True

    def unsaved(self) -> list[str]:
        """VMs whose record on disk is out of date (for tests and the log at stop)."""
        with self._saving:
            return sorted(self._unsaved)

    def answer(self, vm: VmRecord) -> dict[str, Any]:
        """What the API says of `vm` at the end of an operation: its record as
        it is now, since a hook's call may have changed it meanwhile (at an
        after_* point: see `vmlock`); "down" when that call removed it."""
        return summary(self._vms.get(vm.vm_id) or vm._replace(status="down"))

    def lock_count(self) -> int:
        """Locks alive now (for tests and leak checks)."""
        with self._guard:
            return len(self._locks)


def summary(vm: VmRecord) -> dict[str, Any]:
    """What the API says of a VM."""
    return {"vmId": vm.vm_id, "name": vm.name, "status": vm.status, "custom": vm.custom}
