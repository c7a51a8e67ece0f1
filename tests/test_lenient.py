"""Lenient handling over real HTTP (`Prefer: handling=lenient`) and on the command line (`--lenient`):
what cannot be applied is ignored, never narrowing the export, and each is one OperationOutcome in
the manifest's `error[]`; strict handling (the default) refuses the same request."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server_process import FHIR_HEADERS, poll, serve

LENIENT = {**FHIR_HEADERS, "Prefer": "respond-async, handling=lenient"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("lenient")
    with serve(sample_dir, root / "out", root / "state") as running:
        yield running


def _source_count(sample_dir, resource_type: str) -> int:
    return sum(1 for line in (sample_dir / f"{resource_type}.ndjson").read_text().splitlines() if line.strip())


def _lines(client: httpx.Client, entries: list[dict]) -> list[dict]:
    return [json.loads(line) for entry in entries for line in client.get(entry["url"]).text.splitlines()]


def test_a_typefilter_the_engine_cannot_run_is_dropped_and_reported_when_lenient(server, sample_dir):
    url = server.fhir + "/$export?_type=Patient,Observation&_typeFilter=Patient%3Fstatus%3Dactive" \
                        "&_typeFilter=Patient%3Fgender%3Dfemale&_typeFilter=Observation%3Fcategory%3Dlaboratory"
    with httpx.Client(timeout=30) as client:
        strict = client.get(url, headers=FHIR_HEADERS)
        assert strict.status_code == 400 and "_typeFilter" in strict.json()["issue"][0]["diagnostics"]
        kicked = client.get(url, headers=LENIENT)
        assert kicked.status_code == 202, kicked.text
        manifest = poll(client, kicked.headers["Content-Location"]).json()
        counts = {e["type"]: e["count"] for e in manifest["output"]}
        # Patient is exported unfiltered (gender=female alone would export fewer); Observation stays filtered.
        assert counts["Patient"] == _source_count(sample_dir, "Patient")
        observations = _lines(client, [e for e in manifest["output"] if e["type"] == "Observation"])
        assert observations and len(observations) < _source_count(sample_dir, "Observation")
        assert all(c["coding"][0]["code"] == "laboratory" for o in observations for c in o["category"])
        outcomes = _lines(client, manifest["error"])
        assert [o["resourceType"] for o in outcomes] == ["OperationOutcome", "OperationOutcome"]
        issues = [o["issue"][0] for o in outcomes]
        assert {i["severity"] for i in issues} == {"warning"}
        assert all(i["diagnostics"].startswith("_typeFilter: a query on Patient") for i in issues)
        assert "'status'" in issues[0]["diagnostics"] and "ORed" in issues[1]["diagnostics"]
        assert not any("active" in i["diagnostics"] or "female" in i["diagnostics"] for i in issues)
        assert "_typeFilter" in manifest["message"]


def test_every_ignored_parameter_is_one_outcome_and_none_counts_as_a_bad_record(server):
    url = server.fhir + "/$export?_type=Patient&_nonsense=secret&includeAssociatedData=_custom&_elements=name.family"
    with httpx.Client(timeout=30) as client:
        kicked = client.get(url, headers=LENIENT)
        assert kicked.status_code == 202, kicked.text
        status_url = kicked.headers["Content-Location"]
        manifest = poll(client, status_url).json()
        outcomes = _lines(client, manifest["error"])
        named = sorted(o["issue"][0]["diagnostics"].split(":")[0] for o in outcomes)
        assert named == ["_elements", "_nonsense", "includeAssociatedData"]
        assert not any("secret" in json.dumps(o) or "_custom" in json.dumps(o) for o in outcomes)
        patients = _lines(client, manifest["output"])
        assert patients and all("gender" in p for p in patients)  # _elements ignored whole: nothing cut
        assert [e["url"].rsplit("/", 2)[-2:] for e in manifest["error"]] == [["error", "OperationOutcome-request.ndjson"]]


def test_cli_lenient_export_writes_the_outcomes_and_counts_no_bad_record(run_cli, sample_dir, tmp_path):
    url = "http://x/fhir/$export?_type=Patient&_typeFilter=Patient%3Fstatus%3Dactive"
    refused = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "s"), "--kickoff", url)
    assert refused.code == 2 and "_typeFilter" in refused.err
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"), "--kickoff", url,
                     "--lenient")
    assert result.code == 0, result.err
    assert "bad record" not in result.out
    manifest = result.manifest()
    [entry] = manifest["error"]
    assert entry["type"] == "OperationOutcome" and entry["count"] == 1
    assert manifest["output"][0]["count"] == sum(1 for _ in (sample_dir / "Patient.ndjson").open())
