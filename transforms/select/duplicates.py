"""Duplicate resources: copies of one `Type/id` with different content, reported in `error[]`.

A source may hold two different resources with one type and id (two exports
merged, a resource edited in one file and not another). Which one is right
cannot be told from the data, and the write is fused with the read, so every
copy is still exported (holding bodies back until all copies are known would
shuffle them). Each copy is reported instead, as a `BadRecord` with code
`duplicate` and severity `warning` naming its own file and line (or Bundle
entry or record), so a consumer can keep the copy with the latest
`meta.lastUpdated`.

Copies with identical bytes (a shared Organization in two patients' transaction
Bundles) are one resource written twice and are not reported.

Only metadata leaves the writing step: for each exported resource its type and
id, origin path and offset, index, and a content digest (length and CRC-32 of
its bytes), appended per bundle to one run file per hash bucket of the id on
disk; the shuffle carries only `(bucket, run file)` pairs, and each bucket is
then read and checked alone, so memory does not grow with the export.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections import defaultdict
from typing import Iterable, Iterator, Optional, Union

import apache_beam as beam
import orjson

from transforms.fhir.references import ID_PATTERN
from transforms.records import BadRecord, Origin, Resource, ResourceBatch
from transforms.steps.fence import Fence
from transforms.steps.spill import SpillRecords, read_partition

BUCKETS = 32  # a bucket's keys, about 60 bytes a resource, are what one worker holds at once


class ReportDuplicates(beam.PTransform):
    """`BadRecord`s (code `duplicate`) for every copy of a `Type/id` whose copies differ.

    The keys are spilled to run files under `folder` (`transforms.steps.spill`), one per hash
    bucket of the id, so no worker holds more than a bucket's keys at once."""

    def __init__(self, folder: str, buckets: int = BUCKETS, output_root: str = "", fence: Optional[Fence] = None):
        super().__init__()
        self._folder, self._buckets, self._output_root, self._fence = folder, buckets, output_root, fence

    def expand(self, batches: Union[beam.PCollection[ResourceBatch], tuple[beam.PCollection[ResourceBatch], ...]]
               ) -> beam.PCollection[BadRecord]:
        """`batches`: one PCollection, or several whose keys are spilled where each is (never flattened)."""
        branches = batches if isinstance(batches, tuple) else (batches,)
        keyed = [branch | f"Keys{i or ''}" >> beam.ParDo(SpillRecords(
                     self._folder, functools.partial(key_records, self._buckets), self._fence,
                     output_root=self._output_root))
                 for i, branch in enumerate(branches)]
        runs = keyed[0] if len(keyed) == 1 else tuple(keyed) | "AllKeys" >> beam.Flatten()
        return (
            runs
            | "ByBucket" >> beam.GroupByKey()
            | "Copies" >> beam.FlatMap(_duplicates).with_output_types(BadRecord)
        )


_PREFIXES: dict[str, bytes] = {}


def _prefix(resource_type: str) -> bytes:
    """How a compact NDJSON line of this type starts when its `id` comes second."""
    prefix = _PREFIXES[resource_type] = b'{"resourceType":"' + resource_type.encode() + b'","id":"'
    return prefix


def resource_id(resource: Resource) -> Optional[bytes]:
    """The resource's id as UTF-8 bytes, from its parsed body or, when the read dropped it, its bytes.

    Without a body, compact JSON whose first keys are `resourceType` and `id` (as
    servers write NDJSON) gives its id without a parse; anything else is parsed.
    """
    body = resource.body
    if body is None:
        raw = resource.raw
        for prefix in (_PREFIXES.get(resource.type) or _prefix(resource.type), b'{"id":"'):
            if raw.startswith(prefix):
                start = len(prefix)
                end = raw.find(b'"', start)
                if _FHIR_ID.fullmatch(raw, start, end):
                    return raw[start:end]
                break
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    value = body.get("id") if type(body) is dict else None
    return value.encode() if type(value) is str and value else None


# A FHIR id; one that may hold an escape is read by parsing instead.
_FHIR_ID = re.compile(ID_PATTERN.encode())


def key_records(buckets: int, batch: ResourceBatch) -> dict[int, list[tuple]]:
    """Each resource with an id, by bucket: its type, id, origin, index, Bundle entry, and the length and
    CRC-32 of its bytes (never the bytes)."""
    path, offset = batch.origin
    crc32, prefixes = zlib.crc32, _PREFIXES
    by_bucket: dict[int, list[tuple]] = defaultdict(list)
    for resource in batch.resources:
        raw = resource.raw
        rid = None
        if resource.body is None:  # the common fast path of `resource_id`, inline
            prefix = prefixes.get(resource.type) or _prefix(resource.type)
            if raw.startswith(prefix):
                start = len(prefix)
                end = raw.find(b'"', start)
                if end > start and b"\\" not in raw[start:end]:
                    rid = raw[start:end]
        if rid is None:
            rid = resource_id(resource)
            if rid is None:
                continue  # resources without an id are the reader's to report
        by_bucket[crc32(rid) % buckets].append(
            (resource.type, rid, path, offset, resource.index, resource.entry, len(raw), crc32(raw)))
    return by_bucket


def _duplicates(grouped: tuple[int, Iterable[str]]) -> Iterator[BadRecord]:
    _, paths = grouped
    copies: dict[tuple[str, bytes], list[tuple]] = defaultdict(list)
    for entry in read_partition(paths):
        copies[entry[0], entry[1]].append(entry)
    for (resource_type, rid), found in copies.items():
        if len(found) < 2 or len({entry[6:] for entry in found}) < 2:
            continue
        # The reason never quotes the id; the error file names it beside the location.
        reason = (
            f"duplicate: the source holds {len(found)} copies of this {resource_type} id with different "
            "content; every copy is exported and each is reported; keep the copy with the latest meta.lastUpdated"
        )
        for _, _, path, offset, index, entry, _, _ in sorted(found, key=lambda e: (e[2:5], e[5] or -1)):
            yield BadRecord(Origin(path, offset), index, reason, resource_type, code="duplicate",
                            resource_id=rid.decode(), severity="warning", entry=entry)  # exported, but a copy must be chosen
