"""The agent's SQLite file (WAL): opening it, its schema and upgrades, and
one serialised connection whose transactions always end.

- Created 0600 whatever the umask; SQLite gives `-wal` and `-shm` the
  mode of the database file, and modes left wider by an older version are
  narrowed at open.
- A file that is not a vmhooks database (corrupt, random bytes, written by a
  newer version) is refused with one line, before anything writes to it.
- Read-only opening never creates or changes a file: SQLite's `mode=ro`
  creates `-wal` and `-shm` when they are missing, so a database closed
  cleanly (no `-wal`) is opened `immutable` instead.
- Read-only opening cannot upgrade: it reads an older schema back to
  `OLDEST_READABLE_VERSION` as it is, and readers take a column it lacks
  as that column's default.
- Every SQLite error comes out as a `StateError` naming the file.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vmhooks.errors import CorruptStateError, StateError

SCHEMA_VERSION = 3  # PRAGMA user_version; 0 is the first schema (no operations table)
# The oldest version a read-only reader takes as it is (it cannot upgrade):
# version 2 lacks runs.fast_path only, which readers default to false.
OLDEST_READABLE_VERSION = 2
FILE_MODE = 0o600
BUSY_TIMEOUT_MS = 5000
# After a checkpoint SQLite truncates a WAL grown past this (a large prune).
WAL_SIZE_LIMIT = 8 << 20

_TABLES = """
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
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    vm_id TEXT,
    vm_name TEXT,
    operation TEXT NOT NULL,
    caller TEXT NOT NULL,
    polled INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error_kind TEXT,
    reason TEXT,
    duration_s REAL,
    hooks_run INTEGER NOT NULL DEFAULT 0,
    hooks_failed INTEGER NOT NULL DEFAULT 0
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
    warnings TEXT NOT NULL DEFAULT '[]',
    operation_id INTEGER REFERENCES operations(id)
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
    note TEXT NOT NULL,
    fast_path INTEGER NOT NULL DEFAULT 0
);
"""
_INDEXES = """
DROP INDEX IF EXISTS chains_vm;
DROP INDEX IF EXISTS chains_point;
CREATE INDEX IF NOT EXISTS operations_vm ON operations(vm_id, id);
CREATE INDEX IF NOT EXISTS operations_time ON operations(time);
CREATE INDEX IF NOT EXISTS operations_polled ON operations(polled, vm_id, operation) WHERE polled = 1;
CREATE INDEX IF NOT EXISTS chains_operation ON chains(operation_id);
CREATE INDEX IF NOT EXISTS chains_point_operation ON chains(point, operation_id);
CREATE INDEX IF NOT EXISTS runs_chain ON runs(chain_id);
"""
# Version 0 recorded chains only: each old chain becomes an operation of its own.
_UPGRADE_FROM_0 = """
ALTER TABLE chains ADD COLUMN operation_id INTEGER REFERENCES operations(id);
INSERT INTO operations (id, time, vm_id, vm_name, operation, caller, result, error_kind, hooks_run, hooks_failed)
    SELECT c.id, c.time, c.vm_id, (SELECT name FROM vms WHERE vms.vm_id = c.vm_id), c.operation, 'unknown',
           CASE WHEN c.aborted THEN 'a hook failed (recorded by an older vmhooks)' ELSE 'ok' END,
           CASE WHEN c.aborted THEN 'hook_error' END,
           (SELECT COUNT(*) FROM runs r WHERE r.chain_id = c.id),
           (SELECT COUNT(*) FROM runs r WHERE r.chain_id = c.id AND r.status != 'ok')
    FROM chains c;
