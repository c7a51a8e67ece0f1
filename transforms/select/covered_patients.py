"""The patients an export covers, handed from the launcher to the pipeline as a file.

The launcher resolves the Group or `patient` parameter at kickoff and writes
the result as NDJSON beside the job's temporary parts: a header line with the
counts, then one line per patient and one per unresolved member. The pipeline
reads it back where it runs (a local path or any Beam filesystem), so nothing
depends on the launcher's memory, and a job can be re-run from its files.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems

from transforms.fhir.compartment import PatientSet
from transforms.fhir.group import MemberIssue, Membership
from transforms.records import BadRecord, Origin
from transforms.write.parts import create_file

FILE_NAME = "patients.ndjson"


class PatientFileHeader(NamedTuple):
    """The first line of a patients file: how many patients and issues follow."""

    patients: int
    issues: int


def write_patients(path: str, membership: Membership) -> None:
    """Writes `membership` to `path` (parents are created)."""
    patients = membership.patients
    with create_file(path) as f:
        f.write(orjson.dumps({"patients": len(patients.ids), "issues": len(membership.issues)}) + b"\n")
        for patient in sorted(patients.ids):
            f.write(orjson.dumps({"id": patient, "whole": patient in patients.whole}) + b"\n")
        for issue in membership.issues:
            f.write(orjson.dumps({"issue": issue._asdict()}) + b"\n")


def read_header(path: str) -> PatientFileHeader:
    """The counts of a patients file, read without loading it."""
    with FileSystems.open(path) as f:
        header = orjson.loads(f.readline())
    return PatientFileHeader(header["patients"], header["issues"])


def _lines(path: str) -> Iterator[dict]:
    with FileSystems.open(path) as f:
        f.readline()
        for line in f:
            yield orjson.loads(line)


def iter_patients(path: str) -> Iterator[tuple[str, bool]]:
    """`(id, whole)` for each patient of a patients file, streamed."""
    for line in _lines(path):
        if "id" in line:
            yield line["id"], line["whole"]


def read_patient_set(path: str) -> PatientSet:
    """Loads the patients of a patients file into memory (for small sets)."""
    patients = list(iter_patients(path))
    return PatientSet.of((p for p, _ in patients), (p for p, whole in patients if whole))


def member_issues(path: str) -> Iterator[BadRecord]:
    """The unresolved members of a patients file, as bad records for the manifest's `error[]`."""
    for line in _lines(path):
        if "issue" in line:
            issue = MemberIssue(**line["issue"])
            yield BadRecord(
                Origin(f"Group/{issue.group_id}", -1),
                issue.index,
                f"member not resolved: {issue.reason}",
                "Group",
                code="not-found",
                location=f"Group/{issue.group_id}.member[{issue.index}]" if issue.index >= 0 else f"Group/{issue.group_id}",
            )


class ReadPatients(beam.PTransform):
    """Reads a patients file: tag `patients` holds one `PatientSet` (for a side input) or,
    with `as_set=False`, one `(id, whole)` per patient (for a join); tag `issues` its member issues."""

    def __init__(self, path: str, as_set: bool = True):
        super().__init__()
        self._path = path
        self._as_set = as_set

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        return (
            pbegin
            | "Path" >> beam.Create([self._path])
            | "Load" >> beam.ParDo(_LoadFn(self._as_set)).with_outputs("issues", main="patients")
        )


class _LoadFn(beam.DoFn):
    def __init__(self, as_set: bool):
        self._as_set = as_set

    def process(self, path: str) -> Iterator:
        if self._as_set:
            yield read_patient_set(path)
        else:
            yield from iter_patients(path)
        for record in member_issues(path):
            yield beam.pvalue.TaggedOutput("issues", record)
