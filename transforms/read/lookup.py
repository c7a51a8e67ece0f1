"""Kickoff-time lookups in a small source: every Patient id and every Group, without a pipeline.

Where the source is small enough (`launcher.kickoff.patients`), a Patient- or
Group-level kickoff is refused before a job exists when its Group or `patient`
is not in the source, so the launcher scans the source once for those two
types, with the pipeline's own chunk reader: NDJSON lines are screened with a
byte search before any JSON is parsed (Patients and Groups are a small share of
a typical export). The index itself (`transforms.fhir.membership`) is the one
the pipeline builds for larger sources.
"""

from __future__ import annotations

from typing import Iterator

from transforms.fhir.compartment import PATIENT
from transforms.fhir.group import GROUP
from transforms.fhir.membership import IndexBuilder, SourceIndex
from transforms.read.chunks import plan_chunks
from transforms.read.pushdown import ReadSelection
from transforms.read.resources import read_chunk
from transforms.storage.source_formats import AUTO

# What a membership index reads: NDJSON lines that name neither type are skipped unparsed
# (`ReadSelection.screen`); `ResolvePatients` reads the same in the pipeline.
PATIENTS_AND_GROUPS = ReadSelection.of((PATIENT, GROUP))
_WHOLE_FILES = 1 << 62  # plan one chunk per file


def index_source(source: str, source_format: str = AUTO) -> SourceIndex:
    """Scans `source` for Patient ids and Group resources; raises `SourceError` if unreadable.

    Lines that are not valid resources are skipped here; the export reports them.
    """
    index = IndexBuilder()
    for resource_type, body in _patients_and_groups(source, source_format):
        index.add(resource_type, body)
    return index.build()


def _patients_and_groups(source: str, source_format: str) -> Iterator[tuple[str, dict]]:
    """Every Patient and Group of `source`, read by the pipeline's own chunk reader."""
    for chunk in plan_chunks(source, source_format, _WHOLE_FILES):
        for batch in read_chunk(chunk, batch_size=10_000, selection=PATIENTS_AND_GROUPS):
            yield from ((r.type, r.body) for r in batch.resources)
