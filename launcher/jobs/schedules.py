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

from launcher.kickoff.parser import with_since
from pipelines.models import ExportRequest
from transforms.errors import Refused


def scheduled_request(request: ExportRequest, last: Optional[str]) -> ExportRequest:
    """`request` with `_since` set to the schedule's last `transactionTime` (unchanged on a first run)."""
    if request.until is not None:
        raise Refused("--schedule: a scheduled export cannot have _until; each run ends at its transactionTime")
    if last is None:
        return request
    return with_since(request, last)
