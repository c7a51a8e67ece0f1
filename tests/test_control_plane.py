"""The control plane imports no Beam, pyarrow or fastavro: only the pipeline's process does.

Each command runs in a fresh interpreter, on real job records in a real
SQLite store, and reports which of those heavy packages its run imported.
"""

from __future__ import annotations

import gzip

import pytest

from launcher.stores import SqliteJobStore
from pipelines.models import ExportStatus
from tests.helpers import _manifest, _record, _run


@pytest.fixture
def state(tmp_path) -> str:
    """A store holding a complete job, a running one and an old finished one, with local output folders."""
    folder = str(tmp_path / "state")
    store = SqliteJobStore(folder)
    for job_id, status in (("done", ExportStatus.COMPLETE), ("running", ExportStatus.IN_PROGRESS),
                           ("old", ExportStatus.COMPLETE)):
        record = _record(job_id).model_copy(update={"output_dir": str(tmp_path / "out" / "acme" / job_id)})
        (tmp_path / "out" / "acme" / job_id).mkdir(parents=True)
        store.create(record)
        store.mark_in_progress(job_id)
        if status is ExportStatus.COMPLETE:
            store.complete(job_id, _manifest([("Patient", 3)]), 0)
    return folder


@pytest.mark.parametrize("command", [
    ["--help"],
    ["status", "done"],
    ["status", "done", "--json"],
    ["list", "--all"],
    ["manifest", "done"],
    ["cancel", "running"],
    ["delete", "done"],
    ["cleanup", "--ttl", "1s"],
    ["export", "--help"],
    ["serve", "--help"],
])
def test_job_commands_import_no_beam(state, command):
    argv = command if command[0].startswith("-") else [command[0], "--state-dir", state, "--tenant", "acme",
                                                      *command[1:]]
    result = _run(argv)
    assert result["code"] == 0
    assert result["heavy"] == []


def test_a_refused_kickoff_imports_no_beam(tmp_path):
    """Kickoff parsing and validation (here _typeFilter, _elements and a bad _type) happen before Beam."""
    url = "http://x/fhir/$export?_type=Observation&_typeFilter=Observation%3Fstatus%3Dfinal&_elements=status"
    assert _run(["export", "--state-dir", str(tmp_path), "--source", str(tmp_path),
                 "--kickoff", url + "&_type=Nope"]) == {"code": 2, "heavy": []}


@pytest.mark.parametrize("kickoff, scan_bytes, gzipped", [
    ("http://x/fhir/$export?_type=Organization", None, False),
    ("http://x/fhir/$export?_type=Organization", None, True),  # its content size is read from the gzip trailer
    ("http://x/fhir/Patient/$export?_type=Patient", "0", False),  # a source too large to scan: the pipeline resolves
], ids=["system", "system-gzip", "patient-unscanned"])
def test_an_export_without_runner_options_runs_its_pipeline_and_its_launcher_imports_no_beam(
        tmp_path, sample_dir, monkeypatch, kickoff, scan_bytes, gzipped):
    """Only the pipeline's process, forked from the fork server, imports Beam."""
    if scan_bytes is not None:
        monkeypatch.setenv("BULK_EXPORT_KICKOFF_SCAN_BYTES", scan_bytes)
    source = sample_dir
    if gzipped:
        source = tmp_path / "source"
        source.mkdir()
        (source / "Organization.ndjson.gz").write_bytes(gzip.compress((sample_dir / "Organization.ndjson").read_bytes()))
    result = _run(["export", "--state-dir", str(tmp_path / "state"), "--source", str(source),
                   "--output", str(tmp_path / "out"), "--kickoff", kickoff])
    assert result == {"code": 0, "heavy": []}
    assert list((tmp_path / "out").glob("default/*/manifest.json"))
