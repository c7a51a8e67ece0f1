"""What a Patient- or Group-level export may name, duplicate ids, and types a level cannot export.

No exported resource may name a patient outside the export: Group rosters are
left out by default and cut to the covered patients when asked for. Ambiguous
Group ids are refused at kick-off; conflicting copies of one `Type/id` are
reported in `error[]`. Types a level cannot export are refused at kick-off.
Every export here is a real run of the CLI on the embedded Beam runner.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.kickoff.level_types import check_level
from launcher.kickoff.parser import KickoffRefused, parse_get
from tests.helpers import (
    BASE,
    JOIN_PATHS,
    SYNTHEA,
    assert_refused_before_any_job,
    exported,
    needs_shared,
    post_parameters,
    read_ndjson,
    referenced_patients,
)
from transforms.fhir.elements import SUBSETTED_TAG
from transforms.fhir.group import GroupRefused, covered_roster, resolve_group
from transforms.read.lookup import index_source


def write_source(folder: Path, *files: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n, resources in enumerate(files):
        (folder / f"part-{n}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in resources))
    return folder


def named_patients(resources: list[dict]) -> set[str]:
    """Every patient id an exported resource names: its own id if a Patient, and every reference."""
    return referenced_patients(resources) | {r["id"] for r in resources if r["resourceType"] == "Patient"}


def export(run_cli, source: Path, out: Path, url: str, *extra: str):
    result = run_cli("export", "--source", str(source), "--output", str(out), "--kickoff", url, *extra)
    assert result.code == 0, result.err
    return result.manifest()


def error_outcomes(manifest: dict) -> list[dict]:
    outcomes = []
    for entry in manifest["error"]:
        outcomes += [json.loads(line) for line in Path(entry["url"].removeprefix("file://")).read_text().splitlines()]
    return outcomes


def patient(pid: str, **extra) -> dict:
    return {"resourceType": "Patient", "id": pid, **extra}


def observation(oid: str, pid: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{pid}"}}


def member(reference: str, **extra) -> dict:
    return {"entity": {"reference": reference}, **extra}


def group(gid: str, *members: dict, **extra) -> dict:
    return {"resourceType": "Group", "id": gid, "type": "person", "actual": True, "member": list(members), **extra}


# ---- item 1: Group rosters -------------------------------------------------------------------


def roster_source(tmp_path: Path) -> Path:
    """Group g: p1, an inactive p2, a ghost, nested Group inner (p3); Group h lists p1 and p9."""
    resources = [patient(p) for p in ("p1", "p2", "p3", "p9")]
    resources += [observation(f"o-{p}", p) for p in ("p1", "p2", "p3", "p9")]
    resources += [
        group("g", member("Patient/p1"), member("Patient/p2", inactive=True), member("Patient/ghost"),
              member("Group/inner"), quantity=4),
        group("inner", member("urn:uuid:p3")),
        group("h", member("Patient/p1"), member("Patient/p9")),
    ]
    return write_source(tmp_path / "src", resources)


@JOIN_PATHS
@pytest.mark.parametrize("level", ["Patient/$export", "Group/g/$export"])
def test_patient_and_group_exports_leave_out_group_rosters_by_default(run_cli, tmp_path, level, membership_args):
    manifest = export(run_cli, roster_source(tmp_path), tmp_path / "out", f"{BASE}/{level}", *membership_args)
    got = exported(manifest)
    assert "Group" not in {r["resourceType"] for r in got}
    covered = {r["id"] for r in got if r["resourceType"] == "Patient"}
    assert named_patients(got) <= covered


@JOIN_PATHS
def test_group_type_exports_only_the_kicked_off_group_cut_to_its_covered_patients(run_cli, tmp_path, membership_args):
    manifest = export(run_cli, roster_source(tmp_path), tmp_path / "out",
                      f"{BASE}/Group/g/$export?_type=Group,Patient,Observation", *membership_args)
    got = exported(manifest)
    [g] = [r for r in got if r["resourceType"] == "Group"]
    assert g["id"] == "g"
    assert g["member"] == [member("Patient/p1")]  # p2 inactive, the ghost, the nested Group: dropped
    assert "quantity" not in g
    assert g["meta"]["tag"] == [SUBSETTED_TAG]
    assert {r["id"] for r in got if r["resourceType"] == "Patient"} == {"p1", "p3"}
    assert named_patients(got) <= {"p1", "p3"}


def test_group_type_with_the_patient_parameter_cuts_the_roster_to_those_patients(run_cli, tmp_path):
    g = group("g", member("Patient/p1"), member("urn:uuid:p2"))
    source = write_source(tmp_path / "src", [patient("p1"), patient("p2"), g])
    parameters = post_parameters(tmp_path, "p2")
    body = json.loads(parameters.read_text())
    body["parameter"].append({"name": "_type", "valueString": "Group,Patient"})
    parameters.write_text(json.dumps(body))
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/g/$export", "--parameters", str(parameters))
    assert result.code == 0, result.err
    got = exported(result.manifest())
    assert [r["id"] for r in got if r["resourceType"] == "Patient"] == ["p2"]
    [g] = [r for r in got if r["resourceType"] == "Group"]
    assert g["member"] == [member("urn:uuid:p2")] and g["meta"]["tag"] == [SUBSETTED_TAG]


def test_a_group_whose_members_are_all_covered_keeps_its_bytes_and_no_tag(run_cli, tmp_path):
    g = group("g", member("Patient/p1"))
    source = write_source(tmp_path / "src", [patient("p1"), g])
    got = exported(export(run_cli, source, tmp_path / "out", f"{BASE}/Group/g/$export?_type=Group"))
    assert got == [g]


def test_covered_roster_keeps_member_forms_and_tags_once():
    g = group("g", member("Patient/a"), member("https://x/fhir/Patient/b/_history/2"), member("c"),
              member("Group/a"), member("Practitioner/a"), "not an object",
              meta={"tag": [SUBSETTED_TAG]})
    cut = covered_roster(g, {"a", "b", "c"})
    assert cut["member"] == g["member"][:3]
    assert cut["meta"]["tag"] == [SUBSETTED_TAG]
    assert covered_roster(group("g", member("Patient/a")), {"a"}) is None
    assert "member" not in covered_roster(group("g", member("Patient/z")), {"a"})


def test_group_in_type_at_patient_level_is_refused(run_cli, sample_dir, tmp_path):
    with pytest.raises(KickoffRefused) as info:
        parse_get(f"{BASE}/Patient/$export?_type=Patient,Group")
    assert info.value.parameter == "_type" and "Group" in info.value.reason
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Patient/$export?_type=Group")
    assert_refused_before_any_job(run_cli, tmp_path, result, "_type", "Group")


@needs_shared
def test_synthea_one_patient_export_names_no_other_patient(run_cli, tmp_path):
    everyone = {r["id"] for r in read_ndjson(SYNTHEA) if r["resourceType"] == "Patient"}
    one = sorted(everyone)[0]
    result = run_cli("export", "--source", str(SYNTHEA), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Patient/$export", "--parameters", str(post_parameters(tmp_path, one)))
    assert result.code == 0, result.err
    got = exported(result.manifest())
    assert "Group" not in {r["resourceType"] for r in got}
    assert named_patients(got) & everyone == {one}  # Synthea's urn:uuid: references also name non-patients


@needs_shared
def test_synthea_group_export_names_only_its_members(run_cli, tmp_path):
    source = read_ndjson(SYNTHEA)
    [nhp] = [r for r in source if r["resourceType"] == "Group" and r["id"] == "NeighborhoodHealthPlan"]
    members = {m["entity"]["reference"].removeprefix("urn:uuid:") for m in nhp["member"]}
    everyone = {r["id"] for r in source if r["resourceType"] == "Patient"}
    got = exported(export(run_cli, SYNTHEA, tmp_path / "a", f"{BASE}/Group/NeighborhoodHealthPlan/$export"))
    assert "Group" not in {r["resourceType"] for r in got}
    assert named_patients(got) & everyone == members
    with_group = exported(export(run_cli, SYNTHEA, tmp_path / "b",
                                 f"{BASE}/Group/NeighborhoodHealthPlan/$export?_type=Group,Patient"))
    assert [r for r in with_group if r["resourceType"] == "Group"] == [nhp]  # every member covered: unchanged
    assert named_patients(with_group) & everyone == members


# ---- item 9: duplicate ids -------------------------------------------------------------------


def test_an_ambiguous_group_id_is_refused_at_kickoff(run_cli, tmp_path):
    source = write_source(tmp_path / "src", [patient("p1"), patient("p2"), group("Dup", member("Patient/p1"))],
                          [group("Dup", member("Patient/p2"))])
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/Dup/$export")
    assert_refused_before_any_job(run_cli, tmp_path, result, "group", "Group/Dup", "ambiguous", "2 different")


def test_identical_group_copies_are_one_group_and_nested_ambiguity_is_refused(tmp_path):
    same = group("g", member("Patient/p1"))
    source = write_source(tmp_path / "src", [patient("p1"), same, group("n", member("Patient/p1"))],
                          [same, group("n", member("Patient/p2")), group("outer", member("Group/n"))])
    index = index_source(str(source))
    assert index.ambiguous_groups == {"n": 2}
    assert resolve_group("g", index.groups, index.patient_ids, "2024-01-01T00:00:00Z",
                         ambiguous=index.ambiguous_groups).patients.ids == {"p1"}
    with pytest.raises(GroupRefused, match="Group/n .*member of Group/outer.* ambiguous"):
        resolve_group("outer", index.groups, index.patient_ids, "2024-01-01T00:00:00Z",
                      ambiguous=index.ambiguous_groups)


DUPLICATE_EXPORTS = [
    f"{BASE}/$export",  # the read keeps no bodies: ids come from the bytes
    f"{BASE}/$export?_type=Patient,Organization&_elements=Patient.name,Organization.name",
    f"{BASE}/Patient/$export",
]


@pytest.mark.parametrize("url", DUPLICATE_EXPORTS)
def test_conflicting_copies_are_all_exported_and_each_reported(run_cli, tmp_path, url):
    org = {"resourceType": "Organization", "id": "org", "name": "Shared"}
    source = write_source(
        tmp_path / "src",
        [patient("solo"), patient("twin", name=[{"family": "A"}]), org],
        [org, patient("twin", name=[{"family": "B"}])],
    )
    manifest = export(run_cli, source, tmp_path / "out", url)
    got = exported(manifest)
    assert sorted(r["id"] for r in got if r["resourceType"] == "Patient") == ["solo", "twin", "twin"]
    outcomes = error_outcomes(manifest)
    duplicates = [o["issue"][0] for o in outcomes if o["issue"][0]["code"] == "duplicate"]
    assert len(duplicates) == 2, outcomes  # one per copy; identical Organization copies are not reported
    where = sorted(d["diagnostics"].split(":")[0] for d in duplicates)
    assert "part-0.ndjson line 2" in where[0] and "part-1.ndjson line 2" in where[1]
    assert all("latest meta.lastUpdated" in d["diagnostics"] and "(Patient/twin)" in d["diagnostics"]
               and d["severity"] == "warning" for d in duplicates)


# ---- item 10: types a level cannot export ---------------------------------------------------


@pytest.mark.parametrize("url, extra, expected", [
    (f"{BASE}/Patient/$export?_type=Organization", [], ["_type", "Organization", "outside the Patient compartment"]),
    (f"{BASE}/Group/grp-00001/$export?_type=Practitioner", [], ["_type", "Practitioner"]),
    (f"{BASE}/$export?_type=Patient", ["--include-referenced", "Organization"], ["--include-referenced", "system"]),
    (f"{BASE}/$export?_type=Patient&_elements=Device.status", [], ["_elements", "Device.status", "_type"]),
    (f"{BASE}/Patient/$export?_typeFilter=Organization%3Fname%3Dx", [], ["_typeFilter", "Organization"]),
])
def test_types_a_level_cannot_export_are_refused_at_kickoff(run_cli, sample_dir, tmp_path, url, extra, expected):
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--kickoff", url, *extra)
    assert_refused_before_any_job(run_cli, tmp_path, result, *expected)


def test_referenced_types_may_be_named_in_type_at_patient_level(run_cli, sample_dir, tmp_path):
    check_level(parse_get(f"{BASE}/Patient/$export?_type=Organization,Patient"), ("Organization",))
    manifest = export(run_cli, sample_dir, tmp_path / "out", f"{BASE}/Patient/$export?_type=Patient,Organization",
                      "--include-referenced", "Organization")
    assert {e["type"] for e in manifest["output"]} == {"Patient", "Organization"}


@pytest.mark.parametrize("url, parameter, says", [
    (f"{BASE}/Group/g/$export?_typeFilter=Group%3Factual%3Dtrue", "_typeFilter", "name Group in _type"),
    (f"{BASE}/Group/g/$export?_elements=Group.member", "_elements", "name Group in _type"),
    (f"{BASE}/Patient/$export?_elements=Practitioner.name", "_elements", "name it in _type"),
])
def test_without_type_filters_and_elements_on_types_the_level_leaves_out_are_refused(url, parameter, says):
    with pytest.raises(KickoffRefused) as info:
        check_level(parse_get(url))
    assert info.value.parameter == parameter and says in info.value.reason
    check_level(parse_get(url.replace("$export?", "$export?_type=Group,Patient,Practitioner&").replace(
        "Patient/$export?_type=Group,", "Patient/$export?_type=")), ("Practitioner",))


def test_the_duplicate_branch_shuffles_and_spills_only_metadata(tmp_path):
    from transforms.records import Origin, Resource, ResourceBatch
    from transforms.select.duplicates import _duplicates, key_records
    from transforms.steps.spill import SpillRecords, read_partition

    raw = [b'{"resourceType":"Patient","id":"twin","name":[{"family":"SECRET-%d"}]}' % n for n in (1, 2)]
    batches = [ResourceBatch(Origin(f"f{n}.ndjson", 0), [Resource("Patient", r, None, 0)]) for n, r in enumerate(raw)]
    fn = SpillRecords(str(tmp_path / "keys"), lambda batch: key_records(4, batch))
    fn.start_bundle()
    for batch in batches:
        assert list(fn.process(batch)) == []
    shuffled = [pair.value for pair in fn.finish_bundle()]
    assert all(type(k) is int and type(v) is str for k, v in shuffled)  # the shuffle: a bucket and a path
    spilled = [p.read_bytes() for p in (tmp_path / "keys").rglob("*.run")]
    assert spilled and not any(b"SECRET" in data for data in spilled)
    [(bucket, path)] = shuffled
    assert all(len(entry) == 8 for entry in read_partition([path]))
    records = list(_duplicates((bucket, [path])))
    assert [(r.origin.path, r.index, r.code, r.resource_id) for r in records] == [
        ("f0.ndjson", 0, "duplicate", "twin"), ("f1.ndjson", 0, "duplicate", "twin")]
    assert all("SECRET" not in r.reason for r in records)
