"""The launcher's watch over a pipeline process: completion claimed while it is still exiting, a lease lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from launcher.core.audit import AuditLog
from launcher.jobs.process import LeaseLost, new_lease, run_and_watch
from launcher.jobs.attempts import RunControl, _run_attempt
from launcher.jobs.store_sink import StoreJobSink
from launcher.stores import SqliteJobStore
from pipelines.export import ExportJob
from pipelines.models import ExportStatus, Manifest
from pipelines.options import ExportSettings
from tests.helpers import TX, _record


def test_a_job_completed_before_its_process_exits_is_not_taken_for_a_lost_lease(sample_dir, tmp_path):
    # Completing a job releases its lease. Between the pipeline's last step and its process's exit
    # the launcher may try to renew that lease; that must not count as the lease being taken over.
    store = SqliteJobStore(str(tmp_path / "state"))
    lease = new_lease(0.3)
    store.create(_record("job-1"), lease=lease)
    store.mark_in_progress("job-1")
    job = ExportJob("job-1", TX, ExportSettings(source=str(sample_dir), output=str(tmp_path / "out")), "acme")
    request = store.get("acme", "job-1").request
    argv = [*job.to_argv(), f"--request={request.model_dump_json()}"]

    def complete_at_once() -> None:  # as the pipeline's last step would, before its process ends
        store.complete("job-1", Manifest(transaction_time=TX, request="r", requires_access_token=False), 0)

    threading.Thread(target=complete_at_once).start()
    time.sleep(0.05)
    run_and_watch(argv, StoreJobSink(store.url, "job-1", 1), store, "acme", "job-1", lease, lease_s=0.3)
    assert store.status("job-1") is ExportStatus.COMPLETE


def test_a_launcher_whose_job_was_taken_over_leaves_the_new_attempt_alone(sample_dir, tmp_path):
    # A launcher that stalls past its lease finds, when it wakes, that its job was reaped and resumed
    # by another launcher: it must neither fail that attempt nor remove its files.
    store, audit = SqliteJobStore(str(tmp_path / "state")), AuditLog(str(tmp_path / "state"))
    job = ExportJob("job-1", TX, ExportSettings(source=str(sample_dir), output=str(tmp_path / "out")), "acme")
    old = new_lease(30)
    store.create(_record("job-1").model_copy(update={"output_dir": job.job_dir}), lease=old)
    marker = Path(job.job_dir) / "attempt-2.marker"

    def stall_then_taken_over() -> None:  # runs inside the attempt, before its pipeline starts
        store.reap_expired(now=old.expires_ms + 1)
        store.claim_resume("acme", "job-1", None, new_lease(30))
        marker.write_text("written by attempt 2")

    with pytest.raises(LeaseLost, match="taken over"):
        _run_attempt(store, RunControl(audit), job, store.get("acme", "job-1").request, (), old, 1,
                     stall_then_taken_over)
    record = store.get("acme", "job-1")
    assert (record.status, record.attempt, record.error_message) == (ExportStatus.IN_PROGRESS, 2, None)
    assert marker.read_text() == "written by attempt 2"
    assert not Path(audit.path("acme")).exists()  # the old attempt records no error event
