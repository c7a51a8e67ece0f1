"""Issue 26, item 1: a cut Group names no patient it was cut from, and the last guard before the write
withholds any resource naming a patient outside a Patient- or Group-level export. Real CLI runs."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import BASE, JOIN_PATHS, SYNTHEA, exported, keys, needs_shared, read_ndjson
from tests.test_scope_privacy import error_outcomes, group, member, patient, write_source
from transforms.fhir.elements import SUBSETTED_TAG

NAMES = {"p1": "Alice Smith", "p2": "Bob Jones", "p3": "Carol White", "px": "Xavier Stranger"}


def named(pid: str, **extra) -> dict:
    family, given = NAMES[pid].split()[1], NAMES[pid].split()[0]
    return patient(pid, name=[{"family": family, "given": [given]}], **extra)


def observation(oid: str, pid: str, **extra) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{pid}"}, **extra}


def narrative(*pids: str) -> dict:
    return {"status": "generated",
            "div": f"<div xmlns=\"http://www.w3.org/1999/xhtml\">{', '.join(NAMES[p] for p in pids)}</div>"}


def reference(pid: str) -> dict:
    return {"reference": f"Patient/{pid}", "display": NAMES[pid]}


def parameters(tmp_path: Path, types: str, *patients: str) -> Path:
    path = tmp_path / "parameters.json"
    parameter = [{"name": "_type", "valueString": types}]
    parameter += [{"name": "patient", "valueReference": {"reference": f"Patient/{p}"}} for p in patients]
    path.write_text(json.dumps({"resourceType": "Parameters", "parameter": parameter}))
    return path


def assert_names_none_of(resource: dict, *pids: str) -> None:
    text = json.dumps(resource)
    for pid in pids:
        assert f"Patient/{pid}" not in text and NAMES[pid] not in text, pid
        assert NAMES[pid].split()[0] not in text, pid


@JOIN_PATHS
def test_a_group_cut_by_the_patient_parameter_names_none_of_the_patients_it_was_cut_from(
        run_cli, tmp_path, membership_args):
    g3 = {"resourceType": "Group", "id": "g3", "type": "person", "actual": True, "text": narrative("p1", "p2", "p3"),
          "extension": [{"url": "http://example.org/fhir/StructureDefinition/lead", "valueReference": reference("p1")}],
          "characteristic": [{"code": {"text": "sibling of"}, "valueReference": reference("p2"), "exclude": False}],
          "member": [member("Patient/p1"), member("Patient/p2"), member("Patient/p3")]}
    source = write_source(tmp_path / "src", [named("p1"), named("p2"), named("p3"), g3])
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/g3/$export",
                     "--parameters", str(parameters(tmp_path, "Group,Patient", "p3")), *membership_args)
    assert result.code == 0, result.err
    manifest = result.manifest()
    got = exported(manifest)
    assert [r["id"] for r in got if r["resourceType"] == "Patient"] == ["p3"]
    [group] = [r for r in got if r["resourceType"] == "Group"]
    assert group["member"] == [member("Patient/p3")]
    assert "text" not in group and "extension" not in group and "characteristic" not in group
    assert group["meta"]["tag"] == [SUBSETTED_TAG]
    assert_names_none_of(group, "p1", "p2")
    assert manifest["error"] == []  # the cut Group passes the guard


def test_a_group_cut_by_period_and_inactive_keeps_only_what_names_its_kept_members(run_cli, tmp_path):
    g = {"resourceType": "Group", "id": "g", "type": "person", "actual": True, "name": "Cohort",
         "text": narrative("p1", "p2", "p3"),
         "managingEntity": reference("p2"),
         "extension": [{"url": "http://example.org/a", "valueReference": reference("p3")},
                       {"url": "http://example.org/b", "valueReference": reference("p1")},
                       {"url": "http://example.org/c", "valueReference": {"display": NAMES["p2"]}},
                       {"url": "http://example.org/d", "valueReference": {"reference": "Organization/o1"}}],
         "member": [member("Patient/p1"), member("Patient/p2", inactive=True),
                    member("Patient/p3", period={"start": "2001-01-01", "end": "2002-01-01"})]}
    source = write_source(tmp_path / "src", [named("p1"), named("p2"), named("p3"), g])
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/g/$export?_type=Group,Patient")
    assert result.code == 0, result.err
    got = exported(result.manifest())
    [group] = [r for r in got if r["resourceType"] == "Group"]
    assert group["member"] == [member("Patient/p1")] and group["name"] == "Cohort"
    # What names a kept member, or another type's resource, stays; a display alone cannot be told apart.
    assert [e["url"] for e in group["extension"]] == ["http://example.org/b", "http://example.org/d"]
    assert "text" not in group and "managingEntity" not in group
    assert group["meta"]["tag"] == [SUBSETTED_TAG]
    assert_names_none_of(group, "p2", "p3")


@JOIN_PATHS
def test_the_guard_withholds_what_names_an_uncovered_patient_outside_the_compartment(
        run_cli, tmp_path, membership_args):
    link = {"other": {"reference": "Patient/px"}, "type": "seealso"}
    resources = [
        named("p1", link=[link]), named("p2"), named("px"),
        observation("focus", "p1", focus=[reference("px")]),
        observation("extended", "p2", extension=[{"url": "http://example.org/x", "valueReference": reference("px")}]),
        observation("contained", "p1", contained=[observation("inner", "px")]),
        observation("shared", "p1", performer=[reference("px")]),  # the compartment makes it px's record too
        observation("plain", "p2"),
        observation("outside", "px"),
        {"resourceType": "Group", "id": "gg", "type": "person", "actual": True,
         "member": [member("Patient/p1"), member("Patient/p2")]},
    ]
    source = write_source(tmp_path / "src", resources)
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/gg/$export?_type=Patient,Observation", *membership_args)
    assert result.code == 0, result.err
    manifest = result.manifest()
    got = {(r["resourceType"], r["id"]) for r in exported(manifest)}
    assert got == {("Patient", "p1"), ("Patient", "p2"), ("Observation", "shared"), ("Observation", "plain")}
    outcomes = error_outcomes(manifest)
    issues = sorted(o["issue"][0]["diagnostics"] for o in outcomes)
    assert [o["issue"][0]["code"] for o in outcomes] == ["security"] * 3
    assert [o["issue"][0]["severity"] for o in outcomes] == ["error"] * 3
    assert issues == [
        "part-0.ndjson line 4 (Observation/focus): withheld: names a Patient outside the export at "
        "Observation.focus[0]; not exported",
        "part-0.ndjson line 5 (Observation/extended): withheld: names a Patient outside the export at "
        "Observation.extension[0].valueReference; not exported",
        "part-0.ndjson line 6 (Observation/contained): withheld: names a Patient outside the export at "
        "Observation.contained[0].subject; not exported",
    ]
    text = json.dumps(outcomes)
    assert "px" not in text and "Xavier" not in text  # no value copied


def test_the_guard_withholds_a_referenced_resource_naming_an_uncovered_patient(run_cli, tmp_path):
    resources = [
        named("p1"), named("px"),
        observation("o1", "p1", performer=[{"reference": "Practitioner/ok"}, {"reference": "Practitioner/bad"}]),
        {"resourceType": "Practitioner", "id": "ok"},
        {"resourceType": "Practitioner", "id": "bad",
         "extension": [{"url": "http://example.org/x", "valueReference": {"reference": "Patient/px"}}]},
    ]
    source = write_source(tmp_path / "src", resources)
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Patient/$export", "--include-referenced", "Practitioner",
                     "--parameters", str(parameters(tmp_path, "Patient,Observation,Practitioner", "p1")))
    assert result.code == 0, result.err
    manifest = result.manifest()
    got = {(r["resourceType"], r["id"]) for r in exported(manifest)}
    assert got == {("Patient", "p1"), ("Observation", "o1"), ("Practitioner", "ok")}
    [outcome] = error_outcomes(manifest)
    assert outcome["issue"][0]["code"] == "security"
    assert outcome["issue"][0]["diagnostics"] == (
        "part-0.ndjson line 5 (Practitioner/bad): withheld: names a Patient outside the export at "
        "Practitioner.extension[0].valueReference; not exported")


# --- untyped references: `urn:uuid:X` names Patient X when X is a source Patient's id ------------------

P1, P2, PX = "0a6f1f2e-0001-4c1e-9a51-000000000001", "0a6f1f2e-0002-4c1e-9a51-000000000002", \
    "0a6f1f2e-0009-4c1e-9a51-000000000009"
DOCTOR = "0a6f1f2e-00d0-4c1e-9a51-0000000000d0"


def uuid_ref(rid: str) -> dict:
    return {"reference": f"urn:uuid:{rid}"}


def uuid_observation(oid: str, pid: str, **extra) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
            "subject": uuid_ref(pid), **extra}


def extension(value: dict) -> list[dict]:
    return [{"url": "http://example.org/x", "valueReference": value}]


def untyped_source(tmp_path: Path) -> Path:
    return write_source(tmp_path / "src", [
        patient(P1), patient(P2), patient(PX), {"resourceType": "Practitioner", "id": DOCTOR},
        uuid_observation("focus-other", P1, focus=[uuid_ref(PX)]),
        uuid_observation("extension-other", P2, extension=extension(uuid_ref(PX))),
        uuid_observation("absolute-other", P1, focus=[{"reference": f"https://x.example/fhir/Patient/{PX}"}]),
        uuid_observation("identifier-only", P2, focus=[{"type": "Patient", "identifier": {"value": "MRN-9"}}]),
        uuid_observation("focus-covered", P1, focus=[uuid_ref(P2)]),
        uuid_observation("extension-covered", P2, extension=extension(uuid_ref(P1))),
        uuid_observation("practitioner", P1, extension=extension(uuid_ref(DOCTOR)),
                         focus=[{"reference": f"urn:uuid:{PX}", "type": "Practitioner"}]),
        uuid_observation("performer-other", P1, performer=[uuid_ref(PX)]),  # a compartment path: shared
        uuid_observation("outside", PX),
        group("gg", member(f"urn:uuid:{P1}"), member(f"urn:uuid:{P2}")),
    ])


UNTYPED_KICKOFFS = {
    "group": ("Group/gg/$export", ()),
    "patient-parameter": ("Patient/$export", (P1, P2)),
}


@JOIN_PATHS
@pytest.mark.parametrize("level", sorted(UNTYPED_KICKOFFS))
def test_the_guard_withholds_an_untyped_reference_to_a_source_patient_outside_the_export(
        run_cli, tmp_path, level, membership_args):
    path, patients = UNTYPED_KICKOFFS[level]
    extra = ("--parameters", str(parameters(tmp_path, "Patient,Observation", *patients))) if patients else ()
    url = f"{BASE}/{path}" + ("" if patients else "?_type=Patient,Observation")
    result = run_cli("export", "--source", str(untyped_source(tmp_path)), "--output", str(tmp_path / "out"),
                     "--kickoff", url, *extra, *membership_args)
    assert result.code == 0, result.err
    manifest = result.manifest()
    got = {(r["resourceType"], r["id"]) for r in exported(manifest)}
    assert got == {("Patient", P1), ("Patient", P2), ("Observation", "focus-covered"),
                   ("Observation", "extension-covered"), ("Observation", "practitioner"),
                   ("Observation", "performer-other")}
    outcomes = error_outcomes(manifest)
    assert [o["issue"][0]["code"] for o in outcomes] == ["security"] * 4
    assert sorted(o["issue"][0]["diagnostics"] for o in outcomes) == [
        f"part-0.ndjson line {line} (Observation/{oid}): withheld: names a Patient outside the export at "
        f"Observation.{where}; not exported"
        for line, oid, where in [(5, "focus-other", "focus[0]"), (6, "extension-other", "extension[0].valueReference"),
                                 (7, "absolute-other", "focus[0]"), (8, "identifier-only", "focus[0]")]]
    assert PX not in json.dumps(outcomes) and "MRN" not in json.dumps(outcomes)


@needs_shared
def test_the_synthea_group_export_withholds_an_added_uuid_reference_to_a_non_member(run_cli, tmp_path):
    source = tmp_path / "synthea"
    shutil.copytree(SYNTHEA, source)
    resources = read_ndjson(SYNTHEA)
    [roster] = [r for r in resources if r["resourceType"] == "Group" and r["id"] == "NeighborhoodHealthPlan"]
    members = {m["entity"]["reference"].removeprefix("urn:uuid:") for m in roster["member"]}
    other = sorted(r["id"] for r in resources if r["resourceType"] == "Patient" and r["id"] not in members)[0]
    doctor = next(r["id"] for r in resources if r["resourceType"] == "Practitioner")
    member_id = sorted(members)[0]
    added = [uuid_observation("added-other", member_id, focus=[uuid_ref(other)]),
             uuid_observation("added-doctor", member_id, focus=[uuid_ref(doctor)])]
    (source / "Added.ndjson").write_text("".join(json.dumps(r) + "\n" for r in added))
    url = f"{BASE}/Group/NeighborhoodHealthPlan/$export"
    plain = run_cli("export", "--source", str(SYNTHEA), "--output", str(tmp_path / "plain"), "--kickoff", url)
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"), "--kickoff", url)
    assert plain.code == 0 and result.code == 0, (plain.err, result.err)
    assert plain.manifest()["error"] == []  # the shared data as it is: nothing withheld
    counts = Counter(r["resourceType"] for r in exported(plain.manifest()))
    manifest = result.manifest()
    assert Counter(r["resourceType"] for r in exported(manifest)) == counts + Counter(Observation=1)
    assert ("Observation", "added-doctor") in keys(exported(manifest))
    [outcome] = error_outcomes(manifest)
    assert outcome["issue"][0]["code"] == "security"
    assert outcome["issue"][0]["diagnostics"] == (
        "Added.ndjson line 1 (Observation/added-other): withheld: names a Patient outside the export at "
        "Observation.focus[0]; not exported")
