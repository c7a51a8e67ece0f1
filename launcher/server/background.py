"""Jobs the server runs: recorded in the request, run to their end in a background thread each.

Each attempt runs through the launcher's own runner (`launcher.jobs.attempts`), so its
pipeline is a child process in its own process group under a lease this
server renews; a kill of the server ends the pipelines with it, and the
lapsed leases end their jobs in `error` when a server next looks.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from launcher.jobs.process import ExportFailed, JobCancelled, LeaseLost, RunControl
from launcher.stores import JobStore, StoredJob
from pipelines.models import ExportRequest
from pipelines.settings import ExportSettings

_LOG = logging.getLogger(__name__)


class BackgroundJobs:
    """Records kick-offs and runs each in a thread of its own."""

    def __init__(self, store: JobStore, control: RunControl, beam_args: tuple[str, ...]):
        self._store = store
        self._control = control
        self._beam_args = beam_args

    def start(self, request: ExportRequest, settings: ExportSettings, tenant: str, owner: Optional[str]) -> StoredJob:
        """Records `tenant`'s job for `owner` (refusals raise before one exists) and starts its run;
        returns it `accepted`."""
        from launcher.jobs.attempts import JobStart, record_export  # imports Beam (the server does so at start-up)

        start = JobStart(self._store, request, settings, tenant, owner, self._beam_args)
        recorded = record_export(start, self._control)
        job_id = recorded.job.job_id
        threading.Thread(target=self._run, args=(recorded,), name=f"export-{job_id}", daemon=True).start()
        return self._store.get(tenant, job_id, owner)

    def _run(self, recorded) -> None:
        from launcher.jobs.attempts import run_recorded

        job_id = recorded.job.job_id
        try:
            run_recorded(self._store, self._control, recorded)
        except (ExportFailed, JobCancelled, LeaseLost) as exc:  # the store holds the outcome; the audit logged it
            _LOG.debug("job %s ended: %s", job_id, type(exc).__name__)
        except Exception:
            _LOG.exception("job %s: the runner failed", job_id)
