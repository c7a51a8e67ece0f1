"""The job store contract: its errors, its models and the `JobStore` protocol."""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Optional, Protocol, TypeVar, Union

from pydantic import computed_field

from pipelines.models import ExportStatus, JobRecord, Manifest
from transforms.errors import JobStateError, NotFound, TooManyActive, Unavailable

T = TypeVar("T")


class JobNotFound(NotFound, LookupError):
    """No such job for this tenant and owner (another tenant's jobs look the same)."""


class InvalidJobState(JobStateError, RuntimeError):
    """The job is not in a state that allows the requested transition."""


class TooManyActiveExports(TooManyActive, RuntimeError):
    """The tenant already has its maximum of accepted or running jobs (HTTP 429)."""


class StoreUnavailable(Unavailable, RuntimeError):
    """The job store cannot be opened, read or written (a read-only or missing state folder, a
    database that cannot be reached, a schema newer than this code)."""


class StoreBusy(StoreUnavailable):
    """Another process holds the job store locked longer than this command waits: exit 4, or over HTTP a
    503 that says when to ask again (the store's path is never told to a client)."""

    http_status, issue_code = 503, "transient"
    client_message = "the job store is busy: another process holds it locked; try again"


class StoreDamaged(StoreUnavailable):
    """The job store's content is not what this code wrote: a table or column gone, a schema version
    reset, a row whose JSON cannot be read. One line (exit 4), never the content."""


def read_stored(parse: Callable[[Any], T], value: Any, what: str) -> T:
    """`parse(value)` for a value read from the store; `StoreDamaged` naming `what` when it cannot be read."""
    try:
        return parse(value)
    except (ValueError, TypeError):  # pydantic's ValidationError and orjson's JSONDecodeError are ValueErrors
        raise StoreDamaged(f"the job store is damaged: {what} cannot be read; restore it from a backup") from None


class _AnyOwner:
    """The type of `ANY_OWNER`."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ANY_OWNER"

    def __reduce__(self):
        return (_AnyOwner, ())


# The explicit wildcard for a store's `owner` argument: jobs of every owner, and of none.
# `None` is not a wildcard: it means "the job has no owner". Omitting `owner` in a store call
# means ANY_OWNER (the launcher's own calls by a job id it holds); commands always pass one.
ANY_OWNER = _AnyOwner()
Owner = Union[str, None, _AnyOwner]


def owner_sql(owner: Owner, args: list) -> str:
    """The owner condition of a job query (appending its argument): ANY_OWNER sees every job of the
    tenant, None only jobs without an owner, a name only that owner's jobs."""
    if owner is ANY_OWNER:
        return ""
    if owner is None:
        return " AND owner IS NULL"
    args.append(owner)
    return " AND owner = ?"


class Lease(NamedTuple):
    """Who runs or cleans a job, until when (milliseconds since the epoch)."""

    holder: str
    expires_ms: int


def now_ms() -> int:
    return int(time.time() * 1000)


class StoredJob(JobRecord):
    """A job as a store returns it: the record plus its attempt and source progress."""

    attempt: int = 1
    total_bytes: int = 0
    read_bytes: int = 0
    resumable: bool = False

    @computed_field
    @property
    def fraction(self) -> Optional[float]:
        """Share of the source read so far (1.0 once complete; None when unknown)."""
        if self.status is ExportStatus.COMPLETE:
            return 1.0
        if not self.total_bytes:
            return None
        # Bundle entries are counted as compact JSON, so reading may fall short of
        # the file's size; a running job is never shown as done.
        return round(min(self.read_bytes / self.total_bytes, 0.99), 4)


class JobStore(Protocol):
    """What the launcher and the pipeline's job sink need from a job store."""

    url: str
    quick_reads: bool  # a read waits on no network (SQLite): `serve` may run it on its event loop

    def create(self, record: JobRecord, *, run_spec: Optional[dict] = None, lease: Optional[Lease] = None,
               max_active: Optional[int] = None, total_bytes: int = 0) -> None: ...
    def get(self, tenant: str, job_id: str, owner: Owner = ANY_OWNER) -> StoredJob: ...
    def list(self, tenant: str, owner: Owner = ANY_OWNER, include_terminal: bool = False) -> list[StoredJob]: ...
    def status(self, job_id: str) -> ExportStatus: ...
    def owned_by(self, job_id: str, attempt: Optional[int] = None) -> bool:
        """True when `attempt` is the job's and it is accepted, running or complete (its writers' fence)."""

    def completed_by(self, job_id: str, attempt: Optional[int] = None) -> bool:
        """True when the job is complete, claimed by `attempt` (a retried final step asks)."""
    def mark_in_progress(self, job_id: str) -> None: ...
    def set_total_bytes(self, job_id: str, nbytes: int) -> None: ...
    def add_progress(self, job_id: str, counts: dict[str, int], attempt: Optional[int] = None) -> None: ...
    def add_read_bytes(self, job_id: str, nbytes: int, attempt: Optional[int] = None) -> None: ...
    def complete(self, job_id: str, manifest: Manifest, bad_records: int, attempt: Optional[int] = None,
                 keep_lease: bool = False) -> None:
        """Claims completion. `keep_lease`: the launcher watching the run keeps its lease until it has
        recorded the completion (a delete waits for that), instead of the claim releasing it."""
    def fail(self, job_id: str, message: str, resumable: bool = False, attempt: Optional[int] = None) -> None: ...
    def cancel(self, tenant: str, job_id: str, owner: Owner = ANY_OWNER) -> StoredJob: ...
    def delete(self, tenant: str, job_id: str, owner: Owner = ANY_OWNER) -> StoredJob: ...
    def manifest(self, tenant: str, job_id: str, owner: Owner = ANY_OWNER) -> Manifest: ...
    def run_spec(self, job_id: str) -> dict: ...
    def claim_expired(self, cutoff_ms: int, limit: int, lease: Lease, tenant: Optional[str] = None,
                      owner: Owner = ANY_OWNER) -> list[StoredJob]: ...
    def renew_lease(self, job_id: str, lease: Lease) -> bool: ...
    def release_lease(self, job_id: str, holder: str) -> None: ...
    def is_leased(self, job_id: str) -> bool: ...
    def lease(self, job_id: str) -> Optional[Lease]: ...
    def reap_expired(self, now: Optional[int] = None) -> list[StoredJob]: ...
    def claim_resume(self, tenant: str, job_id: str, owner: Owner, lease: Lease,
                     max_active: Optional[int] = None) -> StoredJob: ...
