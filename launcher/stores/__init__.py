"""Job stores: SQLite (embedded, the default) and PostgreSQL (shared), one contract.

`open_store(url)` picks one: a `postgresql://` DSN, or else a state folder
holding the SQLite file.
"""

from __future__ import annotations

from launcher.stores.base import (
    ANY_OWNER,
    InvalidJobState,
    JobNotFound,
    JobStore,
    Lease,
    StoredJob,
    StoreUnavailable,
    TooManyActiveExports,
    now_ms,
)
from launcher.stores.contract import StoreBusy
from launcher.stores.postgresql import SCHEMES, PostgresJobStore
from launcher.stores.sqlite import DB_NAME, SqliteJobStore
from transforms.errors import Refused
from transforms.storage.pg_source import url_secret


def check_no_password(store_url: str) -> str:
    """Refuses a job-store URL that carries a password (`url_secret`): it would travel in options and pickled sinks.

    PostgreSQL takes it from the environment instead (`PGPASSWORD`, or a
    `PGPASSFILE` secret file), on the launcher and on every worker.
    """
    secret = url_secret(store_url) if "://" in store_url else None
    if secret == "password":
        raise Refused("--job-store: the URL carries a password, which would reach pipeline options and "
                      "workers; give it in PGPASSWORD or a PGPASSFILE secret file instead")
    if secret is not None:
        raise Refused(f"--job-store: the URL carries {secret}=, which would reach pipeline options and workers;"
                      " use a client key file without a passphrase (sslkey=) instead")
    return store_url


def open_store(url: str, read_only: bool = False, migrated: bool = False) -> JobStore:
    """The store `url` names: a PostgreSQL DSN, or a folder for the SQLite store.

    `read_only`: the caller only reads (status, list, manifest). A SQLite store this
    process cannot write is then opened read-only (`store.read_only`): not migrated,
    and its abandoned jobs not recovered. A writable store is opened as usual.
    `migrated`: the caller knows the schema is current (a pipeline's job sink: the
    launcher migrated the store before the job existed), so it is never checked.
    """
    if url.startswith(SCHEMES):
        store = PostgresJobStore(check_no_password(url))
        store._ready = migrated
        return store
    if "://" in url:
        raise Refused(f"--job-store {url.split('://')[0]}://... is not supported; use postgresql://")
    store = SqliteJobStore(url)
    store._ready = migrated
    if read_only and not store.writable():
        store.read_only = True
    return store


__all__ = [
    "ANY_OWNER", "DB_NAME", "InvalidJobState", "JobNotFound", "JobStore", "Lease", "PostgresJobStore", "SqliteJobStore",
    "StoreBusy", "StoreUnavailable", "StoredJob", "TooManyActiveExports", "check_no_password", "now_ms", "open_store",
]
