"""Scheduled incremental exports: three runs of one schedule, data added between them."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from launcher.jobs.schedules import scheduled_request
from launcher.stores import SqliteJobStore, open_store
from launcher.tools.sample_data import generate
from pipelines.models import ExportRequest, ExportStatus, JobRecord, Manifest
from transforms.fhir.instant import instant_key


def _stamp(instant: str, ms: int) -> str:
    moment = dt.datetime.fromisoformat(instant.replace("Z", "+00:00")) + dt.timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _add(source: Path, run: int, stamps: list[str]) -> set[str]:
    ids = [f"run{run}-{n}" for n in range(len(stamps))]
    with open(source / "Observation.ndjson", "a") as f:
        for rid, stamp in zip(ids, stamps):
            f.write(json.dumps({"resourceType": "Observation", "id": rid, "status": "final",
                                "code": {"text": "x"}, "meta": {"lastUpdated": stamp}}) + "\n")
    return set(ids)


def _exported_ids(manifest: dict) -> list[str]:
    ids = []
    for entry in manifest["output"]:
        path = Path(entry["url"].removeprefix("file://"))
        ids += [f"{entry['type']}/{json.loads(line)['id']}" for line in path.read_bytes().splitlines()]
    return ids


def test_three_scheduled_runs_leave_no_gap_and_no_overlap(run_cli, tmp_path):
    source = tmp_path / "src"
    generate(source, patients=5, seed=3)
    args = ("export", "--source", str(source), "--output", str(tmp_path / "out"), "--schedule", "nightly-obs",
            "--exclude-missing-last-updated")
    runs, added = [], []
    for run in range(3):
        result = run_cli(*args)
        assert result.code == 0, result.err
        manifest = result.manifest()
        job = json.loads(run_cli("status", result.manifest_path.parent.name, "--json").out)
        # Each run starts where the previous one ended: its _since is the last transactionTime.
        assert job["request"].get("since") == (runs[-1][0]["transactionTime"] if runs else None)
        runs.append((manifest, _exported_ids(manifest)))
        # Just after this run's transactionTime (so not in it) and well after: both belong to the next run.
        t = manifest["transactionTime"]
        added.append(_add(source, run, [_stamp(t, 1), _stamp(t, 2)]))

    all_ids = [i for _, ids in runs for i in ids]
    assert len(all_ids) == len(set(all_ids)), "a resource was exported twice"
    assert {i.split("/")[1] for _, ids in runs[1:] for i in ids} == added[0] | added[1]
    for n in (1, 2):
        assert {i.split("/")[1] for i in runs[n][1]} == added[n - 1]
    first = runs[0][1]
    assert len(first) == sum(len(p.read_bytes().splitlines()) for p in source.glob("*.ndjson")) - 6
    times = [instant_key(m["transactionTime"]) for m, _ in runs]
    assert times == sorted(times) and len(set(times)) == 3


def test_a_failed_run_does_not_advance_the_schedule(run_cli, tmp_path, sample_dir):
    args = ("export", "--output", str(tmp_path / "out"), "--schedule", "s1")
    done = run_cli(*args, "--source", str(sample_dir))
    assert done.code == 0, done.err
    assert run_cli(*args, "--source", str(tmp_path / "missing")).code == 2  # refused: no run at all (issue 29)
    (broken := tmp_path / "broken").mkdir()
    packed = gzip.compress((sample_dir / "Observation.ndjson").read_bytes())
    (broken / "Observation.ndjson.gz").write_bytes(packed[: len(packed) // 2])  # a run that fails mid-stream
    assert run_cli(*args, "--source", str(broken)).code == 1
    store = SqliteJobStore(str(tmp_path / "state"))
    assert store.last_transaction_time("default", "s1") == done.manifest()["transactionTime"]
    assert store.last_transaction_time("other-tenant", "s1") is None


def test_schedules_refuse_until_and_bad_names(run_cli, sample_dir, tmp_path):
    request = ExportRequest(request_url="x", until="2020-01-01T00:00:00Z")
    with pytest.raises(ValueError, match="--schedule: a scheduled export cannot have _until"):
        scheduled_request(request, None)
    refused = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path), "--schedule", "../x")
    assert refused.code == 2 and "--schedule" in refused.err


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return SqliteJobStore(str(tmp_path / "state"))
    return open_store(request.getfixturevalue("postgres_dsn"))


def _complete(store, job_id: str, transaction_time: str, schedule: str) -> None:
    record = JobRecord(job_id=job_id, tenant="t", level="system", request=ExportRequest(request_url="x"),
                       request_url="x", transaction_time=transaction_time, status=ExportStatus.IN_PROGRESS,
                       created_at=transaction_time, output_dir=f"/o/t/{job_id}")
    store.create(record, run_spec={"settings": {}, "beam_args": [], "schedule": schedule})
    manifest = Manifest(transaction_time=transaction_time, request="x", requires_access_token=False)
    store.complete(job_id, manifest, 0)


def test_stores_advance_a_schedule_only_forward(store):
    assert store.last_transaction_time("t", "nightly") is None
    _complete(store, "j1", "2024-01-02T00:00:00.5+01:00", "nightly")
    assert store.last_transaction_time("t", "nightly") == "2024-01-02T00:00:00.5+01:00"
    _complete(store, "j2", "2024-01-01T23:00:00.4Z", "nightly")  # an older run finishing late
    assert store.last_transaction_time("t", "nightly") == "2024-01-02T00:00:00.5+01:00"
    _complete(store, "j3", "2024-01-01T23:00:00.6Z", "nightly")
    assert store.last_transaction_time("t", "nightly") == "2024-01-01T23:00:00.6Z"
    assert store.last_transaction_time("t", "other") is None


def test_the_template_entry_point_records_submits_and_the_pipeline_completes_the_job(tmp_path, sample_dir):
    """`launcher.jobs.submit` returns once submitted; the pipeline's last step marks the job complete in the store."""
    from launcher.jobs.submit import submit

    state = str(tmp_path / "state")
    argv = [f"--source={sample_dir}", f"--output={tmp_path / 'out'}", f"--job_store={state}",
            "--schedule=nightly", f"--request={ExportRequest(request_url='https://x/fhir/$export').model_dump_json()}"]
    first = submit(argv)
    second = submit(argv)
    store = SqliteJobStore(state)
    jobs = [store.get("default", job_id) for job_id in (first, second)]
    assert [j.status for j in jobs] == [ExportStatus.COMPLETE] * 2
    assert jobs[1].request.since == jobs[0].transaction_time
    assert store.last_transaction_time("default", "nightly") == jobs[1].transaction_time
    with pytest.raises(ValueError, match="--job_store"):
        submit(argv[:2] + argv[3:])


def test_the_template_entry_point_refuses_unsafe_names_and_reads_the_tenants_own_source(tmp_path, sample_dir):
    from launcher.jobs.submit import submit

    shutil.copytree(sample_dir, tmp_path / "src" / "clinic-a")
    state, out = str(tmp_path / "state"), tmp_path / "out"
    request = ExportRequest(request_url="https://x/fhir/$export").model_dump_json()
    argv = [f"--source={tmp_path / 'src' / '{tenant}'}", f"--output={out}", f"--job_store={state}",
            f"--request={request}"]
    for unsafe, named in (("--tenant=..", "--tenant"), ("--job_id=../../escape", "job id")):
        with pytest.raises(ValueError, match=re.escape(named)):
            submit([*argv, unsafe])
    assert not out.exists() and not (tmp_path / "escape").exists()
    job = SqliteJobStore(state).get("clinic-a", submit([*argv, "--tenant=clinic-a"]))
    assert job.status is ExportStatus.COMPLETE
    expected = sum(len(p.read_bytes().splitlines()) for p in sample_dir.glob("*.ndjson"))
    assert sum(p.exported for p in job.progress) == expected
    assert Path(job.output_dir).parent == out / "clinic-a"
