"""Named incremental schedules: each run exports what changed since the last successful one.

A schedule (per tenant) remembers the `transactionTime` of its last run that
completed. The next run of the same schedule uses it as `_since`. `_since` is
exclusive and a run exports everything up to and including its
`transactionTime`, so a resource with `meta.lastUpdated` lands in exactly one run
(one without it is exported by every run, unless excluded: see docs/deploy.md). The
schedule advances in the same transaction that marks the job complete (on any
worker, through the job store), and only forward; a failed run leaves it
where it was, so the next run covers the failed run's window too.
"""

from __future__ import annotations

from typing import Optional

import orjson

from launcher.names import check_segment
from pipelines.models import ExportRequest
from transforms.fhir.instant import instant_key

SCHEDULES_TABLE = """CREATE TABLE IF NOT EXISTS schedules (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    last_transaction_time TEXT NOT NULL,
    last_job_id TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
)"""


def check_schedule(name: str) -> str:
    return check_segment("--schedule", name)


def scheduled_request(request: ExportRequest, last: Optional[str]) -> ExportRequest:
    """`request` with `_since` set to the schedule's last `transactionTime` (unchanged on a first run)."""
    if request.until is not None:
        raise ValueError("--schedule: a scheduled export cannot have _until; each run ends at its transactionTime")
    if last is None:
        return request
    return ExportRequest.model_validate({**request.model_dump(), "since": last})


class ScheduleQueries:
    """The schedules' part of a SQL job store (mixed into `SqlJobStore`)."""

    lock_suffix = ""  # see `SqlJobStore.lock_suffix`

    def last_transaction_time(self, tenant: str, name: str) -> Optional[str]:
        """The `transactionTime` of the schedule's last completed run, or None before its first."""
        with self._tx(write=False) as db:
            row = db.execute("SELECT last_transaction_time FROM schedules WHERE tenant = ? AND name = ?",
                             (tenant, check_schedule(name))).fetchone()
        return row["last_transaction_time"] if row else None

    def _advance_schedule(self, db, job_id: str) -> None:
        """Inside `complete()`'s transaction: moves the job's schedule, if any, forward to its `transactionTime`."""
        job = db.execute("SELECT tenant, transaction_time, run_spec FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        schedule = orjson.loads(job["run_spec"]).get("schedule") if job["run_spec"] else None
        if not schedule:
            return
        # Runs of one schedule may complete at once: the row is created if absent, then locked, so
        # neither a duplicate insert nor a lost update (moving it backward) can happen.
        db.execute("INSERT INTO schedules (tenant, name, last_transaction_time, last_job_id) VALUES (?, ?, ?, ?)"
                   " ON CONFLICT (tenant, name) DO NOTHING", (job["tenant"], schedule, job["transaction_time"], job_id))
        row = db.execute("SELECT last_transaction_time FROM schedules WHERE tenant = ? AND name = ?" + self.lock_suffix,
                         (job["tenant"], schedule)).fetchone()
        if instant_key(row["last_transaction_time"]) < instant_key(job["transaction_time"]):
            db.execute("UPDATE schedules SET last_transaction_time = ?, last_job_id = ? WHERE tenant = ? AND name = ?",
                       (job["transaction_time"], job_id, job["tenant"], schedule))
