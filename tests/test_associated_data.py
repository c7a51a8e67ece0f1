"""`includeAssociatedData`: the Provenance of exported resources, all of it or the latest per target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.kickoff import parser as kickoff
from launcher.kickoff.parser import KickoffRefused

BASE = "https://x/fhir"


def _provenance(pid: str, recorded: str, *targets: str) -> dict:
    return {"resourceType": "Provenance", "id": pid, "recorded": recorded,
            "target": [{"reference": t} for t in targets], "agent": [{"who": {"display": "x"}}]}


@pytest.fixture
def source(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rows = [
        {"resourceType": "Patient", "id": "p1"},
        {"resourceType": "Patient", "id": "p2"},
        {"resourceType": "Observation", "id": "o1", "status": "final", "code": {}, "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Observation", "id": "o2", "status": "final", "code": {}, "subject": {"reference": "Patient/p2"}},
        _provenance("a", "2020-01-01T00:00:00Z", "Observation/o1"),
        _provenance("b", "2021-01-01T00:00:00Z", "Observation/o1"),
        _provenance("c", "2021-06-01T00:00:00Z", "Observation/o2"),
        _provenance("d", "2019-01-01T00:00:00Z", "Patient/p1", "Observation/o1"),
        _provenance("e", "2022-01-01T00:00:00Z", "Organization/nobody"),
    ]
    (folder / "data.ndjson").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _exported(result) -> dict[str, list[str]]:
    assert result.code == 0, result.err
    out: dict[str, list[str]] = {}
    for entry in result.manifest()["output"]:
        path = Path(entry["url"].removeprefix("file://"))
        out.setdefault(entry["type"], []).extend(json.loads(line)["id"] for line in path.read_text().splitlines())
    return {t: sorted(ids) for t, ids in out.items()}


@pytest.mark.parametrize("value, provenance", [
    ("RelevantProvenanceResources", ["a", "b", "c", "d"]),
    ("LatestProvenanceResources", ["b", "c"]),
    ("LatestProvenanceResources,RelevantProvenanceResources", ["a", "b", "c", "d"]),
])
def test_provenance_of_exported_resources_is_added(run_cli, source, tmp_path, value, provenance):
    url = f"{BASE}/$export?_type=Observation&includeAssociatedData={value}"
    got = _exported(run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"), "--kickoff", url))
    assert got == {"Observation": ["o1", "o2"], "Provenance": provenance}


def test_at_patient_level_only_the_covered_patients_resources_bring_provenance(run_cli, source, tmp_path):
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "patient", "valueReference": {"reference": "Patient/p2"}},
        {"name": "includeAssociatedData", "valueString": "RelevantProvenanceResources"},
    ]}
    (tmp_path / "kickoff.json").write_text(json.dumps(parameters))
    got = _exported(run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                            "--kickoff", f"{BASE}/Patient/$export", "--parameters", str(tmp_path / "kickoff.json")))
    assert got == {"Observation": ["o2"], "Provenance": ["c"]}


def test_a_provenance_the_export_holds_already_is_written_once(run_cli, source, tmp_path):
    url = f"{BASE}/$export?includeAssociatedData=RelevantProvenanceResources"
    got = _exported(run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"), "--kickoff", url))
    assert got["Provenance"] == ["a", "b", "c", "d", "e"]


def test_other_values_are_refused_or_under_lenient_handling_ignored():
    url = f"{BASE}/$export?includeAssociatedData=_relevant"
    with pytest.raises(KickoffRefused) as refused:
        kickoff.parse_get(url)
    assert refused.value.parameter == "includeAssociatedData"
    request = kickoff.parse_get(url + ",LatestProvenanceResources", strict=False)
    assert request.include_associated_data == ("LatestProvenanceResources",)
    assert any(i.startswith("includeAssociatedData=_relevant") for i in request.ignored)
