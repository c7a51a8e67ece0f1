"""The Flex Template path (`launcher.jobs.submit`): the CLI's validation, audit and lease, and no credential in options."""

from __future__ import annotations

import json
import time

import pytest

from launcher.jobs import submit as submit_module
from launcher.jobs.store_sink import StoreJobSink
from launcher.kickoff.parser import KickoffRefused
from launcher.stores import Lease, SqliteJobStore, now_ms
from pipelines.models import ExportRequest, ExportStatus
from tests.helpers import _record

KICKOFF = "https://x/fhir/$export"


def _argv(tmp_path, sample_dir, request: ExportRequest, *extra: str) -> list[str]:
    return [f"--source={sample_dir}", f"--output={tmp_path / 'out'}", f"--job_store={tmp_path / 'state'}",
            f"--request={request.model_dump_json()}", *extra]


def _events(tmp_path, tenant: str = "default") -> list[str]:
    path = tmp_path / "state" / "audit" / f"{tenant}.ndjson"
    events = [json.loads(line)["entity"][0]["detail"] for line in path.read_text().splitlines()]
    return [next(d["valueString"] for d in detail if d["type"] == "lifecycle-event") for detail in events]


@pytest.mark.parametrize("request_json, parameter", [
    ({"request_url": KICKOFF, "types": ["Foo"]}, "_type"),
    ({"request_url": KICKOFF, "elements": ["Patient.nope"]}, "_elements"),
    ({"request_url": KICKOFF, "type_filters": [{"resource_type": "Observation", "query": "nope=1"}]}, "_typeFilter"),
    ({"request_url": KICKOFF, "patients": ["p1"]}, "patient"),
])
def test_a_request_the_cli_would_refuse_is_refused_before_a_job_exists(tmp_path, sample_dir, request_json, parameter):
    request = ExportRequest.model_validate(request_json)
    with pytest.raises(KickoffRefused) as refused:
        submit_module.submit(_argv(tmp_path, sample_dir, request))
    assert refused.value.parameter == parameter
    assert SqliteJobStore(str(tmp_path / "state")).list("default", include_terminal=True) == []


def test_a_submitted_job_is_audited_and_completes(tmp_path, sample_dir):
    request = ExportRequest(request_url=KICKOFF + "?_type=Patient", types=("Patient",),
                            include_associated_data=("LatestProvenanceResources",))
    job_id = submit_module.submit(_argv(tmp_path, sample_dir, request))
    job = SqliteJobStore(str(tmp_path / "state")).get("default", job_id)
    assert job.status is ExportStatus.COMPLETE
    assert job.request.include_associated_data == ("LatestProvenanceResources",)  # validated, not dropped
    assert job.request.request_url == KICKOFF + "?_type=Patient"
    assert _events(tmp_path) == ["kickoff"]


def test_a_submitted_job_whose_workers_stop_reporting_ends_in_error(tmp_path, sample_dir, monkeypatch, run_cli):
    """Dataflow accepts the job and returns; if its workers never report, the lease lapses and the job ends."""
    monkeypatch.setattr(submit_module, "run", lambda argv, sink: None)  # the remote engine took it, then died
    request = ExportRequest(request_url=KICKOFF)
    job_id = submit_module.submit(_argv(tmp_path, sample_dir, request, "--lease_s=0.5"))
    store = SqliteJobStore(str(tmp_path / "state"))
    assert store.get("default", job_id).status is ExportStatus.IN_PROGRESS and store.is_leased(job_id)
    time.sleep(0.7)
    assert run_cli("list", "--all", state_dir=tmp_path / "state").code == 0  # any command reaps lapsed jobs
    job = store.get("default", job_id)
    assert job.status is ExportStatus.ERROR
    assert _events(tmp_path) == ["kickoff", "error"]


def test_the_pipelines_reports_renew_a_submitted_jobs_lease(tmp_path):
    store = SqliteJobStore(str(tmp_path / "state"))
    lease = Lease("dataflow-launcher", now_ms() + 300)
    store.create(_record("job-1"), lease=lease)
    store.mark_in_progress("job-1")
    sink = StoreJobSink(str(tmp_path / "state"), "job-1", 1, lease=lease, lease_s=60)
    sink.progress({"Patient": 3})
    time.sleep(0.4)  # past the first expiry
    assert store.is_leased("job-1")
    assert store.reap_expired() == []
    plain = StoreJobSink(str(tmp_path / "state"), "job-1", 1)  # a CLI run: its launcher renews, not the sink
    assert plain._holder is None


@pytest.mark.parametrize("dsn", ["postgresql://bulk:s3cret@127.0.0.1:1/db",
                                 "postgresql://bulk@127.0.0.1:1/db?password=s3cret"])
def test_a_store_url_with_a_password_never_reaches_options_or_workers(tmp_path, sample_dir, dsn):
    request = ExportRequest(request_url=KICKOFF)
    argv = [f"--source={sample_dir}", f"--output={tmp_path / 'out'}", f"--job_store={dsn}",
            f"--request={request.model_dump_json()}"]
    with pytest.raises(ValueError, match="PGPASSWORD") as refused:
        submit_module.submit(argv)
    assert "s3cret" not in str(refused.value)
    with pytest.raises(ValueError, match="PGPASSWORD"):
        StoreJobSink(dsn, "job-1")
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_a_store_url_with_a_password_before_a_job_exists(run_cli, sample_dir, tmp_path):
    result = run_cli("export", "--job-store", "postgresql://bulk:s3cret@127.0.0.1:1/db", "--source", str(sample_dir),
                     "--output", str(tmp_path / "out"))
    assert result.code == 2 and "PGPASSWORD" in result.err
    assert "s3cret" not in result.err + result.out
    assert not (tmp_path / "out").exists()
