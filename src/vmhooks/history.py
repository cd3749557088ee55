"""The history in the state database: each operation of the agent (who asked,
how it ended, how long it took) with the hook chains it ran and each
script's run. Written through `Store`; read by the agent's API, the CLI
(also with the agent down) and the web console.

Bounded: one run keeps at most 64 KiB of stderr and of diff (head and tail,
the cut marked); an answer holds at most 1,000 operations and 1,000 chains
(and stops at 8 MiB of hook output), with a cursor for the rest; pruning
goes by age, by size (oldest first) and keeps only the latest few polled
operations (stats, capabilities) per VM.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from vmhooks.runner import ChainResult
from vmhooks.statedb import Database

MAX_TEXT_BYTES = 64 << 10  # stderr, and diff, of one run
MAX_RESULT_BYTES = 4 << 10  # an operation's error line
MAX_NAME_CHARS = 256  # VM names and callers
MAX_WARNINGS = 50  # per chain
MAX_PAGE = 1000  # operations, and chains, in one answer
DEFAULT_PAGE = 100
PAGE_TEXT_BYTES = 8 << 20  # stderr and diffs in one answer (the first operation always fits)
POLLED_KEPT = 20  # polled operations kept per VM, operation, and ok / not ok
PRUNE_BATCH = 5000  # operations deleted per transaction
SIZE_TARGET = 0.9  # a size prune goes down to this fraction of the limit

FAILED_SQL = "(o.result IS NULL OR o.result != 'ok' OR o.hooks_failed > 0)"


class OperationRecord(NamedTuple):
    """An operation's row: written when it starts (result None: unfinished,
    which is what stays if the agent dies during it), completed when it ends."""

    time: float
    operation: str
    vm_id: str | None = None
    vm_name: str | None = None
    caller: str = "local"
    polled: bool = False
    result: str | None = None  # "ok", or the error line
    error_kind: str | None = None  # the error's kind (hook_error, libvirt_error, ...)
    reason: str | None = None  # why, for what libvirt or the agent did by itself
    duration_s: float | None = None
    hooks_run: int = 0
    hooks_failed: int = 0


def cut(text: str, limit: int = MAX_TEXT_BYTES) -> str:
    """`text` in at most `limit` UTF-8 bytes: its head and tail around a
    marker that says how much went."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    half = (limit - 64) // 2
    gone = len(data) - 2 * half
    head = data[:half].decode("utf-8", "ignore")
    tail = data[-half:].decode("utf-8", "ignore")
    return f"{head}\n[... {gone} bytes cut by vmhooks ...]\n{tail}"


def _name(value: str | None) -> str | None:
    return value if value is None or len(value) <= MAX_NAME_CHARS else value[: MAX_NAME_CHARS - 3] + "..."


# -- writing (inside a Store transaction) ------------------------------------------


