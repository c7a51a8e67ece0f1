"""The embedded job store: one SQLite file under `--state-dir`, safe across processes."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Iterator

from launcher.stores.base import SqlJobStore

DB_NAME = "jobs.sqlite3"


def _dict_row(cursor: sqlite3.Cursor, row: tuple) -> dict:
    return {column[0]: value for column, value in zip(cursor.description, row)}


class SqliteJobStore(SqlJobStore):
    """Jobs in `<state_dir>/jobs.sqlite3` (WAL; writers serialised by `BEGIN IMMEDIATE`)."""

    def __init__(self, state_dir: str):
        self.url = os.path.abspath(state_dir)
        self.path = os.path.join(state_dir, DB_NAME)  # nothing touches the disk until first used

    @contextlib.contextmanager
    def _open(self, write: bool) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = _dict_row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            # Writers take the lock up front, so a guarded read-then-update never interleaves.
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()
