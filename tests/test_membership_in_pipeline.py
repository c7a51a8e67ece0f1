"""A source too large for the launcher to scan: the pipeline resolves the covered patients itself.

The launcher never reads such a source (on Dataflow it is a small VM); a Group
or `patient` that cannot be exported then ends the job in `error`, with the
message a kick-off refusal gives for a small source, and leaves no file. The
outputs themselves are checked on both paths by `test_patient_group_export.py`
and `test_scope_privacy.py` (their `in-pipeline` cases).
"""

from __future__ import annotations

import json

import httpx
import pytest

import transforms.read.lookup
from launcher.kickoff.patients import SCAN_LIMIT_ENV
from tests.helpers import job_rows, post_parameters
from tests.server_process import FHIR_HEADERS, poll, serve


@pytest.fixture
def unscanned(monkeypatch):
    """Every source counts as too large to scan, and a scan by the launcher would fail the test."""
    monkeypatch.setenv(SCAN_LIMIT_ENV, "0")

    def no_scan(*args, **kwargs):
        raise AssertionError("the launcher scanned the source")

    monkeypatch.setattr(transforms.read.lookup, "index_source", no_scan)  # the scan imports it when it runs


def _first_id(folder, resource_type: str) -> str:
    with open(folder / f"{resource_type}.ndjson", "rb") as f:
        return json.loads(f.readline())["id"]


def test_a_group_export_runs_without_the_launcher_reading_the_source(unscanned, run_cli, sample_dir, tmp_path):
    group = _first_id(sample_dir, "Group")
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--kickoff", f"http://x/fhir/Group/{group}/$export?_type=Patient")
    assert result.code == 0, result.err
    manifest = result.manifest()
    assert manifest["output"][0]["type"] == "Patient" and manifest["output"][0]["count"] > 0
    assert not list((tmp_path / "out").rglob("patients.ndjson"))


@pytest.mark.parametrize("kickoff, parameters, message", [
    ("Group/nope/$export", None, "group: Group/nope is not in the source"),
    ("Patient/$export", "zzz", "patient: Patient/zzz is not in the source"),
])
def test_a_bad_group_or_patient_ends_the_job_in_error_with_the_refusals_message(
        unscanned, run_cli, sample_dir, tmp_path, kickoff, parameters, message):
    small = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "small"),
                    "--kickoff", f"http://x/fhir/{kickoff}",
                    *(["--parameters", str(post_parameters(tmp_path, parameters))] if parameters else []),
                    state_dir=tmp_path / "state")
    assert small.code == 1 and message in small.err, small.err
    [[job, *_]] = job_rows(run_cli("list", "--all", state_dir=tmp_path / "state").out)
    status = run_cli("status", job, "--json", state_dir=tmp_path / "state")
    record = json.loads(status.out)
    assert record["status"] == "error" and message in record["error_message"]
    assert not (tmp_path / "small" / "default" / job).exists()


def test_the_same_refusal_comes_at_kick_off_for_a_source_the_launcher_scans(run_cli, sample_dir, tmp_path):
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--kickoff", "http://x/fhir/Group/nope/$export")
    assert result.code == 2 and "refused: group: Group/nope is not in the source" in result.err
    assert run_cli("list", "--all").out == ""


def test_a_bad_scan_limit_is_refused(monkeypatch, run_cli, sample_dir, tmp_path):
    monkeypatch.setenv(SCAN_LIMIT_ENV, "lots")
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--kickoff", "http://x/fhir/Patient/$export")
    assert result.code == 2 and SCAN_LIMIT_ENV in result.err


def test_over_http_an_unknown_group_of_a_large_source_is_a_failed_job(monkeypatch, sample_dir, tmp_path):
    monkeypatch.setenv(SCAN_LIMIT_ENV, "0")
    with serve(sample_dir, tmp_path / "out", tmp_path / "state") as server:
        with httpx.Client(timeout=30) as client:
            kicked = client.get(server.fhir + "/Group/nope/$export", headers=FHIR_HEADERS)
            assert kicked.status_code == 202, kicked.text
            answer = poll(client, kicked.headers["Content-Location"])
    assert answer.status_code == 500
    assert "group: Group/nope is not in the source" in answer.json()["issue"][0]["diagnostics"]
