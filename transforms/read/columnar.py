"""Avro and Parquet sources: resource records read in batches into the NDJSON path's batches.

A Parquet file is read one row group per chunk (`pyarrow.parquet.ParquetFile.
iter_batches`), an Avro file whole, record blocks at a time (fastavro). Each
Arrow batch or run of Avro records becomes one `ResourceBatch`, so everything
downstream is the same as for NDJSON. A row's `raw` bytes are its `resource`
string's UTF-8 bytes, unchanged, unless that JSON spans lines: an NDJSON part
needs one line per resource, so such a resource is written as compact JSON.
"""

from __future__ import annotations

import itertools
from typing import IO, Iterator, Optional, Sequence, Union

import fastavro
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transforms.fhir.deleted import deleted_body
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.record_schema import (
    TIMESTAMP,
    arrow_schema_of_avro,
    instant_texts,
    record_id,
    schema_problem,
)
from transforms.read.avro_blocks import range_stream
from transforms.read.bundles import WHOLE
from transforms.read.ndjson import json_error, to_resource
from transforms.records import RECORDS, BadRecord, Deletions, Origin, Resource, ResourceBatch
from transforms.storage.source_formats import PARQUET

_ROW_FIELDS = ("resourceType", "id", "lastUpdated", "deleted", "resource")

# resourceType, id, lastUpdated (FHIR instants), deleted, resource (bytes): one list each
Columns = tuple[list, list, list, list, list]
Item = Union[ResourceBatch, Deletions, BadRecord]


class UnreadableFile(OSError):
    """A file that is not the Avro or Parquet file it should be (corrupt, truncated)."""


def parquet_row_groups(f: IO[bytes]) -> int:
    """How many row groups a Parquet file has (reads its footer only)."""
    return _parquet_file(f).metadata.num_row_groups


def read_columnar(kind: str, path: str, f: IO[bytes], start: int, end: int, batch_size: int,
                  types: Optional[frozenset[str]] = None, first: int = 0) -> Iterator[Item]:
    """Reads row groups [start, end) of a Parquet file, or bytes [start, end) of an Avro file (whole
    blocks, `first` records after its start; `end` -1: the whole file), as batches and bad records.

    With `types`, only rows whose `resourceType` is one of them are read further than that column:
    a Parquet row group whose statistics exclude them all is skipped, other rows are dropped
    before their `resource` leaves Arrow, and an Avro record is dropped before its JSON is parsed.
    """
    if kind == PARQUET:
        return _read_parquet(path, f, start, end, batch_size, types)
    if end >= 0:
        f = range_stream(f, start, end)
    return _read_avro(path, f, batch_size, types, first)


def _parquet_file(f: IO[bytes]) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(f)
    except (pa.ArrowException, ValueError) as exc:
        raise UnreadableFile(f"not a readable Parquet file ({exc})") from exc


def _read_parquet(path: str, f: IO[bytes], start: int, end: int, batch_size: int,
                  types: Optional[frozenset[str]] = None) -> Iterator[Item]:
    parquet = _parquet_file(f)
    origin = Origin(path, RECORDS)
    problem = schema_problem(parquet.schema_arrow)
    if problem:
        if start == 0:  # one error per file, not one per row group
            yield BadRecord(origin, WHOLE, f"Parquet file {problem}")
        return
    metadata = parquet.metadata
    first = sum(metadata.row_group(g).num_rows for g in range(start))
    columns = [name for name in _ROW_FIELDS if name in parquet.schema_arrow.names]
    wanted = pa.array(sorted(types), pa.string()) if types is not None else None
    try:
        for group in range(start, min(end, metadata.num_row_groups)):
            if wanted is not None and not _may_hold(metadata.row_group(group), parquet.schema_arrow, types):
                first += metadata.row_group(group).num_rows
                continue
            for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns):
                rows, indexes = batch.num_rows, None
                if wanted is not None:
                    mask = pc.is_in(batch.column("resourceType"), value_set=wanted)
                    indexes = [first + i for i in pc.indices_nonzero(mask).to_pylist()]
                    if len(indexes) < rows:
                        batch = batch.filter(mask)
                    else:
                        indexes = None
                if batch.num_rows:
                    yield from to_resources(origin, first, _arrow_columns(batch), indexes)
                first += rows
    except pa.ArrowInvalid as exc:
        raise UnreadableFile(f"corrupt Parquet data ({exc})") from exc


def _may_hold(group: pq.RowGroupMetaData, schema: pa.Schema, types: frozenset[str]) -> bool:
    """False when the row group's `resourceType` statistics (min and max) exclude every type of `types`."""
    stats = group.column(schema.get_field_index("resourceType")).statistics
    if stats is None or not stats.has_min_max:
        return True
    low, high = stats.min, stats.max
    if isinstance(low, bytes):
        low, high = low.decode("utf-8", "replace"), high.decode("utf-8", "replace")
    return any(low <= name <= high for name in types)


