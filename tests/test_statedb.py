"""statedb: the SQLite file's modes, refusals, read-only opening, upgrades,
and transactions that end well on a full disk."""
from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from tmpfs import Tmpfs, small_tmpfs  # noqa: F401  (fixture)

from vmhooks.errors import CorruptStateError, StateError
from vmhooks.points import get_point
from vmhooks.runner import ChainResult, ScriptRun, Status
from vmhooks.statedb import SCHEMA_VERSION, Database
from vmhooks.store import Store, VmRecord


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in directory.iterdir()}


def test_state_files_are_0600_whatever_the_umask(tmp_path: Path):
    old = os.umask(0)
    try:
        store = Store(tmp_path / "vmhooks.db")
        store.put_vm(VmRecord("id", "vm", "up", "<domain/>", {"secret": "x"}, {}))
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["vmhooks.db", "vmhooks.db-shm", "vmhooks.db-wal"]
        assert {name: mode(tmp_path / name) for name in names} == dict.fromkeys(names, 0o600)
        store.close()
    finally:
        os.umask(old)


def test_files_an_older_version_left_readable_are_narrowed(tmp_path: Path):
    path = tmp_path / "vmhooks.db"
    Store(path).close()
    os.chmod(path, 0o644)
    Store(path).close()
    assert mode(path) == 0o600


