"""Kickoff-time lookups in the source: every Patient id and every Group, without a pipeline.

A Patient- or Group-level kickoff must be refused before a job exists when its
Group or `patient` is not in the source, so the launcher scans the source once
for those two types. NDJSON lines are screened with a byte search before any
JSON is parsed (Patients and Groups are a small share of a typical export);
Bundles, Avro and Parquet files are read by the pipeline's own chunk reader.

Two Groups with one id but different content make a Group export ambiguous;
they are counted in `SourceIndex.ambiguous_groups` so that the kickoff can be
refused. Identical copies (the same Group in two Bundles) are one Group.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import orjson

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


class SourceIndex(NamedTuple):
    """What a kickoff needs to know about a source's patients and groups."""

    patient_ids: frozenset[str]
    groups: dict[str, dict]  # the first copy of each Group id
    # Group ids with copies that differ -> how many copies the source holds.
    ambiguous_groups: dict[str, int] = {}


def index_source(source: str, source_format: str = AUTO) -> SourceIndex:
    """Scans `source` for Patient ids and Group resources; raises `SourceError` if unreadable.

    Lines that are not valid resources are skipped here; the export reports them.
    """
    patient_ids: set[str] = set()
    groups: dict[str, dict] = {}
    copies: dict[str, list[dict]] = {}
    for resource_type, body in _patients_and_groups(source, source_format):
        resource_id = body.get("id")
        if type(resource_id) is not str:
            continue
        if resource_type == PATIENT:
            patient_ids.add(resource_id)
        elif resource_id in groups:
            copies.setdefault(resource_id, [groups[resource_id]]).append(body)
        else:
            groups[resource_id] = body
    ambiguous = {
        group_id: len(bodies) for group_id, bodies in copies.items() if any(b != bodies[0] for b in bodies[1:])
    }
    return SourceIndex(frozenset(patient_ids), groups, ambiguous)


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
