"""The patients an export covers: handed from the launcher as a file, or resolved in the pipeline.

For a source small enough to scan at kickoff (`launcher.kickoff.patients`), the
launcher resolves the Group or `patient` parameter and writes the result as a
patients file (`transforms.storage.patients_file`). The pipeline reads it back
where it runs (a local path or any Beam filesystem; `ReadPatients`). For a
larger source there is no file: `ResolvePatients` reads the source's Patients
and Groups and resolves them in the pipeline, by the same rule, so the
launcher never scans it. Both give the same outputs.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import apache_beam as beam

from transforms.fhir.membership import IndexBuilder, membership_of
from transforms.read.lookup import PATIENTS_AND_GROUPS
from transforms.read.resources import ReadResources
from transforms.records import ResourceBatch
from transforms.storage.patients_file import (
    issue_record,
    iter_outside,
    iter_patients,
    member_issues,
    read_patient_set,
)
from transforms.storage.pg_source import ReadAt


class ReadPatients(beam.PTransform):
    """Reads a patients file: tag `patients` holds one `PatientSet` (for a side input) or,
    with `as_set=False`, one `(id, whole)` per patient (for a join); tag `issues` its member issues;
    tag `outside`, if `outside` is not None, the source's other Patient ids: one frozenset
    (`outside=False`, for a side input) or one id each (`outside=True`, for a join)."""

    def __init__(self, path: str, as_set: bool = True, outside: Optional[bool] = None):
        super().__init__()
        self._path = path
        self._as_set = as_set
        self._outside = outside

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        return (
            pbegin
            | "Path" >> beam.Create([self._path])
            | "Load" >> beam.ParDo(_LoadFn(self._as_set, self._outside)).with_outputs(
                "issues", "outside", main="patients")
        )


class _LoadFn(beam.DoFn):
    def __init__(self, as_set: bool, outside: Optional[bool]):
        self._as_set = as_set
        self._outside = outside

    def process(self, path: str) -> Iterator:
        if self._as_set:
            yield read_patient_set(path)
        else:
            yield from iter_patients(path)
        for record in member_issues(path):
            yield beam.pvalue.TaggedOutput("issues", record)
        yield from _outside(self._outside, lambda: iter_outside(path))


class ResolvePatients(beam.PTransform):
    """Resolves, inside the pipeline, the patients a Patient or Group export covers; the same outputs as
    `ReadPatients`. Used when the launcher did not look at the source (it is too large to scan before a
    job exists): the source's Patients and Groups are read (the read's own bad lines are the main read's
    to report), indexed on one worker, and resolved; a Group or `patient` that cannot be exported fails
    the job, naming the parameter."""

    def __init__(self, scope: tuple, transaction_time: str, source: str, source_format: str, chunk_bytes: int,
                 as_set: bool = True, snapshot: str = "", outside: Optional[bool] = None):
        """`scope`: the kick-off's level ("patient" or "group"), Group id, `patient` ids and `_since`;
        `snapshot`: a PostgreSQL source's exported snapshot; `outside`: as for `ReadPatients`."""
        super().__init__()
        level, group_id, patients, since = scope
        self._resolve = _ResolveFn(level, group_id, patients, transaction_time, since, as_set, outside)
        self._read = (source, source_format, chunk_bytes, ReadAt(transaction_time, snapshot))

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        source, source_format, chunk_bytes, at = self._read
        read = pbegin | "ReadPatientsAndGroups" >> ReadResources(
            source, source_format, chunk_bytes, selection=PATIENTS_AND_GROUPS, at=at)
        return (
            read.batches
            | "Index" >> beam.CombineGlobally(_IndexFn())
            | "Resolve" >> beam.ParDo(self._resolve).with_outputs("issues", "outside", main="patients")
        )


class _IndexFn(beam.CombineFn):
    """Every Patient id and Group of the batches, as one `IndexBuilder`."""

    def create_accumulator(self) -> IndexBuilder:
        return IndexBuilder()

    def add_input(self, index: IndexBuilder, batch: ResourceBatch) -> IndexBuilder:
        for resource in batch.resources:
            if resource.body is not None:
                index.add(resource.type, resource.body)
        return index

    def merge_accumulators(self, indexes) -> IndexBuilder:
        indexes = iter(indexes)
        merged = next(indexes)
        for index in indexes:
            merged.merge(index)
        return merged

    def extract_output(self, index: IndexBuilder) -> IndexBuilder:
        return index


class _ResolveFn(beam.DoFn):
    def __init__(self, level, group_id, patients, transaction_time, since, as_set, outside=None):
        self._args = (level, group_id, tuple(patients), transaction_time, since)
        self._as_set = as_set
        self._outside = outside

    def process(self, index: IndexBuilder) -> Iterator:
        level, group_id, patients, transaction_time, since = self._args
        membership = membership_of(level, group_id, patients, index.build(), transaction_time, since)
        if self._as_set:
            yield membership.patients
        else:
            whole = membership.patients.whole
            yield from ((patient, patient in whole) for patient in sorted(membership.patients.ids))
        for issue in membership.issues:
            yield beam.pvalue.TaggedOutput("issues", issue_record(issue))
        yield from _outside(self._outside, lambda: iter(sorted(membership.outside)))


def _outside(mode: Optional[bool], ids: Callable[[], Iterator[str]]) -> Iterator[beam.pvalue.TaggedOutput]:
    """The `outside` output: nothing (None), one frozenset (False), or one id each (True)."""
    if mode is None:
        return
    if mode:
        yield from (beam.pvalue.TaggedOutput("outside", patient) for patient in ids())
    else:
        yield beam.pvalue.TaggedOutput("outside", frozenset(ids()))
