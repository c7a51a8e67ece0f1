"""Ending jobs: cancel, delete, expiry cleanup, and recovery of jobs whose launcher died.

Each operation changes the store first (a guarded transition, so it races
safely with the job's own completion), then removes files, then appends an
AuditEvent.
"""

from __future__ import annotations

import time
from typing import Optional

from launcher.audit import SERIOUS_FAILURE, AuditLog
from launcher.names import job_output_dir
from launcher.runner import new_lease
from launcher.stores import JobNotFound, JobStore, StoredJob, now_ms
from transforms.write.storage import remove_tree

CLEANUP_AGENT = "bulk-export cleanup"
RECOVERY_AGENT = "bulk-export lease recovery"
DEFAULT_CLEANUP_BATCH = 100
_CANCEL_WAIT_S = 30.0


def cancel_job(store: JobStore, audit: AuditLog, tenant: str, job_id: str, owner: Optional[str] = None,
               wait_s: float = _CANCEL_WAIT_S) -> StoredJob:
    """Cancels an accepted or running job and returns it once its output is gone.

    A finished job raises `InvalidJobState`. The launcher running the job sees
    the status, stops its pipeline, removes the output and releases its lease;
    this waits for that (at most `wait_s`), then removes whatever is left.
    """
    record = store.cancel(tenant, job_id, owner)
    deadline = time.monotonic() + wait_s
    while store.is_leased(job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    remove_tree(job_output_dir(record.output_dir, tenant, job_id))
    audit.record("cancel", record, description="cancelled by request; partial output removed")
    return record


def delete_job(store: JobStore, audit: AuditLog, tenant: str, job_id: str, owner: Optional[str] = None) -> StoredJob:
    """Removes a job's output files and its records (cancelling it first if it is still running)."""
    record = store.get(tenant, job_id, owner)
    if not record.status.is_terminal:
        cancel_job(store, audit, tenant, job_id, owner)
    remove_tree(job_output_dir(record.output_dir, tenant, job_id))
    record = store.delete(tenant, job_id, owner)
    audit.record("delete", record, description="output files and job records deleted")
    return record


def cleanup_expired(store: JobStore, audit: AuditLog, ttl_s: float, batch: int = DEFAULT_CLEANUP_BATCH,
                    now: Optional[int] = None) -> list[StoredJob]:
    """Deletes the outputs and records of terminal jobs, of every tenant, that ended over `ttl_s` ago.

    Jobs are claimed `batch` at a time under a lease, so several cleaners can run at once.
    """
    cutoff = (now_ms() if now is None else now) - int(ttl_s * 1000)
    removed: list[StoredJob] = []
    while True:
        claimed = store.claim_expired(cutoff, batch, new_lease(60))
        for record in claimed:
            remove_tree(job_output_dir(record.output_dir, record.tenant, record.job_id))
            try:
                store.delete(record.tenant, record.job_id)
            except JobNotFound:  # deleted by its owner meanwhile
                continue
            audit.record("cleanup", record, description=f"expired: ended over {ttl_s:g} s ago",
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
