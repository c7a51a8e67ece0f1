"""The end-to-end export on the portable runner (embedded job server, LOOPBACK workers) and on the
multi-process local runner gives output identical to the default runner's.

Both take the job through pipeline options alone: the DoFns are pickled, the
job sink reaches the store by its URL, and in multi-process mode the workers
are other processes, so nothing can lean on this process's state.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runner_options import embedded_portable_args, multi_process_args

KICKOFF = "https://ehr.example.org/fhir/$export?_type=Patient,Observation,Encounter&_since=2018-01-01T00:00:00Z"


def _files(result) -> dict[str, bytes]:
    """The export's files by name (`<Type>-<n>` parts are numbered by sorted content, so compare per type)."""
    manifest = result.manifest()
    by_type: dict[str, list[bytes]] = {}
    for entry in manifest["output"] + manifest["error"]:
        data = Path(entry["url"].removeprefix("file://")).read_bytes()
        assert data.count(b"\n") == entry["count"]
        by_type.setdefault(entry["type"], []).extend(data.splitlines())
    return {t: b"\n".join(sorted(lines)) for t, lines in by_type.items()}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    from launcher.tools.sample_data import generate

    out = tmp_path_factory.mktemp("portable-src")
    generate(out, patients=20, seed=9)
    with open(out / "Observation.ndjson", "ab") as f:
        f.write(b'{"resourceType": "Observation", "not json\n')  # of a requested type: read, and reported
    return out


@pytest.mark.parametrize("runner", [embedded_portable_args(), multi_process_args(2)], ids=["portable", "multi"])
def test_export_is_identical_on_other_runners(run_cli, source, tmp_path, runner):
    args = ("export", "--source", str(source), "--kickoff", KICKOFF, "--max-lines-per-part", "25")
    default = run_cli(*args, "--output", str(tmp_path / "default"))
    other = run_cli(*args, "--output", str(tmp_path / "other"), *runner)
    assert default.code == 0 and other.code == 0, other.err
    expected = _files(default)
    assert set(expected) == {"Patient", "Observation", "Encounter", "OperationOutcome"}
    assert _files(other) == expected
    job = json.loads(run_cli("status", other.manifest_path.parent.name, "--json").out)
    assert job["status"] == "complete" and job["bad_records"] == 1
