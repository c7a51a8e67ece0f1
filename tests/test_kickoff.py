"""Kickoff parsing against the Bulk Data IG v3, and its refusals through the CLI.

Every refusal must name the parameter, and through the CLI it must exit 2 with
one line on stderr before any job or output file exists.
"""

from __future__ import annotations

import json

import pytest

from launcher.kickoff.parser import parse_get, parse_post
from pipelines.models import ExportLevel
from tests.helpers import BASE, EXPORT, assert_refused_before_any_job, job_rows, refusal


def params(*entries: tuple[str, str, object]) -> dict:
    """A Parameters resource from (name, value[x] key, value) triples."""
    return {"resourceType": "Parameters", "parameter": [{"name": n, k: v} for n, k, v in entries]}


# ---- GET form -------------------------------------------------------------------------------


def test_get_system_level_keeps_the_request_as_given():
    url = f"{EXPORT}?_type=Patient,Observation&_since=2020-01-01T00:00:00Z"
    request = parse_get(url)
    assert request.level is ExportLevel.SYSTEM and request.group_id is None
    assert request.types == ("Patient", "Observation")
    assert request.since == "2020-01-01T00:00:00Z" and request.until is None
    assert request.output_format == "application/fhir+ndjson"
    assert request.request_url == url
    assert request.ignored == ()


@pytest.mark.parametrize(
    "query, types",
    [
        ("_type=Patient&_type=Observation", ("Patient", "Observation")),
        ("_type=Patient,Observation", ("Patient", "Observation")),
        ("_type=Observation,Patient&_type=Observation", ("Observation", "Patient")),
        ("_type=Patient&_type=Patient,Condition&_type=Patient", ("Patient", "Condition")),
    ],
)
def test_repeated_parameters_combine_comma_joined_without_duplicates(query, types):
    assert parse_get(f"{EXPORT}?{query}").types == types


def test_percent_encoded_export_is_recognised():
    request = parse_get(f"{BASE}/%24export?_type=Patient")
    assert request.level is ExportLevel.SYSTEM and request.types == ("Patient",)


@pytest.mark.parametrize(
    "path, level, group_id",
    [("Patient/$export", ExportLevel.PATIENT, None), ("Group/abc/$export", ExportLevel.GROUP, "abc")],
)
def test_patient_and_group_levels(path, level, group_id):
    for request in (parse_get(f"{BASE}/{path}?_type=Observation"), parse_post(params(), f"{BASE}/{path}")):
        assert (request.level, request.group_id) == (level, group_id)


def test_patient_parameter_is_a_repeatable_post_reference():
    body = params(
        ("patient", "valueReference", {"reference": "Patient/a"}),
        ("patient", "valueReference", {"reference": "https://ehr.example.org/fhir/Patient/b/_history/2"}),
        ("patient", "valueReference", {"reference": "Patient/a"}),
    )
    assert parse_post(body, f"{BASE}/Patient/$export").patients == ("a", "b")
    assert parse_post(body, f"{BASE}/Group/g/$export").patients == ("a", "b")


@pytest.mark.parametrize("reference", ["Practitioner/1", "urn:uuid:abc", "Patient/a b", "abc"])
def test_patient_parameter_must_reference_a_patient(reference):
    body = params(("patient", "valueReference", {"reference": reference}))
    refused = refusal(parse_post, body, f"{BASE}/Patient/$export")
    assert refused.parameter == "patient" and "not a Patient reference" in refused.reason


@pytest.mark.parametrize(
    "path, says",
    [
        ("Group/$export", "needs a Group id"),  # would otherwise export every patient
        ("Patient/123/$export", "not a Bulk Data $export endpoint"),
        ("Observation/$export", "not a Bulk Data $export endpoint"),
        ("Group/a%20b/$export", "not a valid Group id"),
        ("export", "must end with $export"),
        ("$export/", "must end with $export"),
    ],
)
def test_paths_that_are_not_export_endpoints_are_refused(path, says):
    refused = refusal(parse_get, f"{BASE}/{path}?_type=Patient")
    assert refused.parameter == "kickoff" and says in refused.reason


@pytest.mark.parametrize(
    "encoded, decoded",
    [
        ("application%2Ffhir%2Bndjson", "application/fhir+ndjson"),
        ("application/fhir%2Bndjson", "application/fhir+ndjson"),
        ("application/ndjson", "application/ndjson"),
        ("ndjson", "ndjson"),
        ("application%2Fvnd.apache.parquet", "application/vnd.apache.parquet"),
        ("parquet", "parquet"),
    ],
)
def test_output_format_accepts_the_ndjson_and_parquet_names(encoded, decoded):
    assert parse_get(f"{EXPORT}?_outputFormat={encoded}").output_format == decoded


