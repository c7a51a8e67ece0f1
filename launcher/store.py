"""The pipeline's job sink bound to a job store, and the stores' names for the launcher.

The stores themselves live in `launcher/stores/`.
"""

from __future__ import annotations

from launcher.stores import (  # the launcher's one import point for store names
    DB_NAME,
    InvalidJobState,
    JobNotFound,
    JobStore,
    Lease,
    SqliteJobStore,
    StoredJob,
    TooManyActiveExports,
    open_store,
)
from pipelines.models import Manifest

__all__ = [
    "DB_NAME", "InvalidJobState", "JobNotFound", "JobStore", "Lease", "SqliteJobStore", "StoredJob",
    "StoreJobSink", "TooManyActiveExports", "open_store",
]


class StoreJobSink:
    """The pipeline's `JobSink` for one attempt of one job, reporting into a store (picklable).

    It holds the store's URL, never a connection, so it can travel to workers.
    Reports of an attempt that is no longer current are ignored by the store.
    """

    def __init__(self, store_url: str, job_id: str, attempt: int | None = None):
        self._url = store_url
        self._job_id = job_id
        self._attempt = attempt

    def progress(self, counts: dict[str, int]) -> None:
        open_store(self._url).add_progress(self._job_id, counts, self._attempt)

    def read(self, nbytes: int) -> None:
        open_store(self._url).add_read_bytes(self._job_id, nbytes, self._attempt)

    def complete(self, manifest: Manifest, bad_records: int) -> bool:
        try:
            open_store(self._url).complete(self._job_id, manifest, bad_records, self._attempt)
        except InvalidJobState:  # cancelled, failed or restarted meanwhile: the claim is lost
            return False
        return True
