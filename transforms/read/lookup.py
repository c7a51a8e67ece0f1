"""Kickoff-time lookups in a small source: every Patient id and every Group, without a pipeline.

Where the source is small enough (`launcher.membership`), a Patient- or
Group-level kickoff is refused before a job exists when its Group or `patient`
is not in the source, so the launcher scans the source once for those two
types. NDJSON lines are screened with a byte search before any JSON is parsed
(Patients and Groups are a small share of a typical export); Bundles, Avro and
Parquet files are read by the pipeline's own chunk reader. The index itself
(`transforms.fhir.membership`) is the one the pipeline builds for larger sources.
"""

from __future__ import annotations

from typing import Iterator

import orjson

from transforms.fhir.membership import IndexBuilder, SourceIndex
from transforms.read.bundles import bundle_items
from transforms.read.chunks import open_chunk, plan_chunks
from transforms.read.ndjson import span_blocks
from transforms.read.pushdown import ReadSelection
from transforms.read.resources import read_chunk
from transforms.read.source_formats import AUTO
from transforms.records import Origin, Resource

PATIENT, GROUP = "Patient", "Group"
_MARKERS = (b'"Patient"', b'"Group"')
_WHOLE_FILES = 1 << 62  # plan one chunk per file
_NOWHERE = Origin("", 0)  # entries found here are only indexed, never reported


def index_source(source: str, source_format: str = AUTO) -> SourceIndex:
    """Scans `source` for Patient ids and Group resources; raises `SourceError` if unreadable.

    Lines that are not valid resources are skipped here; the export reports them.
    """
    index = IndexBuilder()
    for resource_type, body in _patients_and_groups(source, source_format):
        index.add(resource_type, body)
    return index.build()


_PATIENTS_AND_GROUPS = ReadSelection.of((PATIENT, GROUP))


def _patients_and_groups(source: str, source_format: str) -> Iterator[tuple[str, dict]]:
    for chunk in plan_chunks(source, source_format, _WHOLE_FILES):
        if chunk.document or chunk.columnar:
            for batch in read_chunk(chunk, batch_size=10_000, selection=_PATIENTS_AND_GROUPS):
                yield from ((r.type, r.body) for r in batch.resources)
            continue
        with open_chunk(chunk) as f:
            blocks = span_blocks(f, 0, None)
            next(blocks)
            for lines in blocks:
                yield from _screened(lines)


def _screened(lines: list[bytes]) -> Iterator[tuple[str, dict]]:
    """Parses only the lines that can be a Patient or a Group (a byte search screens them)."""
    patient_marker, group_marker = _MARKERS
    for line in lines:
        if patient_marker not in line and group_marker not in line:
            continue
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if type(body) is not dict:
            continue
        if body.get("resourceType") in (PATIENT, GROUP):
            yield body["resourceType"], body
        elif body.get("resourceType") == "Bundle":  # a Bundle on one line: the reader unpacks its entries too
            for _, item in bundle_items(body, line, 0, _NOWHERE):
                if type(item) is Resource and item.type in (PATIENT, GROUP):
                    yield item.type, item.body