def test_random_bytes_are_refused_in_one_line_and_left_untouched(tmp_path: Path):
    path = tmp_path / "vmhooks.db"
    path.write_bytes(os.urandom(64 << 10))
    before = snapshot(tmp_path)
    with pytest.raises(CorruptStateError) as error:
        Store(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and f"mv {path} {path}.broken" in message
    assert error.value.exit_status == 78
    assert snapshot(tmp_path) == before  # same bytes, same mtime, no -wal or -shm made
    with pytest.raises(CorruptStateError):
        Store.open_read_only(path)
    assert snapshot(tmp_path) == before


def test_a_newer_schema_is_refused(tmp_path: Path):
    path = tmp_path / "vmhooks.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()  # no -wal left: nothing may change now, -shm included
    before = snapshot(tmp_path)
    for opening in (Store, Store.open_read_only):
        with pytest.raises(CorruptStateError, match="newer vmhooks") as error:
            opening(path)
        assert error.value.exit_status == 78
    assert snapshot(tmp_path) == before


def test_read_only_creates_and_changes_nothing(tmp_path: Path):
    path = tmp_path / "vmhooks.db"
    writer = Store(path)
    writer.put_vm(VmRecord("id-1", "one", "up", "<domain/>", {}, {}))
    # The writer still runs (-wal and -shm exist): a reader sees its last write.
    live = snapshot(tmp_path)
    reader = Store.open_read_only(path)
    assert [vm.name for vm in reader.vms()] == ["one"]
    reader.close()
    assert sorted(snapshot(tmp_path)) == sorted(live)
    writer.close()  # a clean close removes -wal and -shm
    closed = snapshot(tmp_path)
    assert sorted(closed) == ["vmhooks.db"]
    reader = Store.open_read_only(path)
    assert [vm.name for vm in reader.vms()] == ["one"]
    with pytest.raises(StateError, match="readonly"):
        reader.put_vm(VmRecord("id-2", "two", "up", "<domain/>", {}, {}))
    assert reader.counters()["vm_write_failures"] == 1
    reader.close()
    assert snapshot(tmp_path) == closed


def test_read_only_without_a_database_says_so(tmp_path: Path):
    with pytest.raises(StateError, match="no vmhooks database at .*is the state directory right"):
        Store.open_read_only(tmp_path / "vmhooks.db")
    assert list(tmp_path.iterdir()) == []


def test_the_first_schema_is_upgraded_in_place(tmp_path: Path):
    """Version 0 kept chains only: each becomes an operation of its own."""
    path = tmp_path / "vmhooks.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE vms (vm_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, xml TEXT NOT NULL,
                custom TEXT NOT NULL DEFAULT '{}', device_custom TEXT NOT NULL DEFAULT '{}', save_path TEXT,
                updated REAL NOT NULL);
            CREATE TABLE chains (id INTEGER PRIMARY KEY, time REAL NOT NULL, vm_id TEXT, point TEXT NOT NULL,
                operation TEXT NOT NULL, aborted INTEGER NOT NULL, rejected TEXT, edits_discarded INTEGER NOT NULL,
                warnings TEXT NOT NULL DEFAULT '[]');
            CREATE TABLE runs (id INTEGER PRIMARY KEY, chain_id INTEGER NOT NULL REFERENCES chains(id),
                script TEXT NOT NULL, status TEXT NOT NULL, rc INTEGER, duration_s REAL NOT NULL, stderr TEXT NOT NULL,
                changed INTEGER NOT NULL, diff TEXT NOT NULL, note TEXT NOT NULL);
            INSERT INTO vms VALUES ('vm-1', 'old', 'up', '<domain/>', '{}', '{}', NULL, 1);
            INSERT INTO chains VALUES (1, 100, 'vm-1', 'before_vm_start', 'create', 0, NULL, 0, '[]');
            INSERT INTO chains VALUES (2, 200, 'vm-1', 'before_vm_pause', 'pause', 1, NULL, 0, '[]');
            INSERT INTO runs VALUES (1, 1, '10_a', 'ok', 0, 0.1, '', 0, '', '');
            INSERT INTO runs VALUES (2, 2, '10_b', 'stopped-chain', 2, 0.1, 'no', 0, '', '');
        """)
    store = Store(path)
    operations = store.history()["operations"]
    assert [(o["operation"], o["vm_name"], o["result"], o["hooks_run"], o["hooks_failed"]) for o in operations] == [
        ("create", "old", "ok", 1, 0),
        ("pause", "old", "a hook failed (recorded by an older vmhooks)", 1, 1),
    ]
    runs = [run for o in operations for c in o["chains"] for run in c["runs"]]
    assert [(run["script"], run["fast_path"]) for run in runs] == [("10_a", False), ("10_b", False)]
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# Version 2, as that vmhooks created it: runs has no fast_path column.
VERSION_2 = """
    CREATE TABLE vms (vm_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, xml TEXT NOT NULL,
        custom TEXT NOT NULL DEFAULT '{}', device_custom TEXT NOT NULL DEFAULT '{}', save_path TEXT,
        updated REAL NOT NULL);
    CREATE TABLE operations (id INTEGER PRIMARY KEY, time REAL NOT NULL, vm_id TEXT, vm_name TEXT,
        operation TEXT NOT NULL, caller TEXT NOT NULL, polled INTEGER NOT NULL DEFAULT 0, result TEXT,
        error_kind TEXT, reason TEXT, duration_s REAL, hooks_run INTEGER NOT NULL DEFAULT 0,
        hooks_failed INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE chains (id INTEGER PRIMARY KEY, time REAL NOT NULL, vm_id TEXT, point TEXT NOT NULL,
        operation TEXT NOT NULL, aborted INTEGER NOT NULL, rejected TEXT, edits_discarded INTEGER NOT NULL,
        warnings TEXT NOT NULL DEFAULT '[]', operation_id INTEGER REFERENCES operations(id));
    CREATE TABLE runs (id INTEGER PRIMARY KEY, chain_id INTEGER NOT NULL REFERENCES chains(id),
        script TEXT NOT NULL, status TEXT NOT NULL, rc INTEGER, duration_s REAL NOT NULL, stderr TEXT NOT NULL,
        changed INTEGER NOT NULL, diff TEXT NOT NULL, note TEXT NOT NULL);
    CREATE INDEX operations_vm ON operations(vm_id, id);
    CREATE INDEX runs_chain ON runs(chain_id);
    INSERT INTO vms VALUES ('vm-1', 'old', 'up', '<domain/>', '{}', '{}', NULL, 1);
    INSERT INTO operations VALUES (1, 100, 'vm-1', 'old', 'create', 'uid 0 (root) pid 1', 0, 'ok', NULL, NULL,
        0.2, 2, 0);
    INSERT INTO chains VALUES (1, 100, 'vm-1', 'before_vm_start', 'create', 0, NULL, 0, '[]', 1);
    INSERT INTO runs VALUES (1, 1, '10_py', 'ok', 0, 0.1, '', 1, '+x', '');
    INSERT INTO runs VALUES (2, 1, '20_sh', 'ok', 0, 0.1, 'fine', 0, '', '');
    PRAGMA user_version = 2;
"""


def version_2_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(VERSION_2)
    db.close()


def runs_of(store: Store) -> list[tuple[str, str, bool]]:
    return [(r["script"], r["stderr"], r["fast_path"]) for o in store.history()["operations"]
            for c in o["chains"] for r in c["runs"]]  # fmt: skip


def run_columns(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[1] for row in db.execute("PRAGMA table_info(runs)")]
    finally:
        db.close()


def test_version_2_is_read_read_only_as_it_is_then_upgraded_with_its_rows(tmp_path: Path):
    path = tmp_path / "vmhooks.db"
    version_2_database(path)
    before = snapshot(tmp_path)
    # The agent is down: a reader takes the older file as it is, the fast
    # path unknown to it reading as false, and changes nothing.
    reader = Store.open_read_only(path)
    assert runs_of(reader) == [("10_py", "", False), ("20_sh", "fine", False)]
    assert [vm.name for vm in reader.vms()] == ["old"]
    reader.close()
    assert snapshot(tmp_path) == before
    assert "fast_path" not in run_columns(path)
    # The agent starts: the file is upgraded in place, its rows kept.
    store = Store(path)
    assert runs_of(store) == [("10_py", "", False), ("20_sh", "fine", False)]
    assert [vm.name for vm in store.vms()] == ["old"]
    forked = ScriptRun("10_py", Status.OK, 0, 0.01, "", False, fast_path=True)
    store.record_chain("pause", "vm-1", ChainResult(get_point("before_vm_pause"), (forked,), None, "", None, False))
    assert runs_of(store)[-1] == ("10_py", "", True)
    store.close()
    assert run_columns(path)[-1] == "fast_path"
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    reader = Store.open_read_only(path)
    assert [fast for _, _, fast in runs_of(reader)] == [False, False, True]
    reader.close()


def test_an_upgrade_that_fails_half_way_leaves_version_2_as_it_was(tmp_path: Path):
    path = tmp_path / "vmhooks.db"
    version_2_database(path)
    # A table where the upgrade puts an index: the upgrade fails after it
    # added the column, and must take the column back.
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE chains_operation (x)")
    db.close()
    with pytest.raises(StateError, match="chains_operation"):
        Store(path)
    assert "fast_path" not in run_columns(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2
    reader = Store.open_read_only(path)
    assert runs_of(reader) == [("10_py", "", False), ("20_sh", "fine", False)]
    reader.close()


def test_a_full_disk_fails_one_write_with_its_own_error_then_writes_again(small_tmpfs: Tmpfs):
    database = Database(small_tmpfs.path / "vmhooks.db")
    with database.transaction("setting up") as tx:
        tx.execute("CREATE TABLE blobs (data BLOB)")
    small_tmpfs.fill()
    with pytest.raises(StateError) as error:
        with database.transaction("writing to") as tx:
            tx.execute("INSERT INTO blobs VALUES (?)", (b"x" * (1 << 20),))
    # SQLite rolled back by itself: the error told is the disk's, not "cannot rollback".
    assert "database or disk is full" in str(error.value) and str(small_tmpfs.path) in str(error.value)
    small_tmpfs.free()
    with database.transaction("writing to") as tx:
        tx.execute("INSERT INTO blobs VALUES (?)", (b"x" * (1 << 20),))
    assert database.query("SELECT COUNT(*) FROM blobs")[0][0] == 1
