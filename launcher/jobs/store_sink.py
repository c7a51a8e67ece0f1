"""The pipeline's job sink bound to a job store, and the stores' names for the launcher.

The stores themselves live in `launcher/stores/`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Optional

from launcher.stores import (  # the launcher's one import point for store names
    DB_NAME,
    InvalidJobState,
    JobNotFound,
    JobStore,
    Lease,
    SqliteJobStore,
    StoredJob,
    StoreUnavailable,
    TooManyActiveExports,
    check_no_password,
    now_ms,
    open_store,
)
from pipelines.models import Manifest

_LOG = logging.getLogger(__name__)
# What a store that cannot be reached raises, besides psycopg's OperationalError (`_store_errors`).
STORE_ERRORS: tuple[type[BaseException], ...] = (StoreUnavailable, sqlite3.OperationalError, OSError)
CLAIM_RETRY_WAITS_S = (0.5, 1.0, 2.0, 4.0, 8.0)

__all__ = [
    "DB_NAME", "InvalidJobState", "JobNotFound", "JobStore", "Lease", "SqliteJobStore", "StoredJob",
    "StoreJobSink", "TooManyActiveExports", "check_no_password", "open_store",
]


class StoreJobSink:
    """The pipeline's `JobSink` for one attempt of one job, reporting into a store (picklable).

    It holds the store's URL, never a connection or a password, so it can travel
    to workers. Reports of an attempt that is no longer current are ignored by
    the store. With a `lease` (a job submitted to a remote engine, where no
    launcher watches it), each report also renews the job's lease for
    `lease_s`, so a job whose workers stop reporting expires and is ended in
    `error` by whichever store client looks next.

    The store stays off the export's hot path: each process opens it once and
    never migrates it (the launcher did, before the job existed); progress is
    best-effort, so a store that cannot be reached delays it (the counts are
    kept for the next report) and never fails a bundle. Only the completion
    claim must succeed: it is retried, then fails clearly.
    """

    def __init__(self, store_url: str, job_id: str, attempt: int | None = None,
                 lease: Optional[Lease] = None, lease_s: float = 0.0):
        self._url = check_no_password(store_url)
        self._job_id = job_id
        self._attempt = attempt
        self._holder = lease.holder if lease is not None else None
        self._lease_s = lease_s
        self._renewed_at = 0.0
        self._store: Optional[JobStore] = None
        self._unsent: dict[str, int] = {}
        self._unread = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}  # a connection's owner never travels

    def _job_store(self) -> JobStore:
        if self._store is None:
            self._store = open_store(self._url, migrated=True)  # the launcher migrated it before the job
        return self._store

    def progress(self, counts: dict[str, int]) -> None:
        for resource_type, n in counts.items():
            self._unsent[resource_type] = self._unsent.get(resource_type, 0) + n
        if self._best_effort(lambda store: store.add_progress(self._job_id, dict(self._unsent), self._attempt)):
            self._unsent.clear()

    def read(self, nbytes: int) -> None:
        self._unread += nbytes
        if self._best_effort(lambda store: store.add_read_bytes(self._job_id, self._unread, self._attempt)):
            self._unread = 0

    def _best_effort(self, report) -> bool:
        """Sends one report (and renews the lease); False, logged once, when the store cannot take it."""
        try:
            store = self._job_store()
            report(store)
            self._renew(store)
        except _store_errors() as exc:
            _LOG.warning("job %s: progress not reported this time (%s); it is sent with the next report",
                         self._job_id, type(exc).__name__)
            return False
        return True

    def owns(self) -> bool:
        """True while this attempt still owns the job (or completed it: a retried final step)."""
        return _retried(lambda: self._job_store().owned_by(self._job_id, self._attempt), "check its fence")

    def publish(self, kind: str, resource_type: Optional[str], url: str, count: int) -> bool:
        """Lists a final file in the job's partial manifests, if this attempt still runs the job."""
        from launcher.stores.published import Published

        return _retried(lambda: self._job_store().publish(self._job_id, self._attempt,
                                                          Published(kind, resource_type, url, count)), "publish a file")

    def _renew(self, store: JobStore) -> None:
        """Renews the lease, at most every tenth of its length."""
        if self._holder is None or time.monotonic() - self._renewed_at < self._lease_s / 10:
            return
        store.renew_lease(self._job_id, Lease(self._holder, now_ms() + int(self._lease_s * 1000)))
        self._renewed_at = time.monotonic()

    def complete(self, manifest: Manifest, bad_records: int) -> bool:
        """Claims completion; True too when this attempt claimed it already (a retried final step)."""
        def claim() -> bool:
            store = self._job_store()
            try:
                # A watched run's launcher releases the lease once it has recorded the completion.
                store.complete(self._job_id, manifest, bad_records, self._attempt, keep_lease=self._holder is None)
            except InvalidJobState:  # cancelled, failed or restarted meanwhile: the claim is lost, unless ours
                return store.completed_by(self._job_id, self._attempt)
            return True

        return _retried(claim, "claim its completion")


def _store_errors() -> tuple[type[BaseException], ...]:
    """`STORE_ERRORS` and psycopg's OperationalError (a PostgreSQL restarted under an open connection)."""
    import psycopg  # a dependency; imported only once a sink reports

    return (*STORE_ERRORS, psycopg.OperationalError)


def _retried(call, doing: str):
    """`call()`, tried again after each of `CLAIM_RETRY_WAITS_S` while the store cannot be reached;
    then a clear error."""
    waits = CLAIM_RETRY_WAITS_S
    for wait in (*waits, None):
        try:
            return call()
        except _store_errors() as exc:
            if wait is None:
                raise StoreUnavailable(f"the job store could not be reached to {doing} "
                                       f"({type(exc).__name__}, {len(waits) + 1} tries)") from None
            time.sleep(wait)
