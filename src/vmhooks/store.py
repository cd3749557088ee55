"""The agent's state in SQLite (WAL): the VMs it runs and the history of
every hook run. One connection, serialised by a lock: writes are small and
SQLite allows one writer at a time anyway."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from vmhooks.runner import ChainResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    vm_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    xml TEXT NOT NULL,
    custom TEXT NOT NULL DEFAULT '{}',
    device_custom TEXT NOT NULL DEFAULT '{}',
    save_path TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chains (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    vm_id TEXT,
    point TEXT NOT NULL,
    operation TEXT NOT NULL,
    aborted INTEGER NOT NULL,
    rejected TEXT,
    edits_discarded INTEGER NOT NULL,
    warnings TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    chain_id INTEGER NOT NULL REFERENCES chains(id),
    script TEXT NOT NULL,
    status TEXT NOT NULL,
    rc INTEGER,
    duration_s REAL NOT NULL,
    stderr TEXT NOT NULL,
    changed INTEGER NOT NULL,
    diff TEXT NOT NULL,
    note TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chains_vm ON chains(vm_id, id);
CREATE INDEX IF NOT EXISTS chains_point ON chains(point, id);
CREATE INDEX IF NOT EXISTS runs_chain ON runs(chain_id);
"""


class VmRecord(NamedTuple):
    vm_id: str
    name: str
    status: str  # up, paused, hibernated, down, starting, migrating
    xml: str  # the last XML known for it
    custom: dict[str, str]
    device_custom: dict[str, dict[str, str]]  # device key -> properties
    save_path: str | None = None


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- VMs ---------------------------------------------------------------

    def put_vm(self, vm: VmRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO vms VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    vm.vm_id,
                    vm.name,
                    vm.status,
                    vm.xml,
                    json.dumps(vm.custom),
                    json.dumps(vm.device_custom),
                    vm.save_path,
                    time.time(),
                ),
            )

    def delete_vm(self, vm_id: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM vms WHERE vm_id = ?", (vm_id,))

    def vms(self) -> list[VmRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM vms ORDER BY name").fetchall()
        return [
            VmRecord(
                row["vm_id"],
                row["name"],
                row["status"],
                row["xml"],
                json.loads(row["custom"]),
                json.loads(row["device_custom"]),
                row["save_path"],
            )
            for row in rows
        ]

    # -- hook history --------------------------------------------------------

    def record_chain(self, operation: str, vm_id: str | None, result: ChainResult) -> None:
        if not result.scripts and not result.warnings:
            return  # nothing ran: nothing to remember
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO chains (time, vm_id, point, operation, aborted, rejected,"
                " edits_discarded, warnings) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    vm_id,
                    result.point.name,
                    operation,
                    int(result.aborts_operation),
                    result.rejected,
                    int(result.edits_discarded),
                    json.dumps(list(result.warnings)),
                ),
            )
            db.executemany(
                "INSERT INTO runs (chain_id, script, status, rc, duration_s, stderr, changed,"
                " diff, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        cursor.lastrowid,
                        run.name,
                        str(run.status),
                        run.rc,
                        run.duration_s,
                        run.stderr,
                        int(run.changed),
                        run.diff,
                        run.note,
                    )
                    for run in result.scripts
                ],
            )

    def prune(self, before: float) -> int:
        """Forget hook runs older than `before` (epoch seconds); how many chains went."""
        with self._transaction() as db:
            db.execute("DELETE FROM runs WHERE chain_id IN (SELECT id FROM chains WHERE time < ?)", (before,))
            return db.execute("DELETE FROM chains WHERE time < ?", (before,)).rowcount

    def history(
        self, vm_id: str | None = None, point: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The most recent script runs (newest last), each with its chain's facts."""
        where, args = [], []
        if vm_id is not None:
            where.append("c.vm_id = ?")
            args.append(vm_id)
        if point is not None:
            where.append("c.point = ?")
            args.append(point)
        query = (
            "SELECT c.id AS chain, c.time, c.vm_id, c.point, c.operation, c.aborted, c.rejected,"
            " c.edits_discarded, c.warnings, r.script, r.status, r.rc, r.duration_s, r.stderr,"
            " r.changed, r.diff, r.note FROM chains c LEFT JOIN runs r ON r.chain_id = c.id"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY c.id DESC, r.id DESC LIMIT ?"
        )
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [_history_row(row) for row in reversed(rows)]


def _history_row(row: Mapping[str, Any]) -> dict[str, Any]:
    item = dict(row)
    for flag in ("aborted", "edits_discarded", "changed"):
        item[flag] = bool(item[flag])
    item["warnings"] = json.loads(item["warnings"])
    return item
