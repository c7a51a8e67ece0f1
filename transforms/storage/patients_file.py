"""The patients file: the covered patients of a Patient- or Group-level export, as the launcher resolved them.

NDJSON beside the job's temporary parts: a header line with the counts, then
one line per patient, one per unresolved member and one per id of the source's
other Patients (`outside`, ids only: what the last guard judges an untyped
reference by). The launcher writes it;
the pipeline (`transforms.select.covered_patients.ReadPatients`) reads it back
where it runs. Beam-free for local paths.
"""

from __future__ import annotations

from typing import Iterator

import orjson

from transforms.fhir.compartment import PatientSet
from transforms.fhir.group import MemberIssue, Membership
from transforms.records import BadRecord, Origin
from transforms.storage.files import create_file, open_file

FILE_NAME = "patients.ndjson"


def write_patients(path: str, membership: Membership, output_root: str = "") -> tuple[int, int]:
    """Writes `membership` to `path` (parents are created, never through a link below `output_root`);
    returns how many patients it holds, and how many outside ids."""
    patients, outside = membership.patients, membership.outside
    with create_file(path, root=output_root) as f:
        f.write(orjson.dumps({"patients": len(patients.ids), "issues": len(membership.issues),
                              "outside": len(outside)}) + b"\n")
        for patient in sorted(patients.ids):
            f.write(orjson.dumps({"id": patient, "whole": patient in patients.whole}) + b"\n")
        for issue in membership.issues:
            f.write(orjson.dumps({"issue": issue._asdict()}) + b"\n")
        for patient in sorted(outside):
            f.write(orjson.dumps({"outside": patient}) + b"\n")
    return len(patients.ids), len(outside)


def _lines(path: str) -> Iterator[dict]:
    with open_file(path) as f:
        f.readline()
        for line in f:
            yield orjson.loads(line)


def iter_patients(path: str) -> Iterator[tuple[str, bool]]:
    """`(id, whole)` for each patient of a patients file, streamed."""
    for line in _lines(path):
        if "id" in line:
            yield line["id"], line["whole"]


def iter_outside(path: str) -> Iterator[str]:
    """The ids of the source's Patients that a patients file's export does not cover, streamed."""
    for line in _lines(path):
        if "outside" in line:
            yield line["outside"]


def read_patient_set(path: str) -> PatientSet:
    """Loads the patients of a patients file into memory (for small sets)."""
    patients = list(iter_patients(path))
    return PatientSet.of((p for p, _ in patients), (p for p, whole in patients if whole))


def member_issues(path: str) -> Iterator[BadRecord]:
    """The unresolved members of a patients file, as bad records for the manifest's `error[]`."""
    for line in _lines(path):
        if "issue" in line:
            yield issue_record(MemberIssue(**line["issue"]))


def issue_record(issue: MemberIssue) -> BadRecord:
    """An unresolved Group member as a bad record for the manifest's `error[]`."""
    where = f"Group/{issue.group_id}"
    return BadRecord(Origin(where, -1), issue.index, f"member not resolved: {issue.reason}", "Group",
                     code="not-found", location=f"{where}.member[{issue.index}]" if issue.index >= 0 else where)
