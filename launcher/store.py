"""The pipeline's job sink bound to a job store, and the stores' names for the launcher.

The stores themselves live in `launcher/stores/`.
"""

from __future__ import annotations

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
    TooManyActiveExports,
    check_no_password,
    now_ms,
    open_store,
)
from pipelines.models import Manifest

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
    """

    def __init__(self, store_url: str, job_id: str, attempt: int | None = None,
                 lease: Optional[Lease] = None, lease_s: float = 0.0):
        self._url = check_no_password(store_url)
        self._job_id = job_id
        self._attempt = attempt
        self._holder = lease.holder if lease is not None else None
        self._lease_s = lease_s
        self._renewed_at = 0.0

    def progress(self, counts: dict[str, int]) -> None:
        store = open_store(self._url)
        store.add_progress(self._job_id, counts, self._attempt)
        self._renew(store)

    def read(self, nbytes: int) -> None:
        store = open_store(self._url)
        store.add_read_bytes(self._job_id, nbytes, self._attempt)
        self._renew(store)

    def owns(self) -> bool:
        """True while this attempt still owns the job (or completed it: a retried final step)."""
        return open_store(self._url).owned_by(self._job_id, self._attempt)

    def _renew(self, store: JobStore) -> None:
        """Renews the lease, at most every tenth of its length."""
        if self._holder is None or time.monotonic() - self._renewed_at < self._lease_s / 10:
            return
        store.renew_lease(self._job_id, Lease(self._holder, now_ms() + int(self._lease_s * 1000)))
        self._renewed_at = time.monotonic()

    def complete(self, manifest: Manifest, bad_records: int) -> bool:
        """Claims completion; True too when this attempt claimed it already (a retried final step)."""
        store = open_store(self._url)
        try:
            store.complete(self._job_id, manifest, bad_records, self._attempt)
        except InvalidJobState:  # cancelled, failed or restarted meanwhile: the claim is lost, unless ours
            return store.completed_by(self._job_id, self._attempt)
        return True