UPDATE chains SET operation_id = id;
"""
# Columns added since: (table, column, definition), each added to an older
# table that lacks it (CREATE TABLE IF NOT EXISTS leaves an old table as it is).
_ADDED_COLUMNS = (("runs", "fast_path", "INTEGER NOT NULL DEFAULT 0"),)  # version 3


class Database:
    """One connection, serialised by a lock: writes are small and SQLite
    allows one writer at a time anyway."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._lock = threading.Lock()
        self._db = _open_read_only(path) if read_only else _open_read_write(path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def error(self, exc: sqlite3.Error, doing: str) -> StateError:
        """One line for an SQLite error, naming the file."""
        return state_error(exc, self.path, doing)

    @contextmanager
    def transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; ends on every path. SQLite rolls a
        transaction back by itself on some errors (SQLITE_FULL): then there
        is nothing left to roll back, and the first error is the one told."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        try:
                            self._db.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    raise
            except sqlite3.Error as exc:
                raise self.error(exc, doing) from exc

    def query(self, sql: str, args: Sequence[Any] = (), doing: str = "reading") -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self.error(exc, doing) from exc

    def used_bytes(self) -> int:
        """Bytes of the pages in use (the file keeps freed pages for reuse)."""
        rows = self.query(
            "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()),"
            " (SELECT page_size FROM pragma_page_size())"
        )
        pages, size = rows[0]
        return int(pages) * int(size)

    def release_free_pages(self) -> None:
        """Give freed pages back to the file system (new databases only:
        auto_vacuum can only be chosen before the first table)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA incremental_vacuum")
            except sqlite3.Error:
                pass  # space comes back on the next prune


def state_error(exc: sqlite3.Error, path: Path, doing: str) -> StateError:
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        return corrupt(path, str(exc))
    return StateError(f"{doing} the state database {path}: {exc}")


def corrupt(path: Path, why: str) -> CorruptStateError:
    return CorruptStateError(
        f"{path} is not a usable vmhooks database ({why}); it was left as it is: "
        f"move it aside (mv {path} {path}.broken) and start again for an empty one"
    )


def _open_read_write(path: Path) -> sqlite3.Connection:
    _create_private(path)
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    except sqlite3.Error as exc:
        raise state_error(exc, path, "opening") from exc
    try:
        db.row_factory = sqlite3.Row
        # Reading the version first: a file that is no database fails here,
        # before any statement could write to it.
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if version > SCHEMA_VERSION:
            raise corrupt(path, f"schema version {version}, written by a newer vmhooks")
        if not tables:
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        if version < SCHEMA_VERSION:
            _upgrade(db, version, tables)
        _narrow_modes(path)
    except sqlite3.Error as exc:
        db.close()
        raise state_error(exc, path, "opening") from exc
    except BaseException:
        db.close()
        raise
    return db


def _upgrade(db: sqlite3.Connection, version: int, tables: set[str]) -> None:
    """One transaction: a crash half-way leaves the old schema as it was."""
    legacy = version == 0 and "chains" in tables and "operations" not in tables
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(_TABLES):
            db.execute(statement)
        if legacy:
            for statement in _statements(_UPGRADE_FROM_0):
                db.execute(statement)
        for table, column, definition in _ADDED_COLUMNS:
            if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        for statement in _statements(_INDEXES):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _open_read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StateError(f"no vmhooks database at {path} (is the state directory right?)")
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    # A clean shutdown leaves no -wal: all is in the file, and `immutable`
    # reads it without creating -wal and -shm. With them present (the agent
    # runs, or died), `mode=ro` reads the WAL too, as one more reader.
    mode = "mode=ro" if wal.exists() and shm.exists() else "immutable=1"
    try:
        db = sqlite3.connect(f"{path.absolute().as_uri()}?{mode}", uri=True, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise state_error(exc, path, "opening") from exc
    if not OLDEST_READABLE_VERSION <= version <= SCHEMA_VERSION:
        db.close()
        if version > SCHEMA_VERSION:
            raise corrupt(path, f"schema version {version}, written by a newer vmhooks")
        raise StateError(f"{path} was written by an older vmhooks: start the agent once to upgrade it")
    return db


def _create_private(path: Path) -> None:
    """The database file, created 0600 before SQLite opens it (SQLite would
    apply the umask to 0644); an existing one must be a regular file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{path} must be a regular file, not a symlink or a directory") from None
        return
    except OSError as exc:
        raise StateError(f"cannot create the state database {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have narrowed it further: make it exact
    finally:
        os.close(fd)


def _narrow_modes(path: Path) -> None:
    """Files an older version left readable by others become 0600."""
    for name in (str(path), f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        try:
            st = os.lstat(name)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(name, FILE_MODE)
