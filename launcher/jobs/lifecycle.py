"""Ending jobs: cancel, delete, expiry cleanup, and recovery of jobs whose launcher died.

Each operation changes the store first (a guarded transition, so it races
safely with the job's own completion), then removes files, then appends an
AuditEvent.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

from launcher.core.audit import SERIOUS_FAILURE, AuditLog
from launcher.core.names import job_output_dir
from launcher.jobs.process import new_lease
from launcher.stores import ANY_OWNER, InvalidJobState, JobNotFound, JobStore, Lease, StoredJob, now_ms
from launcher.stores.contract import Owner
from pipelines.models import ExportStatus
from transforms.storage.files import remove_tree

_LOG = logging.getLogger(__name__)

CLEANUP_AGENT = "bulk-export cleanup"
RECOVERY_AGENT = "bulk-export lease recovery"
DEFAULT_CLEANUP_BATCH = 100
_CANCEL_WAIT_S = 30.0

# Told, before cancel waits, the lease it waits for and the latest end of the wait (ms since the epoch).
OnWait = Callable[[StoredJob, Lease, int], None]


def cancel_job(store: JobStore, audit: AuditLog, tenant: str, job_id: str, owner: Owner,
               wait_s: float = _CANCEL_WAIT_S, on_wait: Optional[OnWait] = None) -> StoredJob:
    """Cancels an accepted or running job and returns it once its output is gone.

    `owner`: the caller's owner (None: no owner; `ANY_OWNER`: an operator's
    access). A finished job raises `InvalidJobState`. The launcher running the
    job sees the status, stops its pipeline, removes the output and releases its
    lease; this waits for that (at most `wait_s`, and never past the lease's end
    unless the launcher renews it), then removes whatever is left. It does not
    wait for a lease that has expired, nor for one whose holder is a process of
    this machine that no longer exists (that lease is released). `on_wait` is
    told before a wait starts.
    """
    record = store.cancel(tenant, job_id, owner)
    engine_note = _cancel_on_engine(store, job_id)
    _await_launcher(store, record, wait_s, on_wait)
    remove_tree(job_output_dir(record.output_dir, tenant, job_id))
    description = "cancelled by request; partial output removed"
    audit.record("cancel", record, description=f"{description}; {engine_note}" if engine_note else description)
    return record


def _await_launcher(store: JobStore, record: StoredJob, wait_s: float, on_wait: Optional[OnWait]) -> None:
    """Waits (at most `wait_s`) for the launcher of a cancelled job to release its lease; see `cancel_job`."""
    job_id = record.job_id
    lease = store.lease(job_id)
    if lease is None or lease.expires_ms < now_ms():
        return
    if _holder_is_gone(lease.holder):
        store.release_lease(job_id, lease.holder)
        return
    deadline = time.monotonic() + wait_s
    if on_wait is not None:
        on_wait(record, lease, now_ms() + int(wait_s * 1000))
    while store.is_leased(job_id) and time.monotonic() < deadline:
        time.sleep(0.1)


def _cancel_on_engine(store: JobStore, job_id: str) -> Optional[str]:
    """Cancels the engine's job of a submitted export (Dataflow); returns why it could not, if so."""
    runner_job = store.runner_job(job_id)
    if runner_job is None:
        return None
    from launcher.jobs.dataflow import cancel_runner_job

    problem = cancel_runner_job(runner_job)
    if problem:
        _LOG.warning("job %s: %s", job_id, problem)
    return problem


def _holder_is_gone(holder: str) -> bool:
    """Whether a lease holder (`host:pid:nonce`, `launcher.jobs.process.new_lease`) is a process of this
    machine that no longer exists. A holder elsewhere, or unreadable, is presumed alive."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != os.uname().nodename or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def delete_job(store: JobStore, audit: AuditLog, tenant: str, job_id: str, owner: Owner,
               on_wait: Optional[OnWait] = None) -> StoredJob:
    """Removes a job's output files and its records (cancelling it first if it is still running, and
    waiting, as `cancel_job` does, for the launcher of a cancelled job to stop, or of a job that has
    just completed to record its completion)."""
    record = store.get(tenant, job_id, owner)
    if not record.status.is_terminal:
        try:
            cancel_job(store, audit, tenant, job_id, owner, on_wait=on_wait)
        except InvalidJobState:  # it ended meanwhile, maybe cancelled by a concurrent request
            record = store.get(tenant, job_id, owner)
    # The launcher of a cancelled job may still be removing its files; that of a complete one may not
    # have recorded the completion yet (its claim left the lease held until then).
    if record.status in (ExportStatus.CANCELLED, ExportStatus.COMPLETE):
        _await_launcher(store, record, _CANCEL_WAIT_S, on_wait)
    remove_tree(job_output_dir(record.output_dir, tenant, job_id))
    record = store.delete(tenant, job_id, owner)
    audit.record("delete", record, description="output files and job records deleted")
    return record


def cleanup_expired(store: JobStore, audit: AuditLog, ttl_s: float, batch: int = DEFAULT_CLEANUP_BATCH,
                    now: Optional[int] = None, *, tenant: Optional[str], owner: Owner) -> list[StoredJob]:
    """Deletes the outputs and records of terminal jobs that ended over `ttl_s` ago.

    Only jobs of `tenant` (None: every tenant, an operator's sweep) and of `owner`
    (None: jobs without an owner; `ANY_OWNER`: every owner's). Jobs are claimed
    `batch` at a time under a lease, so several cleaners can run at once.
    """
    cutoff = (now_ms() if now is None else now) - int(ttl_s * 1000)
    removed: list[StoredJob] = []
    scope = [] if tenant is not None else ["every tenant"]
    if owner is ANY_OWNER:
        scope.append("every owner")
    swept = f" (a sweep of {' and '.join(scope)})" if scope else ""
    while True:
        claimed = store.claim_expired(cutoff, batch, new_lease(60), tenant=tenant, owner=owner)
        for record in claimed:
            remove_tree(job_output_dir(record.output_dir, record.tenant, record.job_id))
            try:
                store.delete(record.tenant, record.job_id)
            except JobNotFound:  # deleted by its owner meanwhile
                continue
            audit.record("cleanup", record, description=f"expired: ended over {ttl_s:g} s ago{swept}",
                         agent=CLEANUP_AGENT)
            removed.append(record)
        if len(claimed) < batch:
            return removed


def recover_abandoned(store: JobStore, audit: AuditLog) -> list[StoredJob]:
    """Marks `error` the jobs whose launcher stopped renewing its lease, and removes their output."""
    reaped = store.reap_expired()
    for record in reaped:
        remove_tree(job_output_dir(record.output_dir, record.tenant, record.job_id))
        audit.record("error", record, SERIOUS_FAILURE, record.error_message, agent=RECOVERY_AGENT)
    return reaped
