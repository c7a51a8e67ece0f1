"""The named schedules' SQL, mixed into the SQL job store: each schedule's last completed `transactionTime`."""

from __future__ import annotations

from typing import Optional

import orjson

from launcher.core.names import check_schedule
from transforms.fhir.instant import instant_key

SCHEDULES_TABLE = """CREATE TABLE IF NOT EXISTS schedules (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    last_transaction_time TEXT NOT NULL,
    last_job_id TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
)"""



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
