"""Avro and Parquet sources: resource records read in batches into the NDJSON path's batches.

A Parquet file is read one row group per chunk (`pyarrow.parquet.ParquetFile.
iter_batches`), an Avro file whole, record blocks at a time (fastavro). Each
Arrow batch or run of Avro records becomes one `ResourceBatch`, so everything
downstream is the same as for NDJSON. A row's `raw` bytes are its `resource`
string's UTF-8 bytes, unchanged, unless that JSON spans lines: an NDJSON part
needs one line per resource, so such a resource is written as compact JSON.
"""

from __future__ import annotations

import io
import itertools
from typing import IO, Iterable, Iterator, Optional, Sequence, Union

import fastavro
import orjson
import pyarrow as pa
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
from transforms.read.avro_blocks import AvroHeader, BlockScreen, range_stream, read_header, rejoined
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
    a Parquet row group is skipped when its statistics or its `resourceType` column (read first, alone)
    exclude them all, and other rows are dropped before their `resource` leaves Arrow; an Avro block in
    whose bytes no selected type's name occurs is dropped undecoded (`BlockScreen`), and a decoded
    record of another type is dropped before its JSON is parsed.
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
            rows = metadata.row_group(group).num_rows
            mask = None if wanted is None else _selected_rows(parquet, group, types, wanted)
            if mask is None or mask.true_count:
                yield from _parquet_group(parquet, group, columns, batch_size, origin, first, mask)
            first += rows
    except pa.ArrowInvalid as exc:
        raise UnreadableFile(f"corrupt Parquet data ({exc})") from exc


def _selected_rows(parquet: pq.ParquetFile, group: int, types: frozenset[str], wanted: pa.Array
                   ) -> Optional[pa.BooleanArray]:
    """Which rows of a row group have one of `types`, read from its `resourceType` column alone: an empty
    mask when its statistics already exclude them all, None when every row has one."""
    if not _may_hold(parquet.metadata.row_group(group), parquet.schema_arrow, types):
        return pa.array([], pa.bool_())
    import pyarrow.compute as pc  # here: importing it costs every export 0.06 s, and few need it

    names = parquet.read_row_group(group, columns=["resourceType"]).column(0)
    mask = pc.is_in(names, value_set=wanted).combine_chunks()
    return None if mask.true_count == len(mask) else mask


def _parquet_group(parquet: pq.ParquetFile, group: int, columns: list[str], batch_size: int, origin: Origin,
                   first: int, mask: Optional[pa.BooleanArray]) -> Iterator[Item]:
    """A row group's records, numbered from `first`, in batches of `batch_size` rows; with `mask`, only
    its rows (the others dropped in Arrow, before their `resource` becomes bytes)."""
    import pyarrow.compute as pc  # see `_selected_rows`

    offset = 0  # rows of the group before `batch`
    for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns):
        rows, indexes = batch.num_rows, None
        if mask is not None:
            kept = mask.slice(offset, rows)
            if not kept.true_count:
                offset += rows
                continue
            indexes = [first + offset + i for i in pc.indices_nonzero(kept).to_pylist()]
            batch = batch.filter(kept)
        if batch.num_rows:
            yield from to_resources(origin, first + offset, _arrow_columns(batch), indexes)
        offset += rows


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
        header = read_header(f)
    except Exception as exc:  # fastavro reports a bad header as KeyError, ValueError, EOFError...
        raise UnreadableFile(f"not a readable Avro file ({exc})") from exc
    problem = schema_problem(arrow_schema_of_avro(header.schema))
    if problem:
        if start == 0:  # one error per file, not one per range
            yield BadRecord(origin, WHOLE, f"Avro file {problem}")
        return
    runs = _avro_runs(f, header, batch_size, types, start)
    while True:
        try:
            run = next(runs, None)
        except Exception as exc:  # a truncated or corrupt block: IndexError, EOFError, ValueError, zlib.error...
            raise UnreadableFile(f"corrupt Avro data ({type(exc).__name__}: {exc})") from exc
        if run is None:
            return
        first, records, numbers = run
        yield from to_resources(origin, first, _avro_columns(records), numbers)


def _avro_runs(f: IO[bytes], header: AvroHeader, batch_size: int, types: Optional[frozenset[str]],
               start: int) -> Iterator[tuple[int, list[dict], Optional[list[int]]]]:
    """The records of an Avro file whose header was read, in runs of about `batch_size`: the number of
    the first, the records, and their numbers (None: consecutive). With `types`, only those records,
    decoded from the blocks a `BlockScreen` keeps, then (when it stops early) from the rest."""
    if types is not None:
        screen = BlockScreen(f, header, types, start)
        for data, spans in screen.runs(batch_size):
            yield from _typed_run(zip(itertools.chain.from_iterable(spans), fastavro.reader(io.BytesIO(data))), types)
        start = screen.first
    records = iter(fastavro.reader(rejoined(header, f)))
    for first in itertools.count(start, batch_size):
        chunk = list(itertools.islice(records, batch_size))
        if not chunk:
            return
        if types is None:
            yield first, chunk, None
        else:
            yield from _typed_run(zip(itertools.count(first), chunk), types)


def _typed_run(numbered: Iterable[tuple[int, dict]], types: frozenset[str]
               ) -> Iterator[tuple[int, list[dict], list[int]]]:
    """The run of the numbered records of one of `types`, if there is any."""
    kept = [(number, record) for number, record in numbered if record["resourceType"] in types]
    if kept:
        yield kept[0][0], [record for _, record in kept], [number for number, _ in kept]


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