def _arrow_columns(batch: pa.RecordBatch) -> Columns:
    """The record columns of an Arrow batch as lists: `lastUpdated` as instants, `resource` as bytes."""
    names, n = batch.schema.names, batch.num_rows
    column = batch.column
    resource = column("resource")
    resource = resource.cast(pa.large_binary() if pa.types.is_large_string(resource.type) else pa.binary())
    return (
        column("resourceType").to_pylist(),
        column("id").to_pylist(),
        instant_texts(column("lastUpdated")) if "lastUpdated" in names else [None] * n,
        column("deleted").to_pylist() if "deleted" in names else [None] * n,
        resource.to_pylist(),
    )


def _read_avro(path: str, f: IO[bytes], batch_size: int, types: Optional[frozenset[str]] = None,
               start: int = 0) -> Iterator[Item]:
    """Reads an Avro file (or one range of its blocks, `start` records into it) as batches and bad records."""
    origin = Origin(path, RECORDS)
    try:
        reader = fastavro.reader(f)
    except Exception as exc:  # fastavro reports a bad header as KeyError, ValueError, EOFError...
        raise UnreadableFile(f"not a readable Avro file ({exc})") from exc
    problem = schema_problem(arrow_schema_of_avro(reader.writer_schema))
    if problem:
        if start == 0:  # one error per file, not one per range
            yield BadRecord(origin, WHOLE, f"Avro file {problem}")
        return
    records = iter(reader)
    for first in itertools.count(start, batch_size):
        try:
            chunk = list(itertools.islice(records, batch_size))
        except Exception as exc:  # a truncated or corrupt block: IndexError, EOFError, ValueError, zlib.error...
            raise UnreadableFile(f"corrupt Avro data ({type(exc).__name__}: {exc})") from exc
        if not chunk:
            return
        if types is None:
            yield from to_resources(origin, first, _avro_columns(chunk))
            continue
        kept = [n for n, record in enumerate(chunk) if record["resourceType"] in types]
        if kept:
            yield from to_resources(origin, first, _avro_columns([chunk[n] for n in kept]), [first + n for n in kept])


def _avro_columns(records: list[dict]) -> Columns:
    moments = [r.get("lastUpdated") for r in records]
    return (
        [r["resourceType"] for r in records],
        [r["id"] for r in records],
        instant_texts(pa.array(moments, TIMESTAMP)) if any(moments) else moments,
        [r.get("deleted") for r in records],
        [r["resource"].encode() if r["resource"] is not None else None for r in records],
    )


def to_resources(origin: Origin, first: int, columns: Columns, indexes: Optional[Sequence[int]] = None
                 ) -> Iterator[Item]:
    """Turns resource records numbered from `first` into one `ResourceBatch`, `Deletions` and `BadRecord`s.

    A record is bad when its `resource` is not an R4 resource's JSON or its
    `resourceType` or `id` column disagrees with that JSON (an empty `id` stands for
    a resource without one, as the Parquet output writes it). A record marked
    `deleted` goes to `Deletions` (`transforms.fhir.deleted.deleted_body`);
    the export lists it in `deleted[]` or leaves it out, never in `output[]`.
    `indexes`: the records' numbers, when they are not `first`, `first + 1`, ...
    """
    loads, decode_error, known = orjson.loads, orjson.JSONDecodeError, RESOURCE_TYPES
    resources: list[Resource] = []
    deletions: list[Resource] = []
    numbers = indexes if indexes is not None else itertools.count(first)
    for index, (resource_type, rid, last_updated, deleted, raw) in zip(numbers, zip(*columns)):
        if deleted:
            body = deleted_body(resource_type, rid, raw)
            if type(body) is str:
                yield BadRecord(origin, index, body, resource_type if resource_type in known else None)
            else:
                deletions.append(Resource(resource_type, b"", body, index, last_updated))
            continue
        if raw is None or resource_type is None or rid is None:
            yield BadRecord(origin, index, "has a null resourceType, id or resource column")
            continue
        try:
            body = loads(raw)
        except decode_error as exc:
            yield BadRecord(origin, index, json_error(exc, "resource column: not valid JSON"))
            continue
        # The common case costs a few lookups; anything else is explained on the slow path.
        if type(body) is dict and body.get("resourceType") == resource_type and resource_type in known:
            if record_id(body) != rid:
                yield BadRecord(origin, index, "id column disagrees with the resource's id", resource_type)
                continue
            if b"\n" in raw or b"\r" in raw:
                raw = orjson.dumps(body)
            resources.append(Resource(resource_type, raw, body, index, last_updated))
            continue
        parsed = to_resource(body, raw, index, origin)
        if type(parsed) is BadRecord:
            yield parsed._replace(reason=f"resource column: {parsed.reason}")
        else:
            # Neither value is named: the column may hold anything.
            yield BadRecord(origin, index, "resourceType column disagrees with the resource's resourceType")
    if resources:
        yield ResourceBatch(origin, resources)
    if deletions:
        yield Deletions(ResourceBatch(origin, deletions))
