"""The agent's state: the VMs it runs and the history of what it did
(`vmhooks.history`), in one SQLite file (`vmhooks.statedb`).

Every method raises `StateError` (one line naming the file) when SQLite
fails, and counts it: `counters()` is what an admin and a metrics endpoint
read (failed writes, pruned rows)."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from vmhooks import history
from vmhooks.errors import StateError
from vmhooks.history import Filters, OperationRecord, Pruned
from vmhooks.runner import ChainResult
from vmhooks.statedb import Database

COUNTERS = (
    "vm_write_failures",  # VM records SQLite refused (the agent retries them)
    "history_write_failures",  # operations and chains that could not be recorded
    "pruned_operations",
    "pruned_chains",
)


class VmRecord(NamedTuple):
    vm_id: str
    name: str
    status: str  # up, paused, hibernated, down, starting, migrating
    xml: str  # the last XML known for it
    custom: dict[str, str]
    device_custom: dict[str, dict[str, str]]  # device key -> properties
    save_path: str | None = None


class Store:
    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.db = Database(path, read_only)
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._counts_lock = threading.Lock()

    @classmethod
    def open_read_only(cls, path: Path) -> Store:
        """Reads only, never creating or changing a file (the agent may be down)."""
        return cls(path, read_only=True)

    def close(self) -> None:
        self.db.close()

    def counters(self) -> dict[str, int]:
        with self._counts_lock:
            return dict(self._counts)

    def _count(self, name: str, amount: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += amount

    @contextmanager
    def _counting(self, counter: str) -> Iterator[None]:
        try:
            yield
        except StateError:
            self._count(counter)
            raise

    # -- VMs ---------------------------------------------------------------

    def put_vm(self, vm: VmRecord) -> None:
        with self._counting("vm_write_failures"), self.db.transaction(f"writing VM {vm.vm_id} to") as tx:
            tx.execute(
                "INSERT OR REPLACE INTO vms VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (vm.vm_id, vm.name, vm.status, vm.xml, json.dumps(vm.custom), json.dumps(vm.device_custom),
                 vm.save_path, time.time()),
            )  # fmt: skip

    def delete_vm(self, vm_id: str) -> None:
        with self._counting("vm_write_failures"), self.db.transaction(f"removing VM {vm_id} from") as tx:
            tx.execute("DELETE FROM vms WHERE vm_id = ?", (vm_id,))

    def vms(self) -> list[VmRecord]:
        rows = self.db.query("SELECT * FROM vms ORDER BY name")
        return [
            VmRecord(row["vm_id"], row["name"], row["status"], row["xml"], json.loads(row["custom"]),
                     json.loads(row["device_custom"]), row["save_path"])
            for row in rows
        ]  # fmt: skip

    # -- history: writing --------------------------------------------------------

    def begin_operation(self, record: OperationRecord) -> int:
        """An operation's row, unfinished until `finish_operation`; its id."""
        with self._counting("history_write_failures"), self.db.transaction("recording an operation in") as tx:
            return history.insert_operation(tx, record)

    def finish_operation(self, operation_id: int, record: OperationRecord) -> None:
        with self._counting("history_write_failures"), self.db.transaction("recording an operation in") as tx:
            history.finish_operation(tx, operation_id, record)

    def add_chain(
        self, operation_id: int, operation: str, vm_id: str | None, result: ChainResult,
        progress: OperationRecord | None = None,
    ) -> int:  # fmt: skip
        """One chain of a recorded operation, and (`progress`) the operation's
        row as it stands, so an agent that dies next leaves what it knew;
        the bytes of text it stored."""
        with self._counting("history_write_failures"), self.db.transaction("recording a hook chain in") as tx:
            if progress is not None:
                history.finish_operation(tx, operation_id, progress)
            return history.insert_chain(tx, operation_id, operation, vm_id, result, time.time())

    def record_chain(
        self, operation: str, vm_id: str | None, result: ChainResult, *, vm_name: str | None = None, caller: str = "local"
    ) -> None:
        """A chain run outside any recorded operation (e.g. by a sidecar), as
        an operation of its own. A chain that ran no script is not kept."""
        if not result.scripts:
            return
        outcome, kind = history.chain_outcome(result)
        now = time.time()
        record = OperationRecord(
            now, operation, vm_id, vm_name, caller, result=outcome, error_kind=kind,
            duration_s=sum(run.duration_s for run in result.scripts), hooks_run=len(result.scripts),
            hooks_failed=sum(run.failed for run in result.scripts),
        )  # fmt: skip
        with self._counting("history_write_failures"), self.db.transaction("recording a hook chain in") as tx:
            history.insert_chain(tx, history.insert_operation(tx, record), operation, vm_id, result, now)

    # -- history: pruning --------------------------------------------------------

    def _pruned(self, pruned: Pruned) -> Pruned:
        self._count("pruned_operations", pruned.operations)
        self._count("pruned_chains", pruned.chains)
        return pruned

    def prune(self, before: float) -> Pruned:
        """Forget the operations older than `before` (epoch seconds)."""
        return self._pruned(history.prune_older(self.db, before))

    def prune_polled(self, keep: int = history.POLLED_KEPT) -> Pruned:
        return self._pruned(history.prune_polled(self.db, keep))

    def prune_to_size(self, max_bytes: int, in_progress_since: float) -> Pruned:
        return self._pruned(history.prune_to_size(self.db, max_bytes, in_progress_since))

    def used_bytes(self) -> int:
        return self.db.used_bytes()

    # -- history: reading --------------------------------------------------------

    def history(self, filters: Filters = Filters(), limit: int = history.DEFAULT_PAGE) -> dict[str, Any]:
        """A page of operations with their chains and runs (`history.page`)."""
        return history.page(self.db, filters, limit)

    def history_vms(self) -> list[dict[str, Any]]:
        return history.vms(self.db)

    def script_stats(self, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
        return history.script_stats(self.db, since, until)
