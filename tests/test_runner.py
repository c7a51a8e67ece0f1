"""The launcher's watch over a pipeline process: completion claimed while it is still exiting."""

from __future__ import annotations

import threading
import time

from launcher.runner import new_lease, run_and_watch
from launcher.store import StoreJobSink
from launcher.stores import SqliteJobStore
from pipelines.export import ExportJob
from pipelines.models import ExportStatus, Manifest
from pipelines.options import ExportSettings
from tests.test_store import TX, _record


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