def insert_operation(tx: sqlite3.Connection, record: OperationRecord) -> int:
    cursor = tx.execute(
        "INSERT INTO operations (time, vm_id, vm_name, operation, caller, polled, result, error_kind, reason,"
        " duration_s, hooks_run, hooks_failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        _operation_values(record),
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def finish_operation(tx: sqlite3.Connection, operation_id: int, record: OperationRecord) -> None:
    """The row as the operation stands now (its VM, once known; its result,
    once it ended). Indexed columns are set only when they change: SQLite
    rewrites the index entries of every column an UPDATE sets."""
    values = _operation_values(record)
    tx.execute("UPDATE operations SET vm_id = ? WHERE id = ? AND vm_id IS NOT ?", (record.vm_id, operation_id, record.vm_id))
    tx.execute(
        "UPDATE operations SET vm_name = ?, result = ?, error_kind = ?, reason = ?, duration_s = ?, hooks_run = ?,"
        " hooks_failed = ? WHERE id = ?",
        (values[2], *values[6:], operation_id),
    )


def _operation_values(record: OperationRecord) -> tuple[Any, ...]:
    result = None if record.result is None else cut(record.result, MAX_RESULT_BYTES)
    return (
        record.time, record.vm_id, _name(record.vm_name), record.operation, _name(record.caller), int(record.polled),
        result, record.error_kind, record.reason, record.duration_s, record.hooks_run, record.hooks_failed,
    )  # fmt: skip


def insert_chain(tx: sqlite3.Connection, operation_id: int, operation: str, vm_id: str | None, result: ChainResult,
                 time: float) -> int:  # fmt: skip
    """The chain and its runs; the bytes of text it stored."""
    warnings = list(result.warnings[:MAX_WARNINGS])
    if len(result.warnings) > MAX_WARNINGS:
        warnings.append(f"... and {len(result.warnings) - MAX_WARNINGS} more")
    cursor = tx.execute(
        "INSERT INTO chains (time, vm_id, point, operation, aborted, rejected, edits_discarded, warnings, operation_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (time, vm_id, result.point.name, operation, int(result.aborts_operation),
         None if result.rejected is None else cut(result.rejected, MAX_RESULT_BYTES),
         int(result.edits_discarded), json.dumps(warnings), operation_id),
    )  # fmt: skip
    rows = [
        (cursor.lastrowid, run.name, str(run.status), run.rc, run.duration_s, cut(run.stderr), int(run.changed),
         cut(run.diff), cut(run.note, MAX_RESULT_BYTES), int(run.fast_path))
        for run in result.scripts
    ]  # fmt: skip
    tx.executemany(
        "INSERT INTO runs (chain_id, script, status, rc, duration_s, stderr, changed, diff, note, fast_path)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return sum(len(row[5]) + len(row[7]) for row in rows)


def chain_outcome(result: ChainResult) -> tuple[str, str | None]:
    """A chain recorded on its own (no operation around it): its result."""
    return (result.error_message(), "hook_error") if result.aborts_operation else ("ok", None)


# -- pruning ---------------------------------------------------------------------


class Pruned(NamedTuple):
    operations: int = 0
    chains: int = 0

    def __add__(self, other: object) -> Pruned:
        assert isinstance(other, Pruned)
        return Pruned(self.operations + other.operations, self.chains + other.chains)


def _delete_operations(db: Database, condition: str, args: Sequence[Any]) -> Pruned:
    """Operations matching `condition`, with their chains and runs."""
    ids = f"SELECT id FROM operations WHERE {condition}"
    with db.transaction("pruning the history in") as tx:
        tx.execute(f"DELETE FROM runs WHERE chain_id IN (SELECT id FROM chains WHERE operation_id IN ({ids}))", args)
        chains = tx.execute(f"DELETE FROM chains WHERE operation_id IN ({ids})", args).rowcount
        operations = tx.execute(f"DELETE FROM operations WHERE {condition}", args).rowcount
    return Pruned(operations, chains)


def prune_older(db: Database, before: float) -> Pruned:
    """Forget the operations that started before `before` (epoch seconds)."""
    total = Pruned()
    while True:
        pruned = _delete_operations(
            db, "id IN (SELECT id FROM operations WHERE time < ? ORDER BY id LIMIT ?)", (before, PRUNE_BATCH)
        )
        total += pruned
        if pruned.operations < PRUNE_BATCH:
            return total


def prune_polled(db: Database, keep: int = POLLED_KEPT) -> Pruned:
    """Polled operations (stats, capabilities) that ran hooks: only the
    latest `keep` per VM, operation and ok / not ok stay, so polling cannot
    crowd out the rest."""
    return _delete_operations(
        db,
        "id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY vm_id, operation, result = 'ok'"
        " ORDER BY id DESC) AS n FROM operations WHERE polled = 1) WHERE n > ?)",
        (keep,),
    )


def prune_to_size(db: Database, max_bytes: int, in_progress_since: float) -> Pruned:
    """Oldest first, until the pages in use are under `max_bytes` (then down
    to 90% of it, so pruning does not run after every write). Operations
    still running (unfinished, started since `in_progress_since`) stay."""
    total = Pruned()
    if db.used_bytes() <= max_bytes:
        return total
    eligible = "NOT (result IS NULL AND time >= ?)"
    while db.used_bytes() > max_bytes * SIZE_TARGET:
        count = db.query(f"SELECT COUNT(*) FROM operations WHERE {eligible}", (in_progress_since,))[0][0]
        if not count:
            break
        batch = max(100, min(PRUNE_BATCH, count // 10))
        boundary = db.query(
            f"SELECT id FROM operations WHERE {eligible} ORDER BY id LIMIT 1 OFFSET ?",
            (in_progress_since, min(batch, count) - 1),
        )[0][0]
        pruned = _delete_operations(db, f"id <= ? AND {eligible}", (boundary, in_progress_since))
        total += pruned
        if not pruned.operations:
            break
    db.release_free_pages()
    return total


# -- reading ---------------------------------------------------------------------


class Filters(NamedTuple):
    vm_id: str | None = None
    point: str | None = None
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, exclusive
    failed: bool = False  # operations that failed, did not finish, or had a hook fail
    before: int | None = None  # the cursor: operations older than this id


def page(db: Database, filters: Filters = Filters(), limit: int = DEFAULT_PAGE) -> dict[str, Any]:
    """The newest matching operations (oldest first in the answer), each with
    its chains and runs, and `before`: the cursor for the next older page,
    or None when there is none."""
    where, args = [], []
    for clause, value in (
        ("o.vm_id = ?", filters.vm_id),
        ("o.time >= ?", filters.since),
        ("o.time < ?", filters.until),
        ("o.id < ?", filters.before),
        ("o.id IN (SELECT operation_id FROM chains WHERE point = ?)", filters.point),
    ):
        if value is not None:
            where.append(clause)
            args.append(value)
    if filters.failed:
        where.append(FAILED_SQL)
    rows = db.query(
        "SELECT * FROM operations o" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY o.id DESC LIMIT ?",
        (*args, limit + 1),
    )
    more = len(rows) > limit
    operations: list[dict[str, Any]] = []
    chains_left, text_left = MAX_PAGE, PAGE_TEXT_BYTES
    for batch in _batches(rows[:limit], 100):
        chains = _chains_of([row["id"] for row in batch], filters.point, db)
        for row in batch:
            item = _operation(row)
            mine = chains.get(row["id"], [])
            text = sum(len(run["stderr"]) + len(run["diff"]) for chain in mine for run in chain["runs"])
            if operations and (len(mine) > chains_left or text > text_left):
                return {"operations": operations[::-1], "before": operations[-1]["id"]}
            item["chains"] = mine[:chains_left]
            if len(mine) > chains_left:
                item["chains_omitted"] = len(mine) - chains_left
            chains_left -= len(item["chains"])
            text_left -= text
            operations.append(item)
    return {"operations": operations[::-1], "before": operations[-1]["id"] if more and operations else None}


def _batches(rows: Sequence[sqlite3.Row], size: int) -> Iterable[Sequence[sqlite3.Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _chains_of(operation_ids: list[int], point: str | None, db: Database) -> dict[int, list[dict[str, Any]]]:
    if not operation_ids:
        return {}
    marks = ",".join("?" * len(operation_ids))
    query = f"SELECT * FROM chains WHERE operation_id IN ({marks})" + (" AND point = ?" if point else "") + " ORDER BY id"
    chain_rows = db.query(query, (*operation_ids, *([point] if point else [])))
    runs: dict[int, list[dict[str, Any]]] = {}
    for batch in _batches(chain_rows, 500):
        marks = ",".join("?" * len(batch))
        for row in db.query(f"SELECT * FROM runs WHERE chain_id IN ({marks}) ORDER BY id", [c["id"] for c in batch]):
            runs.setdefault(row["chain_id"], []).append(_run(row))
    chains: dict[int, list[dict[str, Any]]] = {}
    for row in chain_rows:
        chains.setdefault(row["operation_id"], []).append(_chain(row, runs.get(row["id"], [])))
    return chains


def _operation(row: sqlite3.Row) -> dict[str, Any]:
    item = dict(row)
    item["polled"] = bool(item["polled"])
    return item


def _chain(row: sqlite3.Row, runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": row["id"], "time": row["time"], "point": row["point"], "operation": row["operation"],
        "aborted": bool(row["aborted"]), "rejected": row["rejected"],
        "edits_discarded": bool(row["edits_discarded"]), "warnings": json.loads(row["warnings"]), "runs": runs,
    }  # fmt: skip


def _run(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "script": row["script"], "status": row["status"], "rc": row["rc"], "duration_s": row["duration_s"],
        "stderr": row["stderr"], "changed": bool(row["changed"]), "diff": row["diff"], "note": row["note"],
        # A version-2 file read read-only has no such column: it predates the fast path.
        "fast_path": "fast_path" in row.keys() and bool(row["fast_path"]),
    }  # fmt: skip


def vms(db: Database) -> list[dict[str, Any]]:
    """Every VM the history knows (gone ones too), oldest first, with its
    last name, its last operation (polled ones aside) and how it ended, and
    whether its last chain (polled ones included) had a script fail or its
    output refused."""
    rows = db.query(
        "SELECT o.vm_id, o.time, o.operation, o.result, o.error_kind, o.reason, o.hooks_failed, s.operations, s.first,"
        " (SELECT n.vm_name FROM operations n WHERE n.vm_id = o.vm_id AND n.vm_name IS NOT NULL"
        "  ORDER BY n.id DESC LIMIT 1) AS vm_name,"
        " (SELECT c.rejected IS NOT NULL OR EXISTS (SELECT 1 FROM runs r WHERE r.chain_id = c.id AND r.status != 'ok')"
        "  FROM operations p JOIN chains c ON c.operation_id = p.id WHERE p.vm_id = o.vm_id"
        "  ORDER BY p.id DESC, c.id DESC LIMIT 1) AS last_chain_failed"
        " FROM (SELECT vm_id, MAX(id) AS last, COUNT(*) AS operations, MIN(time) AS first FROM operations"
        "       WHERE vm_id IS NOT NULL AND polled = 0 GROUP BY vm_id) s"
        " JOIN operations o ON o.id = s.last ORDER BY o.id"
    )
    return [
        {"vm_id": row["vm_id"], "vm_name": row["vm_name"], "operations": row["operations"], "first_time": row["first"],
         "last_time": row["time"], "last_operation": row["operation"], "last_result": row["result"],
         "last_error_kind": row["error_kind"], "last_reason": row["reason"], "last_hooks_failed": row["hooks_failed"],
         "last_chain_failed": bool(row["last_chain_failed"])}
        for row in rows
    ]  # fmt: skip


def script_stats(db: Database, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """Per point and script, over [since, until): runs, failures, timeouts,
    seconds, and the median and 95th percentile of the runs' durations
    (nearest rank; scripts refused as unsafe never ran and have none)."""
    rows = db.query(
        "WITH ran AS (SELECT c.point, r.script, r.status, r.duration_s, c.time,"
        "  ROW_NUMBER() OVER (PARTITION BY c.point, r.script, r.status = 'refused' ORDER BY r.duration_s) AS n,"
        "  COUNT(*) OVER (PARTITION BY c.point, r.script, r.status = 'refused') AS total"
        "  FROM operations o JOIN chains c ON c.operation_id = o.id JOIN runs r ON r.chain_id = c.id"
        "  WHERE o.time >= ? AND o.time < ?)"
        " SELECT point, script, COUNT(*) AS runs, SUM(status != 'ok') AS failed, SUM(status = 'timeout') AS timeouts,"
        " SUM(duration_s) AS total_s, MAX(duration_s) AS max_s, MAX(time) AS last_time,"
        " MAX(CASE WHEN status != 'refused' AND n = (total * 50 + 99) / 100 THEN duration_s END) AS p50_s,"
        " MAX(CASE WHEN status != 'refused' AND n = (total * 95 + 99) / 100 THEN duration_s END) AS p95_s"
        " FROM ran GROUP BY point, script ORDER BY point, script",
        (since if since is not None else float("-inf"), until if until is not None else float("inf")),
    )
    return [dict(row) for row in rows]