# A raw "+" in a query is a space, so unencoded "fhir+ndjson" is not an NDJSON name.
@pytest.mark.parametrize("value", ["text/csv", "application/fhir+ndjson", ""])
def test_output_format_refuses_anything_else(value):
    refused = refusal(parse_get, f"{EXPORT}?_outputFormat={value}")
    assert refused.parameter == "_outputFormat" and "not one of" in refused.reason


@pytest.mark.parametrize("name", ["_since", "_until"])
@pytest.mark.parametrize("value", ["2020-01-01", "2020-01-01T00:00:00", "2020-02-30T00:00:00Z", "garbage"])
def test_since_and_until_must_be_fhir_instants(name, value):
    refused = refusal(parse_get, f"{EXPORT}?{name}={value}")
    assert refused.parameter == name and repr(value) in refused.reason


def test_instants_with_offsets_are_kept_as_given():
    request = parse_get(f"{EXPORT}?_since=2020-01-01T00:30:00.120%2B05:30&_until=2020-01-01T00:00:00Z")
    assert request.since == "2020-01-01T00:30:00.120+05:30"  # 2019-12-31T19:00:00.12Z
    assert request.until == "2020-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "since, until",
    [
        ("2020-01-01T00:00:00Z", "2020-01-01T00:00:00Z"),  # equal
        ("2020-06-01T00:00:00Z", "2020-01-01T00:00:00Z"),  # later
        ("2020-01-01T01:00:00%2B01:00", "2020-01-01T00:00:00Z"),  # the same instant
        ("2020-01-01T00:00:00.000Z", "2020-01-01T00:00:00Z"),  # the same instant
    ],
)
def test_since_must_be_earlier_than_until(since, until):
    refused = refusal(parse_get, f"{EXPORT}?_since={since}&_until={until}")
    assert refused.parameter == "_since" and "not earlier than _until" in refused.reason


def test_since_given_twice_is_refused():
    refused = refusal(parse_get, f"{EXPORT}?_since=2020-01-01T00:00:00Z&_since=2021-01-01T00:00:00Z")
    assert refused.parameter == "_since" and "more than once" in refused.reason


@pytest.mark.parametrize("value, culprit", [("Patient,Foo", "'Foo'"), ("patient", "'patient'"), ("", "''")])
def test_type_names_must_be_r4_resource_types(value, culprit):
    refused = refusal(parse_get, f"{EXPORT}?_type={value}")
    assert refused.parameter == "_type" and culprit in refused.reason and "R4 resource type" in refused.reason


def test_patient_in_the_url_points_to_the_post_form():
    refused = refusal(parse_get, f"{EXPORT}?patient=Patient/1")
    assert refused.parameter == "patient" and "--parameters" in refused.reason


NARROWING = ["_typeFilter=Observation%3Fsubject.name%3Dx", "_elements=name.family", "organizeOutputBy=Encounter"]
# Lenient handling drops what it cannot apply of these (issue 27; this test once refused them under
# lenient handling too): a `_typeFilter` query, with the other queries of its type; `_elements` whole.
DROPPED = ["_typeFilter=Observation%3Fsubject.name%3Dpeter", "_elements=name.family"]
# What cannot be read at all, and organizeOutputBy (which reshapes the output), are refused even then.
UNREADABLE = ["_typeFilter=Observation", "_typeFilter=Observation%3Fcode%3D50%25", "_elements=name,,gender",
              "organizeOutputBy=Encounter"]


@pytest.mark.parametrize("query", NARROWING)
def test_narrowing_it_cannot_apply_is_refused_when_strict(query):
    refused = refusal(parse_get, f"{EXPORT}?_type=Patient,Observation&{query}", strict=True)
    assert refused.parameter == query.split("=")[0]


@pytest.mark.parametrize("query", UNREADABLE)
def test_a_value_that_cannot_be_read_is_refused_even_when_lenient(query):
    refused = refusal(parse_get, f"{EXPORT}?_type=Patient,Observation&{query}", strict=False)
    assert refused.parameter == query.split("=")[0]


