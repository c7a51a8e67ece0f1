"""Issue 14: error files name the element, the rule and the place, never a source value nor a
server path; resources updated after transactionTime, or without an id, are reported, not lost.

Real files and real exports on the embedded runner (the CLI in-process, or `ReadResources`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import quote

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.util import assert_that, equal_to

from tests.columnar_data import write_records
from transforms.fhir.instant import InvalidInstant, instant_key
from transforms.read.columnar import to_resources
from transforms.read.pushdown import ReadSelection
from transforms.read.resources import ReadResources
from transforms.records import RECORDS, BadRecord, Origin, Resource, ResourceBatch
from transforms.steps.resource_step import ResourceStep
from transforms.write.error_files import locate, operation_outcome

KICKOFF = "https://ehr.example.org/fhir/$export"
SECRET = "SSN 123-45-6789 John Smith"
LEAKS = ("123-45-6789", "John Smith")
FUTURE = "2099-01-01T00:00:00Z"  # after any transactionTime of these tests
PAST = "2020-01-01T00:00:00Z"


def _line(body: dict) -> str:
    return json.dumps(body)


def _res(rtype: str, rid: str | None, last_updated: object = PAST, **extra) -> dict:
    body = {"resourceType": rtype, **({"id": rid} if rid is not None else {}), **extra}
    if last_updated is not None:
        body["meta"] = {"lastUpdated": last_updated}
    return body


def _export(run_cli, source: Path, out: Path, kickoff: str = KICKOFF, *extra: str) -> dict:
    result = run_cli("export", "--source", str(source), "--output", str(out), "--kickoff", kickoff, *extra)
    assert result.code == 0, result.err + result.out
    return result.manifest()


def _issues(manifest: dict) -> list[dict]:
    issues = []
    for entry in manifest["error"]:
        path = Path(entry["url"].removeprefix("file://"))
        issues += [orjson.loads(line)["issue"][0] for line in path.read_bytes().splitlines()]
    return issues


def _ids(manifest: dict) -> set[str]:
    found = set()
    for entry in manifest["output"]:
        for line in Path(entry["url"].removeprefix("file://")).read_bytes().splitlines():
            found.add(orjson.loads(line)["id"])
    return found


def _diagnostics(manifest: dict) -> list[str]:
    return sorted(issue["diagnostics"] for issue in _issues(manifest))


# --- no source values, no server paths -------------------------------------------------------

def test_error_files_name_rule_and_relative_place_never_the_value(run_cli, tmp_path):
    source = tmp_path / "srv" / "lake"
    (source / "2024").mkdir(parents=True)
    (source / "data.ndjson").write_text("\n".join([
        _line(_res("Patient", "p1")),
        _line(_res("Observation", "o1", SECRET)),                       # a bad meta.lastUpdated
        _line({"resourceType": SECRET, "id": "x"}),                     # an unknown resourceType
        '{"resourceType": "Patient", "id": "p2", "name": "' + SECRET,   # not JSON
        _line(_res("Observation", "o2", {"when": SECRET})),             # an object, not an instant
        _line({"resourceType": "Encounter", "id": "e1", "meta": SECRET}),  # meta not an object
    ]) + "\n")
    (source / "2024" / "b.json").write_text(json.dumps({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"request": {"method": SECRET}}, {"resource": _res("Patient", "p3")}],
    }))
    manifest = _export(run_cli, source, tmp_path / "out")
    assert _ids(manifest) == {"p1", "p3"}
    text = json.dumps(_issues(manifest))
    assert not any(leak in text for leak in LEAKS), text
    assert str(tmp_path) not in text and "/srv/" not in text
    instant = "not a FHIR instant (YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm))"
    assert _diagnostics(manifest) == sorted([
        "2024/b.json Bundle.entry[0]: Bundle entry has no resource; not exported",
        f"data.ndjson line 2 (Observation/o1): meta.lastUpdated: {instant}; not exported",
        "data.ndjson line 3: resourceType is not an R4 resource type; not exported",
        "data.ndjson line 4: not valid JSON (unexpected end of data at column 76); not exported",
        f"data.ndjson line 5 (Observation/o2): meta.lastUpdated: an object, {instant}; not exported",
        "data.ndjson line 6 (Encounter/e1): meta.lastUpdated: meta is not a JSON object; not exported",
    ])


def test_a_type_filter_names_the_parameter_not_the_value(run_cli, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "obs.ndjson").write_text("\n".join([
        _line(_res("Observation", "good", effectiveDateTime="2021-02-03")),
        _line(_res("Observation", "bad", effectiveDateTime=SECRET)),
    ]) + "\n")
    kickoff = f"{KICKOFF}?_type=Observation&_typeFilter=" + quote("Observation?date=ge2020", safe="")
    manifest = _export(run_cli, tmp_path / "in", tmp_path / "out", kickoff)
    assert _ids(manifest) == {"good"}
    assert _diagnostics(manifest) == [
        "obs.ndjson line 2 (Observation/bad): _typeFilter: Observation?date: a date value is not a FHIR date or "
        "dateTime; not exported"
    ]


def test_a_single_file_source_is_named_by_its_file_name(run_cli, tmp_path):
    (tmp_path / "in").mkdir()
    path = tmp_path / "in" / "one.ndjson"
    path.write_text(_line(_res("Patient", "p1")) + "\n{oops\n")
    manifest = _export(run_cli, path, tmp_path / "out")
    assert _diagnostics(manifest) == [
        "one.ndjson line 2: not valid JSON (unexpected character, expected a string key at column 2); not exported"
    ]


def test_an_invalid_id_is_not_quoted_into_the_location():
    origin = Origin("/srv/x.ndjson", 0)
    good = BadRecord(origin, 0, "r", "Patient", resource_id="p-1.a")
    bad = BadRecord(origin, 1, "r", "Patient", resource_id=SECRET)
    assert [where for _, where in locate([good, bad], "/srv/", [])] == ["x.ndjson line 1 (Patient/p-1.a)",
                                                                        "x.ndjson line 2"]


def test_invalid_instant_keeps_the_value_for_kickoffs_and_a_value_free_rule():
    with pytest.raises(InvalidInstant) as info:
        instant_key(SECRET)
    assert SECRET in str(info.value)  # a kick-off refusal quotes the client's own input
    assert SECRET not in info.value.rule and info.value.rule.startswith("not a FHIR instant")
    with pytest.raises(InvalidInstant) as info:
        instant_key("2021-02-30T00:00:00Z")
    assert info.value.rule == "not a calendar date"


def test_columnar_disagreements_quote_neither_column():
    body = orjson.dumps(_res("Patient", "p1"))
    columns = ([SECRET], ["p1"], [None], [None], [body])
    (record,) = to_resources(Origin("/srv/r.parquet", RECORDS), 0, columns)
    assert record.reason == "resourceType column disagrees with the resource's resourceType"
    columns = (["Patient"], ["p1"], [None], [None], [b'{"resourceType": "Patient", "id": "' + SECRET.encode()])
    (record,) = to_resources(Origin("/srv/r.parquet", RECORDS), 0, columns)
    assert not any(leak in record.reason for leak in LEAKS), record.reason


class _Explodes(beam.DoFn):
    def process(self, batch):
        raise ValueError(f"cannot handle {batch.resources[0].body['name']}")


def test_a_failing_step_logs_and_reports_only_the_exception_type(pipeline, caplog):
    resource = Resource("Patient", b"{}", _res("Patient", "p1", name=SECRET), 0)
    batch = ResourceBatch(Origin("/srv/x.ndjson", 0), [resource])
    out = pipeline | beam.Create([batch]) | ResourceStep("test step", _Explodes())
    assert_that(out.errors | beam.Map(lambda r: (r.reason, r.resource_id)),
                equal_to([("not exported: test step failed unexpectedly (ValueError)", "p1")]))
    with caplog.at_level(logging.ERROR):
        pipeline.run().wait_until_finish()
    assert "step failed" in caplog.text
    assert not any(leak in caplog.text for leak in LEAKS), caplog.text


# --- resources updated after transactionTime --------------------------------------------------

def _late_source(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "Patient.ndjson").write_text("\n".join([
        _line(_res("Patient", "a")), _line(_res("Patient", "b")), _line(_res("Patient", "late-p", FUTURE)),
    ]) + "\n")
    ref = {"subject": {"reference": "Patient/a"}}
    (folder / "Observation.ndjson").write_text("\n".join([
        _line(_res("Observation", "o1", **ref)),
        _line(_res("Observation", "late-o", FUTURE, **ref)),
        _line(_res("Observation", "other-late", FUTURE, subject={"reference": "Patient/zz"})),
    ]) + "\n")
    return folder


LATE = "meta.lastUpdated: updated after transactionTime; not exported"


def test_a_resource_updated_after_transaction_time_is_reported_at_system_level(run_cli, tmp_path):
    manifest = _export(run_cli, _late_source(tmp_path / "in"), tmp_path / "out")
    assert _ids(manifest) == {"a", "b", "o1"}
    issues = sorted(_issues(manifest), key=lambda i: i["diagnostics"])
    assert [(i["severity"], i["code"], i["diagnostics"]) for i in issues] == [
        ("information", "informational", f"Observation.ndjson line 2 (Observation/late-o): {LATE}"),
        ("information", "informational", f"Observation.ndjson line 3 (Observation/other-late): {LATE}"),
        ("information", "informational", f"Patient.ndjson line 3 (Patient/late-p): {LATE}"),
    ]


@pytest.mark.parametrize("join", [False, True], ids=["side-input", "keyed-join"])
def test_a_member_resource_updated_after_transaction_time_is_reported_at_patient_level(run_cli, tmp_path, join):
    extra = ("--max-side-input-patients", "1") if join else ()
    kickoff = KICKOFF.replace("$export", "Patient/$export") + "?_type=Patient,Observation"
    manifest = _export(run_cli, _late_source(tmp_path / "in"), tmp_path / "out", kickoff, *extra)
    assert _ids(manifest) == {"a", "b", "o1"}
    # `other-late` is in no covered patient's compartment: not reported.
    issues = sorted(_issues(manifest), key=lambda i: i["diagnostics"])
    assert [(i["severity"], i["code"], i["diagnostics"]) for i in issues] == [
        ("information", "informational", f"Observation.ndjson line 2 (Observation/late-o): {LATE}"),
        ("information", "informational", f"Patient.ndjson line 3 (Patient/late-p): {LATE}"),
    ]


# --- resources without an id --------------------------------------------------------------------

def test_a_resource_without_an_id_is_a_bad_record_in_every_format(pipeline, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.ndjson").write_text("\n".join([
        _line(_res("Patient", "p1")), _line(_res("Patient", None)), _line(_res("Patient", 7)),
        _line(_res("Patient", "")), _line(_res("Observation", None)),
    ]) + "\n")
    (tmp_path / "in" / "b.json").write_text(json.dumps({
        "resourceType": "Bundle", "type": "collection",
        "entry": [{"resource": _res("Encounter", "e1")}, {"resource": _res("Encounter", None)}],
    }))
    rows = [Resource("Patient", orjson.dumps(body), body, n) for n, body in enumerate(
        [_res("Patient", None), _res("Patient", "p9")])]
    write_records(str(tmp_path / "in" / "c.parquet"), "parquet", rows)
    out = pipeline | ReadResources(str(tmp_path / "in"), selection=ReadSelection.of(["Patient", "Encounter"]))
    ids = out.batches | beam.FlatMap(lambda b: [r.body["id"] for r in b.resources])
    where = out.errors | beam.combiners.ToList() | beam.FlatMap(
        lambda rs, lines: [(w, r.reason) for r, w in locate(rs, f"{tmp_path}/in/", lines)],
        beam.pvalue.AsList(out.lines))
    assert_that(ids, equal_to(["p1", "e1", "p9"]))
    assert_that(where, equal_to([
        ("a.ndjson line 2", "has no id"), ("a.ndjson line 3", "has no id"), ("a.ndjson line 4", "has no id"),
        ("b.json Bundle.entry[1]", "has no id"), ("c.parquet record 0", "has no id"),
    ]), label="Errors")
    pipeline.run()


def test_operation_outcome_carries_the_records_severity():
    record = BadRecord(Origin("x", 0), 0, "meta.lastUpdated: updated after transactionTime", "Patient",
                       code="informational", severity="information")
    issue = operation_outcome(record, "x line 1")["issue"][0]
    assert (issue["severity"], issue["code"]) == ("information", "informational")



def test_a_warning_about_an_exported_resource_does_not_say_not_exported():
    record = BadRecord(Origin("x", 0), 0, "duplicate: ...", "Patient", code="duplicate", severity="warning")
    assert operation_outcome(record, "x line 1")["issue"][0]["diagnostics"] == "x line 1: duplicate: ..."


def test_classify_tells_late_resources_apart_in_every_spelling():
    from transforms.fhir.window import LATE, LastUpdatedWindow
    window = LastUpdatedWindow("2024-01-01T00:00:00Z", since="2020-01-01T00:00:00Z")
    def verdict(text):
        return window.classify({"meta": {"lastUpdated": text}})
    assert verdict("2024-01-01T00:00:00.001Z") is LATE            # the fast, UTC path
    assert verdict("2024-01-01T00:30:00+00:30") is True           # = tx exactly: exported
    assert verdict("2023-12-31T19:00:01-05:00") is LATE           # the slow, offset path
    assert verdict("2019-06-01T00:00:00Z") is False               # before _since: left out silently
    assert verdict("2022-06-01T00:00:00Z") is True
    assert window.classify({}) is True


def test_a_failed_jobs_http_status_names_the_source_file_relative_to_the_source(tmp_path):
    """A truncated gzip source fails the export; the status a client polls names the file relative to
    the source, never the server's folder (the store keeps the whole path, for the operator)."""
    import gzip

    import httpx

    from tests.server_process import FHIR_HEADERS, poll, serve

    source = tmp_path / "srv-secret-folder" / "data"
    source.mkdir(parents=True)
    whole = gzip.compress(b"".join(_line(_res("Patient", f"p{n}")).encode() + b"\n" for n in range(200)))
    (source / "trunc.ndjson.gz").write_bytes(whole[: len(whole) // 2])
    with serve(source, tmp_path / "out", tmp_path / "state") as server, httpx.Client(timeout=30) as client:
        kicked = client.get(server.fhir + "/$export", headers=FHIR_HEADERS)
        assert kicked.status_code == 202, kicked.text
        failed = poll(client, kicked.headers["Content-Location"])
    assert failed.status_code == 500, failed.text
    diagnostics = failed.json()["issue"][0]["diagnostics"]
    assert "'trunc.ndjson.gz'" in diagnostics and "srv-secret-folder" not in diagnostics, diagnostics
