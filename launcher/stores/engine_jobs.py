"""The job a remote engine runs for an export: recorded at submission, so a cancel can reach it.

Mixed into `SqlJobStore`. A Flex Template submission records Dataflow's own
job id (with its project and region); `launcher.jobs.dataflow.cancel_runner_job`
reads it back when the export is cancelled.
"""

from __future__ import annotations

from typing import Optional

import orjson

RUNNER_JOB_COLUMN = "ALTER TABLE jobs ADD COLUMN runner_job TEXT"


class RunnerJobQueries:
    """The runner-job part of a SQL job store."""

    def set_runner_job(self, job_id: str, runner_job: dict) -> None:
        """Records what the engine calls this export's job, e.g. `{"runner": "dataflow", "project": ...,
        "region": ..., "job_id": ...}`."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET runner_job = ? WHERE job_id = ?", (orjson.dumps(runner_job).decode(), job_id))

    def runner_job(self, job_id: str) -> Optional[dict]:
        with self._tx(write=False) as db:
            row = db.execute("SELECT runner_job FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return orjson.loads(row["runner_job"]) if row and row["runner_job"] else None