@pytest.mark.parametrize("query", DROPPED)
def test_narrowing_it_cannot_apply_is_dropped_and_named_when_lenient(query):
    request = parse_get(f"{EXPORT}?_type=Patient,Observation&{query}", strict=False)
    assert request.type_filters == () and request.elements == ()
    [ignored] = request.ignored_parameters
    assert ignored.parameter == query.split("=")[0] and ignored.value is None
    assert "peter" not in str(ignored.outcome())


def test_lenient_handling_drops_every_query_of_a_type_one_of_whose_queries_it_cannot_run():
    url = (f"{EXPORT}?_type=Patient,Observation&_typeFilter=Patient%3Fgender%3Dmale"
           "&_typeFilter=Patient%3Fstatus%3Dactive&_typeFilter=Observation%3Fcode%3D1234-5")
    request = parse_get(url, strict=False)
    assert [(f.resource_type, f.query) for f in request.type_filters] == [("Observation", "code=1234-5")]
    reasons = [i.reason for i in request.ignored_parameters]
    assert [i.parameter for i in request.ignored_parameters] == ["_typeFilter", "_typeFilter"]
    assert "'status'" in reasons[0] and "ORed" in reasons[1]
    assert not any("male" in r or "active" in r for r in reasons)  # no value of the query is copied


IGNORABLE = ["foo=bar", "includeAssociatedData=_custom"]


@pytest.mark.parametrize("query", IGNORABLE)
def test_unsupported_parameters_are_ignored_and_named_when_lenient(query):
    request = parse_get(f"{EXPORT}?_type=Patient&{query}", strict=False)
    assert request.types == ("Patient",)
    assert len(request.ignored) == 1 and request.ignored[0].startswith(f"{query} (")


@pytest.mark.parametrize("query", IGNORABLE)
def test_unsupported_parameters_are_refused_when_strict(query):
    refused = refusal(parse_get, f"{EXPORT}?_type=Patient&{query}", strict=True)
    assert refused.parameter == query.split("=")[0] and "strict" in refused.reason


# ---- POST form ------------------------------------------------------------------------------


def test_post_parameters_combine_and_the_request_url_has_no_query():
    body = params(
        ("_type", "valueString", "Patient"),
        ("_type", "valueString", "Observation,Patient"),
        ("_since", "valueInstant", "2020-01-01T00:00:00Z"),
        ("includeAssociatedData", "valueCode", "_custom"),
    )
    request = parse_post(body, EXPORT, strict=False)
    assert request.level is ExportLevel.SYSTEM
    assert request.types == ("Patient", "Observation") and request.since == "2020-01-01T00:00:00Z"
    assert request.request_url == EXPORT
    assert [i.split("=")[0] for i in request.ignored] == ["includeAssociatedData"]


