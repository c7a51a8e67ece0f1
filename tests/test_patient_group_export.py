"""Patient- and Group-level exports end to end through the CLI, checked against oracles built here."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from tests.conftest import SHARED_DATA
from tests.helpers import (
    BASE,
    JOIN_PATHS,
    SYNTHEA,
    exported,
    keys,
    needs_shared,
    post_parameters,
    read_ndjson,
    referenced_patients,
    references,
)

REFERENCE_GROUP = SHARED_DATA / "reference-group-export"


def official_compartment_types() -> set[str]:
    """Read straight from the official package, independently of the derived file."""
    from scripts.derive_r4 import find_package_tgz

    with tarfile.open(find_package_tgz()) as tar:
        definition = json.load(tar.extractfile("package/CompartmentDefinition-patient.json"))
    return {entry["code"] for entry in definition["resource"] if entry.get("param")} | {"Patient"}


def compartment_oracle(source: list[dict], patients: set[str]) -> list[tuple[str, str]]:
    # Group is left out of Patient- and Group-level exports unless `_type` names it: a Group's
    # roster names patients outside the export (issue 14, item 1).
    types = official_compartment_types() - {"Group"}
    chosen = []
    for r in source:
        own = {r["id"]} if r["resourceType"] == "Patient" else set()
        if r["resourceType"] in types and (referenced_patients(r) | own) & patients:
            chosen.append(r)
    return keys(chosen)


# ---- generated data ---------------------------------------------------------------------


@JOIN_PATHS
def test_patient_export_covers_every_compartment_and_nothing_else(run_cli, sample_dir, tmp_path, membership_args):
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Patient/$export", *membership_args)
    assert result.code == 0, result.err
    source = read_ndjson(sample_dir)
    all_patients = {r["id"] for r in source if r["resourceType"] == "Patient"}
    got = exported(result.manifest())
    assert keys(got) == compartment_oracle(source, all_patients)
    assert not {"Organization", "Practitioner"} & {r["resourceType"] for r in got}


@JOIN_PATHS
def test_group_export_leaves_out_inactive_and_ended_members(run_cli, sample_dir, tmp_path, membership_args):
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/grp-00001/$export", *membership_args)
    assert result.code == 0, result.err
    manifest = result.manifest()
    source = read_ndjson(sample_dir)
    group = next(r for r in source if r["resourceType"] == "Group" and r["id"] == "grp-00001")
    tx = manifest["transactionTime"][:10]
    active = {
        m["entity"]["reference"].removeprefix("Patient/")
        for m in group["member"]
        if not m.get("inactive") and m.get("period", {}).get("end", "9999") >= tx
    }
    left_out = {m["entity"]["reference"].removeprefix("Patient/") for m in group["member"]} - active
    assert active and left_out, "the sample should hold both kinds of member"
    got = exported(manifest)
    assert keys(got) == compartment_oracle(source, active)
    assert not {r["id"] for r in got if r["resourceType"] == "Patient"} & left_out


def _stamp(resource: dict, instant: str) -> dict:
    return {**resource, "meta": {"lastUpdated": instant}}


@JOIN_PATHS
def test_group_since_gives_new_members_their_whole_compartment(run_cli, tmp_path, membership_args):
    old, new = "2019-05-01T00:00:00Z", "2023-05-01T00:00:00Z"
    resources = []
    for p in ("old", "new"):
        resources.append(_stamp({"resourceType": "Patient", "id": p}, old))
        for n, when in enumerate((old, new)):
            obs = {"resourceType": "Observation", "id": f"{p}-{n}", "status": "final",
                   "code": {"text": "x"}, "subject": {"reference": f"Patient/{p}"}}
            resources.append(_stamp(obs, when))
    resources.append(_stamp({
        "resourceType": "Group", "id": "g", "type": "person", "actual": True,
        "member": [
            {"entity": {"reference": "Patient/old"}, "period": {"start": "2018-01-01"}},
            {"entity": {"reference": "Patient/new"}, "period": {"start": "2022-06-01"}},
            {"entity": {"reference": "Patient/ghost"}},
        ],
    }, old))
    source = tmp_path / "src"
    source.mkdir()
    (source / "all.ndjson").write_text("".join(json.dumps(r) + "\n" for r in resources))
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/g/$export?_since=2021-01-01T00:00:00Z", *membership_args)
    assert result.code == 0, result.err
    manifest = result.manifest()
    # The new member's whole compartment, the old member's new data (Group is left out by default:
    # issue 14, item 1; tests/test_scope_privacy.py covers the Group with `_type=Group`).
    assert keys(exported(manifest)) == [
        ("Observation", "new-0"), ("Observation", "new-1"), ("Observation", "old-1"), ("Patient", "new"),
    ]
    # The member that resolves to no patient is reported, not dropped.
    [error] = manifest["error"]
    outcome = json.loads(Path(error["url"].removeprefix("file://")).read_text())
    issue = outcome["issue"][0]
    assert issue["code"] == "not-found"
    # The member entry is named; the reference it holds (a patient id) is not copied (issue 14, item 4).
    assert issue["diagnostics"].startswith("Group/g.member[2]: member not resolved: member.entity is not a Patient")
    assert "ghost" not in issue["diagnostics"]


# ---- the real Synthea data ----------------------------------------------------------------


@needs_shared
def test_synthea_group_matches_the_reference_server(run_cli, tmp_path):
    result = run_cli("export", "--source", str(SYNTHEA), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/NeighborhoodHealthPlan/$export")
    assert result.code == 0, result.err
    got = exported(result.manifest())
    reference = read_ndjson(REFERENCE_GROUP)
    compartment = official_compartment_types()
    for resource_type in sorted({r["resourceType"] for r in reference} & compartment):
        ours = sorted(r["id"] for r in got if r["resourceType"] == resource_type)
        theirs = sorted(r["id"] for r in reference if r["resourceType"] == resource_type)
        assert ours == theirs, resource_type
    assert sum(1 for r in got if r["resourceType"] == "Patient") == 7


@needs_shared
def test_synthea_patient_parameter_gives_the_union_of_two_compartments(run_cli, tmp_path):
    source = read_ndjson(SYNTHEA)
    two = sorted(r["id"] for r in source if r["resourceType"] == "Patient")[:2]
    result = run_cli("export", "--source", str(SYNTHEA), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Patient/$export", "--parameters", str(post_parameters(tmp_path, *two)))
    assert result.code == 0, result.err
    got = keys(exported(result.manifest()))
    assert got == compartment_oracle(source, set(two))
    assert len(got) == len(set(got))


@JOIN_PATHS
def test_include_referenced_adds_only_what_exported_resources_reference(run_cli, sample_dir, tmp_path, membership_args):
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/grp-00001/$export", "--include-referenced", "Practitioner",
                     *membership_args)
    assert result.code == 0, result.err
    got = exported(result.manifest())
    compartment = [r for r in got if r["resourceType"] != "Practitioner"]
    referenced = {k for k in references(compartment) if k.startswith("Practitioner/")}
    practitioners = {f"Practitioner/{r['id']}" for r in got if r["resourceType"] == "Practitioner"}
    source_practitioners = {f"Practitioner/{r['id']}" for r in read_ndjson(sample_dir) if r["resourceType"] == "Practitioner"}
    assert practitioners and practitioners == referenced & source_practitioners
    assert "Organization" not in {r["resourceType"] for r in got}


@JOIN_PATHS
def test_include_referenced_takes_references_before_elements_removes_them(run_cli, sample_dir, tmp_path,
                                                                         membership_args):
    """`_elements` shapes what is written, not what is referenced (issue 17: 60 Organizations became 0)."""
    def organizations(*extra: str) -> set[str]:
        result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                         "--kickoff", f"{BASE}/Group/grp-00001/$export?_type=Encounter,Organization{''.join(extra)}",
                         "--include-referenced", "Organization", *membership_args)
        assert result.code == 0, result.err
        got = exported(result.manifest())
        return {r["id"] for r in got if r["resourceType"] == "Organization"}, got

    whole, _ = organizations()
    shaped, got = organizations("&_elements=Encounter.status")
    assert whole and shaped == whole
    assert all("serviceProvider" not in r for r in got if r["resourceType"] == "Encounter")  # still shaped


def test_include_referenced_refuses_compartment_types(run_cli, sample_dir, tmp_path):
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Patient/$export", "--include-referenced", "Observation")
    assert result.code == 2 and "Observation is in the Patient compartment" in result.err


@needs_shared
def test_synthea_group_with_referenced_types_covers_the_reference_server(run_cli, tmp_path):
    result = run_cli("export", "--source", str(SYNTHEA), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/Group/NeighborhoodHealthPlan/$export",
                     "--include-referenced", "Organization,Practitioner")
    assert result.code == 0, result.err
    got = exported(result.manifest())
    named = references(got)
    reference = read_ndjson(REFERENCE_GROUP)
    for resource_type in ("Organization", "Practitioner"):
        ours = {r["id"] for r in got if r["resourceType"] == resource_type}
        theirs = {r["id"] for r in reference if r["resourceType"] == resource_type}
        # The reference server adds a subset of what is referenced; we add every referenced one.
        assert theirs <= ours
        assert {f"{resource_type}/{i}" for i in ours} <= named
        assert len(ours) < sum(1 for r in read_ndjson(SYNTHEA) if r["resourceType"] == resource_type)
