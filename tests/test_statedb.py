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
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(CorruptStateError, match="newer vmhooks"):
        Store(path)


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
    assert [run["script"] for o in operations for c in o["chains"] for run in c["runs"]] == ["10_a", "10_b"]
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


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
