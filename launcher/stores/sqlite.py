"""The embedded job store: one SQLite file under `--state-dir`, safe across processes.

A store this process cannot write (a read-only folder or file, a read-only
mount) can still be opened read-only, for `status`, `list` and `manifest`:
`open_store(url, read_only=True)`. It is then opened with SQLite's `mode=ro`,
never migrated and never written.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from typing import Iterator

from launcher.stores.base import SqlJobStore
from launcher.stores.contract import StoreBusy, StoreDamaged, StoreUnavailable
from launcher.stores.schema import SCHEMA_VERSION

DB_NAME = "jobs.sqlite3"
# How long any transaction waits for another process's lock before it says, in one line, that the store is
# busy (`StoreBusy`, exit 4). Every transaction is a few statements and nothing else (no file, network or
# pipeline work), so a lock held longer is a frozen or hung process: a reader (WAL: only a process holding
# the file exclusively blocks it) and a writer (`BEGIN IMMEDIATE`) give up alike, instead of hanging.
BUSY_WAIT_S = 2.0
# SQLite's primary result codes that mean the file itself cannot be used (not a busy or a
# constraint error): they become one `StoreUnavailable` line instead of a traceback.
_UNUSABLE = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_IOERR", "SQLITE_FULL",
             "SQLITE_NOTADB", "SQLITE_CORRUPT", "SQLITE_AUTH")
# SQLite's texts for a schema that is not the one the migrations made (a table dropped, a version reset).
_DAMAGE = ("no such table", "no such column", "duplicate column name", "table jobs has no column")


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> dict:
    return {column[0]: value for column, value in zip(cursor.description, row)}


class SqliteJobStore(SqlJobStore):
    """Jobs in `<state_dir>/jobs.sqlite3` (WAL; writers serialised by `BEGIN IMMEDIATE`)."""

    quick_reads = True

    def __init__(self, state_dir: str, read_only: bool = False):
        self.url = os.path.abspath(state_dir)
        self.path = os.path.join(state_dir, DB_NAME)  # nothing touches the disk until first used
        self.read_only = read_only
        self._schema_checked = False
        self._uri: str | None = None
        self._kept: threading.local | None = None  # each thread's open connection (`keep_connections`)

    def check_readable(self) -> None:
        """Opens the store once, raising `StoreUnavailable` if it cannot be read."""
        with self._tx(write=False):
            pass

    def writable(self) -> bool:
        """Whether this process may write the store (create it, its folder, its WAL files)."""
        if os.path.exists(self.path):
            return os.access(self.path, os.W_OK) and os.access(self.url, os.W_OK | os.X_OK)
        folder = self.url
        while not os.path.exists(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        return os.access(folder, os.W_OK | os.X_OK)

    @contextlib.contextmanager
    def _open(self, write: bool) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            with self._open_read_only() as db:
                yield db
            return
        if not self._ready:
            try:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"cannot create the state folder {self.url}: {exc.strerror or exc}") from None
        db = self._connection()
        healthy = True
        try:
            # Writers take the lock up front, so a guarded read-then-update never interleaves.
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                healthy = False  # a connection that failed is not kept
                self._reraise(exc)
            raise
        finally:
            self._release(db, healthy)

    def _connection(self) -> sqlite3.Connection:
        """This thread's kept connection, taken while in use (a nested transaction gets its own), or a new one."""
        kept = getattr(self._kept, "db", None)
        if kept is not None:
            self._kept.db = None
            if kept[0] == os.getpid():  # never one a forked child inherited
                return kept[1]
        return self._connect()

    def _release(self, db: sqlite3.Connection, healthy: bool) -> None:
        if healthy and self._kept is not None and getattr(self._kept, "db", None) is None:
            self._kept.db = (os.getpid(), db)
        else:
            db.close()

    def keep_connections(self) -> None:
        """Keeps each thread's connection open between transactions, instead of one per transaction: for
        a long-lived process answering many small reads (`serve`). Opening, with its pragmas, cost a
        status answer most of its time; and the last connection's close checkpoints the WAL and removes
        it, which the next one then makes again."""
        self._kept = threading.local()

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=BUSY_WAIT_S, isolation_level=None)
        except sqlite3.Error as exc:
            self._reraise(exc)
        db.row_factory = _dict_row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
        except BaseException as exc:
            db.close()
            if isinstance(exc, sqlite3.Error):
                self._reraise(exc)
            raise
        return db

    @contextlib.contextmanager
    def _open_read_only(self) -> Iterator[sqlite3.Connection]:
        if not os.path.exists(self.path):
            raise StoreUnavailable(f"there is no job store in {self.url}, and it cannot be created there"
                                   " (the folder is not writable)")
        try:
            db = sqlite3.connect(self._read_only_uri(), uri=True, timeout=BUSY_WAIT_S, isolation_level=None)
        except sqlite3.Error as exc:
            self._reraise(exc)
        db.row_factory = _dict_row
        try:
            db.execute("BEGIN")
            if not self._schema_checked:
                self._check_schema(db)
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._reraise(exc)
        finally:
            db.close()

    def _read_only_uri(self) -> str:
        """`mode=ro`; or, when SQLite cannot make the WAL index it needs to read (a read-only folder
        without the `-shm` file, so no writer has the store open), `immutable=1` as well."""
        if self._uri is None:
            uri = f"file:{self.path}?mode=ro"
            try:
                probe = sqlite3.connect(uri, uri=True, timeout=BUSY_WAIT_S)
                try:
                    probe.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                finally:
                    probe.close()
            except sqlite3.Error as exc:
                name = getattr(exc, "sqlite_errorname", "") or ""
                if not name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
                    raise
                uri += "&immutable=1"
            self._uri = uri
        return self._uri

    def _schema_current(self) -> bool:
        if not os.path.exists(self.path):
            return False
        with self._open(write=False) as db:
            if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone():
                return False
            row = db.execute("SELECT version FROM schema_version").fetchone()
        return row is not None and row["version"] == SCHEMA_VERSION

    def _check_schema(self, db: sqlite3.Connection) -> None:
        """A read-only store cannot be migrated: its schema must already be this code's."""
        try:
            row = db.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            row = None
        current = row["version"] if row else 0
        if current != SCHEMA_VERSION:
            raise StoreUnavailable(f"job store {self.url} is read-only here and has schema version {current};"
                                   f" this code needs {SCHEMA_VERSION} (run any command once where it is writable)")
        self._schema_checked = True

    def _reraise(self, exc: sqlite3.Error):
        """Raises `exc`, as `StoreUnavailable` when it means the file cannot be used."""
        unusable = self._unusable(exc)
        if unusable is None:
            raise exc
        raise unusable from exc

    def _unusable(self, exc: sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc)
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return StoreBusy(f"the job store {self.path} is busy: another process holds it locked; try again")
        if text.startswith(_DAMAGE):  # the schema is not what the migrations made
            return StoreDamaged(f"the job store {self.path} is damaged ({text}); restore it from a backup")
        if not name.startswith(_UNUSABLE) and "unable to open database file" not in text:
            return None
        if "readonly" in name.lower() or "readonly" in text:
            why = "it is read-only here"
        else:
            why = text
        return StoreUnavailable(f"cannot use the job store {self.path}: {why}")
