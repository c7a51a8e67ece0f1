"""The server's audit log, which also logs one line per job event and counts it in the metrics.

Every lifecycle event the server records (kick-off, complete, error, cancel,
delete, expiry cleanup, a lapsed lease's recovery) passes through
`AuditLog.record`, so this is the one place that sees them all. A line names
the job, its tenant, owner, level and types, and, once it ends, its counts,
bytes and duration; never the request's query values nor a resource.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

from launcher.core.audit import SUCCESS, AuditLog
from launcher.server.metrics import Metrics
from pipelines.models import JobRecord
from transforms.fhir.instant import InvalidInstant, instant_key
from transforms.storage.files import is_local

_LOG = logging.getLogger("launcher.server.jobs")
_VERBS = {"kickoff": "started", "complete": "complete", "error": "failed", "cancel": "cancelled",
          "delete": "deleted", "cleanup": "expired and removed"}
_MAX_MESSAGE = 300


class ObservedAuditLog(AuditLog):
    """An `AuditLog` that logs and counts each job event it appends."""

    def __init__(self, folder: str, metrics: Metrics):
        super().__init__(folder)
        self._metrics = metrics

    def record(self, event: str, job: JobRecord, outcome: str = SUCCESS, description: Optional[str] = None,
               agent: Optional[str] = None) -> dict:
        resource = super().record(event, job, outcome, description, agent)
        try:
            self._observe(event, job, description, agent)
        except Exception:  # the event is recorded; its log line must never fail the job
            _LOG.exception("job %s: could not log its %s event", job.job_id, event)
        return resource

    def _observe(self, event: str, job: JobRecord, description: Optional[str], agent: Optional[str]) -> None:
        self._metrics.job_events.labels(event).inc()
        ended = event in ("complete", "error", "cancel")
        seconds = _seconds(job) if ended else None
        fields = {"event": event, "job_id": job.job_id, "tenant": job.tenant, "owner": job.owner,
                  "export_level": job.level.value, "types": list(job.request.types), "status": job.status.value}
        if seconds is not None:
            fields["duration_s"] = round(seconds, 3)
        text = f"job {job.job_id} {_VERBS[event]}: tenant={job.tenant} level={job.level.value}"
        if job.owner:
            text += f" owner={job.owner}"
        if job.request.types:
            text += f" types={','.join(job.request.types)}"
        if event == "complete":
            counts = {p.type: p.exported for p in job.progress}
            nbytes = _bytes_written(job.output_dir)
            fields.update(resources=sum(counts.values()), counts=counts, bytes=nbytes, bad_records=job.bad_records)
            self._metrics.completed(job, seconds or 0.0, nbytes)
            text += f"; {sum(counts.values()):,} resources ({_counts(counts)}), {nbytes:,} bytes"
        if seconds is not None:
            text += f", after {seconds:.1f} s"
        if agent:
            fields["agent"] = agent
            text += f" (by {agent})"
        if event == "error" and description:
            fields["reason"] = description[:_MAX_MESSAGE]
            text += f": {description[:_MAX_MESSAGE]}"
        level = logging.WARNING if event == "error" else logging.INFO
        _LOG.log(level, "%s", text, extra={"fields": fields})


def _seconds(job: JobRecord) -> Optional[float]:
    """From kick-off to the job's end (or to now, while it has none)."""
    try:
        start = _epoch(job.created_at)
        end = _epoch(job.completed_at) if job.completed_at else time.time()
    except InvalidInstant:
        return None
    return max(0.0, end - start)


def _epoch(instant: str) -> float:
    seconds, fraction = instant_key(instant)
    return seconds + (float("0." + fraction) if fraction else 0.0)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count:,}" for name, count in sorted(counts.items())) or "none"


def _bytes_written(folder: str) -> int:
    """The bytes of the files under a local output folder (0 for GCS output: not listed here)."""
    if not is_local(folder):
        return 0
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:  # removed meanwhile
                pass
    return total