@pytest.mark.parametrize(
    "body, url, parameter, says",
    [
        (params(("_type", "valueString", "Patient")), f"{EXPORT}?_type=Patient", "kickoff", "from the body"),
        ({"resourceType": "Bundle"}, EXPORT, "parameters", "Parameters resource"),
        ([{"name": "_type"}], EXPORT, "parameters", "Parameters resource"),
        ({"resourceType": "Parameters", "parameter": [{"valueString": "x"}]}, EXPORT, "parameters", "name"),
        (
            {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Patient", "valueCode": "x"}]},
            EXPORT, "_type", "exactly one value[x]",
        ),
        (params(("patient", "valueString", "Patient/1")), EXPORT, "patient", "valueReference"),
        (params(("patient", "valueReference", {"reference": "Patient/1"})), EXPORT, "patient", "Patient- and Group-level"),
        (params(("_since", "valueInstant", "2020-01-01")), EXPORT, "_since", "not a FHIR instant"),
        (params(("_elements", "valueString", "Patient.name.family")), EXPORT, "_elements", "root elements"),
    ],
)
def test_post_refusals(body, url, parameter, says):
    refused = refusal(parse_post, body, url)
    assert refused.parameter == parameter and says in refused.reason


# ---- through the CLI: refused before any job or file exists ---------------------------------


CLI_KICKOFF_REFUSALS = [
    # (extra CLI args, kickoff URL, text the one stderr line must contain)
    ([], f"{BASE}/Group/abc/$export", ["group", "Group/abc is not in the source"]),
    ([], f"{BASE}/Group/$export", ["kickoff", "Group id"]),
    ([], f"{EXPORT}?_outputFormat=text/csv", ["_outputFormat"]),
    ([], f"{EXPORT}?_since=2020-01-01", ["_since"]),
    ([], f"{EXPORT}?_until=2020-01-01T00:00:00", ["_until"]),
    ([], f"{EXPORT}?_since=2020-02-30T00:00:00Z", ["_since"]),
    ([], f"{EXPORT}?_since=2020-01-01T01:00:00%2B01:00&_until=2020-01-01T00:00:00Z", ["_since", "_until"]),
    ([], f"{EXPORT}?_type=Patient,Foo", ["_type", "Foo"]),
    ([], f"{EXPORT}?_type=patient", ["_type", "patient"]),
    ([], f"{EXPORT}?patient=Patient/1", ["patient", "--parameters"]),
    *[([], f"{EXPORT}?{q}", [q.split("=")[0]]) for q in NARROWING],
    *[(["--strict"], f"{EXPORT}?{q}", [q.split("=")[0], "strict"]) for q in IGNORABLE],
]


@pytest.mark.parametrize("extra, url, expected", CLI_KICKOFF_REFUSALS)
def test_cli_kickoff_refusals(run_cli, sample_dir, tmp_path, extra, url, expected):
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"), *extra, "--kickoff", url)
    assert_refused_before_any_job(run_cli, tmp_path, result, *expected)


CLI_PARAMETERS_REFUSALS = [
    # (body written to the --parameters file, extra CLI args, expected text)
    ('{"resourceType": "Bundle"}', [], ["parameters", "Parameters resource"]),
    ('{"resourceType": "Parameters", "parameter": [', [], ["parameters", "cannot read"]),
    (json.dumps(params(("patient", "valueString", "Patient/1"))), [], ["patient", "valueReference"]),
    (json.dumps(params(("patient", "valueReference", {"reference": "Patient/1"}))), [], ["patient", "Group-level"]),
    (
        json.dumps(params(("patient", "valueReference", {"reference": "Patient/nobody"}))),
        ["--kickoff", f"{BASE}/Patient/$export"],
        ["patient", "Patient/nobody is not in the source", "not-found"],
    ),
    (json.dumps(params(("_type", "valueString", "Foo"))), [], ["_type", "Foo"]),
    (json.dumps(params(("_type", "valueString", "Patient"))), ["--kickoff", f"{EXPORT}?_type=Patient"], ["kickoff"]),
    (json.dumps(params(("foo", "valueString", "bar"))), ["--strict"], ["foo", "strict"]),
]


@pytest.mark.parametrize("body, extra, expected", CLI_PARAMETERS_REFUSALS)
def test_cli_parameters_file_refusals(run_cli, sample_dir, tmp_path, body, extra, expected):
    path = tmp_path / "parameters.json"
    path.write_text(body)
    result = run_cli(
        "export", "--source", str(sample_dir), "--output", str(tmp_path / "out"), "--parameters", str(path), *extra
    )
    assert_refused_before_any_job(run_cli, tmp_path, result, *expected)


def test_cli_refuses_the_multi_threading_runner_mode(run_cli, sample_dir, tmp_path):
    result = run_cli(
        "export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
        "--kickoff", f"{EXPORT}?_type=Patient", "--direct_running_mode=multi_threading",
    )
    assert_refused_before_any_job(run_cli, tmp_path, result, "direct_running_mode", "drop records")


def test_cli_refuses_an_unsafe_tenant(run_cli, sample_dir, tmp_path):
    result = run_cli(
        "export", "--source", str(sample_dir), "--output", str(tmp_path / "out"), "--tenant", "../x",
        "--kickoff", f"{EXPORT}?_type=Patient",
    )
    assert_refused_before_any_job(run_cli, tmp_path, result, "--tenant", "'../x'")


def test_cli_lenient_kickoff_runs_and_the_manifest_names_what_was_ignored(run_cli, sample_dir, tmp_path):
    url = f"{EXPORT}?_type=Patient&foo=bar&includeAssociatedData=_custom"
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"), "--lenient",
                     "--kickoff", url)
    assert result.code == 0, result.err
    manifest = result.manifest()
    assert manifest["request"] == url
    assert "foo=bar" in manifest["message"]
    assert "includeAssociatedData=_custom" in manifest["message"]
    assert {entry["type"] for entry in manifest["output"]} == {"Patient"}
    assert sum(entry["count"] for entry in manifest["output"]) == 30
    listing = run_cli("list", "--all")
    assert listing.code == 0 and [row[1] for row in job_rows(listing.out)] == ["complete"]
