"""Supporting resources at Patient and Group level: a `_type` naming types outside the Patient compartment
brings the resources of those types that the exported resources reference, and those that reference a
covered patient (a Device by `Device.patient`), never one naming an uncovered patient. Checked against an
oracle computed here from the source files, through the CLI and over real HTTP."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.helpers import BASE, JOIN_PATHS, exported, keys, read_ndjson, referenced_patients, references
from tests.server_process import FHIR_HEADERS, poll, serve

LENIENT = {**FHIR_HEADERS, "Prefer": "respond-async, handling=lenient"}
MIXED = "Patient,Encounter,Practitioner,Organization,Device"
# The sample data's types in the Patient compartment (CompartmentDefinition/patient); Group is left out
# unless `_type` names it.
SAMPLE_COMPARTMENT = {"Patient", "Encounter", "Observation", "Condition", "MedicationRequest"}
# The clients' default `_type` lists at Group level: smart-fetch 1.0.3 (`...,Device,...`) and cumulus-etl
# 3.14 (`...,Device,Location,Medication,Organization,Practitioner,PractitionerRole,...`).
SMART_FETCH = ("Patient,Encounter,AllergyIntolerance,Condition,Device,DiagnosticReport,DocumentReference,"
               "Immunization,MedicationRequest,Observation,Procedure,ServiceRequest")
CUMULUS_ETL = ("AllergyIntolerance,Condition,Device,DiagnosticReport,DocumentReference,Encounter,Immunization,"
               "Location,Medication,MedicationRequest,Observation,Organization,Patient,Practitioner,"
               "PractitionerRole,Procedure,ServiceRequest")
OLD, NEW = "2019-01-01T00:00:00Z", "2024-06-01T00:00:00Z"


def _lines(resources: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in resources)


@pytest.fixture(scope="module")
def source(tmp_path_factory, sample_dir) -> Path:
    """The sample data plus Devices (one per patient, by `patient`; one by `urn:uuid:`; one naming two
    patients; one named only by an Encounter; one naming no one), a Practitioner and an Organization
    that nothing references, and one that only an Observation references."""
    folder = tmp_path_factory.mktemp("supporting")
    for path in sample_dir.iterdir():
        shutil.copy(path, folder / path.name)
    patients = sorted(r["id"] for r in read_ndjson(sample_dir) if r["resourceType"] == "Patient")
    devices = [{"resourceType": "Device", "id": f"dev-{n}", "meta": {"lastUpdated": OLD if n % 2 else NEW},
                "patient": {"reference": f"Patient/{p}"}} for n, p in enumerate(patients)]
    devices += [
        {"resourceType": "Device", "id": "dev-urn", "patient": {"reference": f"urn:uuid:{patients[1]}"}},
        {"resourceType": "Device", "id": "dev-two", "patient": {"reference": f"Patient/{patients[0]}"},
         "extension": [{"url": "urn:example:also", "valueReference": {"reference": f"Patient/{patients[2]}"}}]},
        {"resourceType": "Device", "id": "dev-used", "meta": {"lastUpdated": OLD}},
        {"resourceType": "Device", "id": "dev-none"},
    ]
    (folder / "Device.ndjson").write_text(_lines(devices))
    with open(folder / "Encounter.ndjson", "a") as f:
        f.write(_lines([{"resourceType": "Encounter", "id": "enc-device", "status": "finished",
                         "meta": {"lastUpdated": NEW},
                         "class": {"code": "AMB"}, "subject": {"reference": f"Patient/{patients[1]}"},
                         "extension": [{"url": "urn:example:device",
                                        "valueReference": {"reference": "Device/dev-used"}}]}]))
    with open(folder / "Observation.ndjson", "a") as f:
        f.write(_lines([{"resourceType": "Observation", "id": "obs-prac", "status": "final", "code": {},
                         "subject": {"reference": f"Patient/{patients[1]}"},
                         "performer": [{"reference": "Practitioner/prac-obs-only"}]}]))
    with open(folder / "Practitioner.ndjson", "a") as f:
        f.write(_lines([{"resourceType": "Practitioner", "id": "prac-obs-only"},
                        {"resourceType": "Practitioner", "id": "prac-unused"}]))
    with open(folder / "Organization.ndjson", "a") as f:
        f.write(_lines([{"resourceType": "Organization", "id": "org-unused"}]))
    return folder


# ---- the oracle: plain Python over the source files ------------------------------------------------


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _in_window(resource: dict, since: str | None, until: str | None) -> bool:
    updated = resource.get("meta", {}).get("lastUpdated")
    if updated is None:
        return True  # kept whatever the window says (the default)
    return ((since is None or _instant(updated) > _instant(since))
            and (until is None or _instant(updated) < _instant(until)))


def oracle(source: list[dict], covered: set[str], types: list[str], since: str | None = None,
           until: str | None = None, whole: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """What a Patient- or Group-level export of `types` covering `covered` gives; `whole`: the Group
    members added after `_since`, whose resources come whatever `_since` says."""
    named = [t for t in types if t in SAMPLE_COMPARTMENT]
    read = named or SAMPLE_COMPARTMENT  # only supporting types: the compartment is read for its references

    def mine(r: dict) -> set[str]:
        return (referenced_patients(r) | ({r["id"]} if r["resourceType"] == "Patient" else set())) & covered

    compartment = [r for r in source if r["resourceType"] in read and mine(r)
                   and (_in_window(r, since, until) or (mine(r) & whole and _in_window(r, None, until)))]
    referenced = set().union(*(references(r) for r in compartment))
    chosen = compartment if named else []
    for r in source:
        if r["resourceType"] in types and r["resourceType"] not in SAMPLE_COMPARTMENT | {"Group"}:
            patients = referenced_patients(r)
            if not _in_window(r, None, until) or patients - covered:
                continue  # outside `_until`, or naming a patient the export does not cover
            if (f"{r['resourceType']}/{r['id']}" in referenced or patients & whole
                    or (patients & covered and _in_window(r, since, until))):
                chosen.append(r)
    return keys(chosen)


def group_members(source: list[dict], transaction_time: str) -> set[str]:
    group = next(r for r in source if r["resourceType"] == "Group" and r["id"] == "grp-00001")
    return {m["entity"]["reference"].removeprefix("Patient/") for m in group["member"]
            if not m.get("inactive") and m.get("period", {}).get("end", "9999") >= transaction_time[:10]}


def whole_members(source: list[dict], covered: set[str], since: str) -> frozenset[str]:
    """The covered members whose membership started after `since` (the sample's periods are dates)."""
    group = next(r for r in source if r["resourceType"] == "Group" and r["id"] == "grp-00001")
    return frozenset(m["entity"]["reference"].removeprefix("Patient/") for m in group["member"]
                     if m.get("period", {}).get("start", "0000") > since[:10]) & covered


def all_patients(source: list[dict]) -> set[str]:
    return {r["id"] for r in source if r["resourceType"] == "Patient"}


def _export(run_cli, source: Path, out: Path, url: str, *extra: str) -> dict:
    result = run_cli("export", "--source", str(source), "--output", str(out), "--kickoff", url, *extra)
    assert result.code == 0, result.err
    return result.manifest()


# ---- through the CLI ---------------------------------------------------------------------------


@JOIN_PATHS
@pytest.mark.parametrize("level", ["Patient", "Group/grp-00001"])
def test_mixed_type_gives_referenced_and_patient_referencing_supporting_resources(
        run_cli, source, tmp_path, membership_args, level):
    manifest = _export(run_cli, source, tmp_path / "out", f"{BASE}/{level}/$export?_type={MIXED}", *membership_args)
    data = read_ndjson(source)
    covered = all_patients(data) if level == "Patient" else group_members(data, manifest["transactionTime"])
    got = exported(manifest)
    assert keys(got) == oracle(data, covered, MIXED.split(","))
    ids = {(r["resourceType"], r["id"]) for r in got}
    assert ("Device", "dev-used") in ids and ("Device", "dev-urn") in ids  # referenced; by urn:uuid
    assert {("Practitioner", "prac-obs-only"), ("Practitioner", "prac-unused"), ("Organization", "org-unused"),
            ("Device", "dev-none")}.isdisjoint(ids)
    devices = {r["id"] for r in got if r["resourceType"] == "Device"}
    if level == "Patient":
        assert "dev-two" in devices  # both its patients are covered
    else:
        assert "dev-two" not in devices  # it also names an uncovered patient: withheld by the guard
        uncovered = all_patients(data) - covered
        assert uncovered and not any(referenced_patients(r) & uncovered for r in got if r["resourceType"] == "Device")
        withheld = [json.loads(line) for e in manifest["error"] for line in open(e["url"].removeprefix("file://"))]
        assert any("Device/dev-two" in o["issue"][0]["diagnostics"] for o in withheld)


def test_supporting_resources_follow_until_and_referrers_follow_since(run_cli, source, tmp_path):
    data = read_ndjson(source)
    for window in ({"since": "2022-01-01T00:00:00Z"}, {"until": "2023-01-01T00:00:00Z"}):
        query = "&".join(f"_{name}={value}" for name, value in window.items())
        manifest = _export(run_cli, source, tmp_path / next(iter(window)),
                           f"{BASE}/Patient/$export?_type={MIXED}&{query}")
        got = exported(manifest)
        assert keys(got) == oracle(data, all_patients(data), MIXED.split(","), **window)
        devices = {r["id"] for r in got if r["resourceType"] == "Device"}
        assert devices and devices < {r["id"] for r in data if r["resourceType"] == "Device"}


@JOIN_PATHS
def test_a_group_member_added_after_since_gets_the_devices_that_name_them(run_cli, source, tmp_path,
                                                                         membership_args):
    since = "2019-06-01T00:00:00Z"  # after the odd Devices' lastUpdated, before the even ones'
    manifest = _export(run_cli, source, tmp_path / "out",
                       f"{BASE}/Group/grp-00001/$export?_type={MIXED}&_since={since}", *membership_args)
    data = read_ndjson(source)
    covered = group_members(data, manifest["transactionTime"])
    whole = whole_members(data, covered, since)
    got = exported(manifest)
    assert keys(got) == oracle(data, covered, MIXED.split(","), since=since, whole=whole)
    old = {r["id"] for r in data if r["resourceType"] == "Device" and r.get("meta", {}).get("lastUpdated") == OLD
           and referenced_patients(r) & whole}
    assert old and old <= {r["id"] for r in got if r["resourceType"] == "Device"}  # old, yet their member is new


def test_without_type_the_servers_default_supporting_types_apply(run_cli, source, tmp_path):
    data = read_ndjson(source)
    manifest = _export(run_cli, source, tmp_path / "out", f"{BASE}/Group/grp-00001/$export",
                       "--include-referenced", "Device")
    got = {(r["resourceType"], r["id"]) for r in exported(manifest)}
    covered = group_members(data, manifest["transactionTime"])
    expected = {k for k in oracle(data, covered, [*sorted(SAMPLE_COMPARTMENT), "Device"])}
    assert got == expected and any(t == "Device" for t, _ in got)


def test_only_supporting_types_refused_strictly_naming_type_and_no_server_flag(run_cli, source, tmp_path):
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/grp-00001/$export?_type=Device,Practitioner")
    assert result.code == 2 and "_type" in result.err and "outside the Patient compartment" in result.err
    assert "--" not in result.err.split("_type", 1)[1]


# ---- over real HTTP ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, source):
    root = tmp_path_factory.mktemp("supporting-http")
    with serve(source, root / "out", root / "state", "--include-referenced", "Organization") as running:
        yield running


def _run(client: httpx.Client, url: str, headers: dict = FHIR_HEADERS) -> tuple[dict, list[dict], list[dict]]:
    kicked = client.get(url, headers=headers)
    assert kicked.status_code == 202, kicked.text
    manifest = poll(client, kicked.headers["Content-Location"]).json()

    def lines(entries: list[dict]) -> list[dict]:
        return [json.loads(line) for e in entries for line in client.get(e["url"]).text.splitlines()]

    return manifest, lines(manifest["output"]), lines(manifest["error"])


@pytest.mark.parametrize("level", ["Patient", "Group/grp-00001"])
def test_mixed_type_over_http(server, source, level):
    data = read_ndjson(source)
    with httpx.Client(timeout=30) as client:
        manifest, got, _ = _run(client, f"{server.fhir}/{level}/$export?_type={MIXED}")
    covered = all_patients(data) if level == "Patient" else group_members(data, manifest["transactionTime"])
    assert keys(got) == oracle(data, covered, MIXED.split(","))
    assert {"Practitioner", "Organization", "Device"} <= {e["type"] for e in manifest["output"]}


def test_only_supporting_types_over_http_refused_strictly_processed_leniently(server, source):
    url = f"{server.fhir}/Group/grp-00001/$export?_type=Device,Practitioner"
    data = read_ndjson(source)
    with httpx.Client(timeout=30) as client:
        refused = client.get(url, headers=FHIR_HEADERS)
        assert refused.status_code == 400
        diagnostics = refused.json()["issue"][0]["diagnostics"]
        assert "_type" in diagnostics and "--" not in diagnostics and "include" not in diagnostics
        manifest, got, outcomes = _run(client, url, LENIENT)
    covered = group_members(data, manifest["transactionTime"])
    assert keys(got) == oracle(data, covered, ["Device", "Practitioner"])
    assert {e["type"] for e in manifest["output"]} == {"Device", "Practitioner"}
    notes = [o["issue"][0] for o in outcomes if o["issue"][0]["code"] == "not-supported"]
    assert len(notes) == 1 and notes[0]["diagnostics"].startswith("_type: ") and notes[0]["severity"] == "warning"


@pytest.mark.parametrize("types", [SMART_FETCH, CUMULUS_ETL], ids=["smart-fetch", "cumulus-etl"])
def test_real_clients_default_type_lists_are_accepted_at_group_level(server, source, types):
    data = read_ndjson(source)
    with httpx.Client(timeout=30) as client:
        manifest, got, _ = _run(client, f"{server.fhir}/Group/grp-00001/$export?_type={types}")
    covered = group_members(data, manifest["transactionTime"])
    assert keys(got) == oracle(data, covered, types.split(","))
    assert "Device" in {e["type"] for e in manifest["output"]}


def test_the_servers_default_applies_without_type_and_never_blocks_a_system_export(server, source):
    data = read_ndjson(source)
    with httpx.Client(timeout=30) as client:
        _, got, _ = _run(client, f"{server.fhir}/Patient/$export")
        assert keys(got) == oracle(data, all_patients(data), [*sorted(SAMPLE_COMPARTMENT), "Organization"])
        _, everything, _ = _run(client, f"{server.fhir}/$export?_type=Device")
    assert keys(everything) == keys([r for r in data if r["resourceType"] == "Device"])


# ---- the server's default under SMART scopes ---------------------------------------------------


def test_a_tokens_kickoff_without_type_keeps_the_covered_default_supporting_types():
    from launcher.auth.export_scope import authorize_export
    from launcher.auth.scopes import Grant
    from launcher.kickoff.level_types import check_level
    from launcher.kickoff.parser import parse_get
    from pipelines.plan import supporting_types
    from pipelines.settings import ExportSettings

    settings = ExportSettings("in", "/tmp/out", include_referenced="Organization,Practitioner")
    grant = Grant.parse("system/Patient.read system/Encounter.read system/Organization.read")
    request, narrowed = authorize_export(parse_get(f"{BASE}/Patient/$export"), settings, grant)
    assert supporting_types(request, narrowed.referenced_types) == ("Organization",)
    assert {"Patient", "Encounter"} <= set(request.types) and "Practitioner" not in request.types
    # A system-level kick-off is not refused for the server's own default: it does not apply there.
    request, narrowed = authorize_export(parse_get(f"{BASE}/$export"), settings, Grant.parse("system/*.read"))
    check_level(request, narrowed.referenced_types)
    assert narrowed.referenced_types == () and supporting_types(request, settings.referenced_types) == ()
