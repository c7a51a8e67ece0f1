"""Job stores: SQLite (embedded, the default) and PostgreSQL (shared), one contract.

`open_store(url)` picks one: a `postgresql://` DSN, or else a state folder
holding the SQLite file.
"""

from __future__ import annotations

from launcher.stores.base import (
    InvalidJobState,
    JobNotFound,
    JobStore,
    Lease,
    StoredJob,
    TooManyActiveExports,
    now_ms,
)
from launcher.stores.postgresql import SCHEMES, PostgresJobStore
from launcher.stores.sqlite import DB_NAME, SqliteJobStore


def open_store(url: str) -> JobStore:
    """The store `url` names: a PostgreSQL DSN, or a folder for the SQLite store."""
    if url.startswith(SCHEMES):
        return PostgresJobStore(url)
    if "://" in url:
        raise ValueError(f"--job-store {url.split('://')[0]}://... is not supported; use postgresql://")
    return SqliteJobStore(url)


__all__ = [
    "DB_NAME", "InvalidJobState", "JobNotFound", "JobStore", "Lease", "PostgresJobStore", "SqliteJobStore",
    "StoredJob", "TooManyActiveExports", "now_ms", "open_store",
]
