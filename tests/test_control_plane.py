"""The control plane imports no Beam, pyarrow or fastavro: only the command that runs a pipeline does.

Each command runs in a fresh interpreter, on real job records in a real
SQLite store, and reports which of those heavy packages its run imported.
"""

from __future__ import annotations

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


def test_the_export_command_is_the_one_that_imports_beam(tmp_path, sample_dir):
    result = _run(["export", "--state-dir", str(tmp_path / "state"), "--source", str(sample_dir),
                   "--output", str(tmp_path / "out"), "--kickoff", "http://x/fhir/$export?_type=Organization"])
    assert result["code"] == 0
    assert "apache_beam" in result["heavy"]
