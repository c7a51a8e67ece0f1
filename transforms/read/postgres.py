"""A PostgreSQL table (or view) of resource records as a source: `postgresql://user@host:port/db?table=NAME`.

Rows have the documented columns `resource_type`, `id`, `version_id`,
`last_updated` (timestamptz), `deleted` (boolean) and `resource` (jsonb or
text). A table keeps one row per resource, or, with `&history=true`, every
version: then the latest version at or before `transactionTime` is the
resource, and a latest version marked deleted is a deletion.

Reads are planned as ranges (`PgRange`): one resource type and a key range of
`id`, sized from the planner's row estimate and cut at `id` quantiles, each
read through a server-side cursor. `_type`, `_since`, `_until` and
`transactionTime` are SQL predicates. Every reader joins the launcher's
exported snapshot (`SET TRANSACTION SNAPSHOT`), so the export is one consistent
view however long it runs. Rows become the same batches as an Avro or Parquet
file's (`transforms.read.columnar.to_resources`); a bad row's error names the
table and its key. The URL and connections are `transforms.storage.pg_source`'s.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
from typing import Iterable, Iterator, NamedTuple, Optional

from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.references import FHIR_ID
from transforms.fhir.window import LATE, UpdatedAfterTransaction
from transforms.read.columnar import Item, to_resources
from transforms.read.pushdown import ReadSelection, read_types
from transforms.records import RECORDS, BadRecord, Origin, Resource, ResourceBatch
from transforms.storage.pg_source import PgSource, ReadAt, begin, connect, parse_source

# A range's rows per `chunk_bytes` of a file source: 4 MiB chunks make ranges of 16,384 rows.
BYTES_PER_ROW = 256
FETCH_ROWS = 5000  # rows per round trip to the server
FIRST_FETCH_ROWS = 500
# `resource` arrives as bytes: a jsonb value's text through `_raw_jsonb()`, a text column's converted by the server;
# `last_updated` as a FHIR instant, rendered by the server (which has the time to spare; Python's is slower).
_INSTANT = """to_char(last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_COLUMNS = "resource_type, id, " + _INSTANT + ", deleted, {resource}"
# For jsonb: the server's word that the row's JSON is an object whose resourceType and id equal the columns.
_CHECKED = ("coalesce(jsonb_typeof(resource) = 'object' AND resource->>'resourceType' = resource_type"
            " AND resource->>'id' = id, false)")
_LIVE, _GONE = "NOT coalesce(deleted, false)", "coalesce(deleted, false)"


class PgRange(NamedTuple):
    """A unit of reading: the rows of one resource type (None: rows without one) with `lo <= id < hi`
    (None: unbounded; the first range also holds the rows without an id)."""

    source: str
    resource_type: Optional[str]
    lo: Optional[str]
    hi: Optional[str]
    live: bool  # read the live rows (the type is selected)
    deleted: bool  # read the deletions (the type's deletions are selected)
    has_ctid: bool = True  # a table (its rows' ctid locates a bad row); False for a view
    jsonb: bool = False  # `resource` is jsonb: the server checks its type and id (`_CHECKED`)


def plan_ranges(source: str, selection: Optional[ReadSelection], deletions: Optional[ReadSelection],
                at: ReadAt, chunk_bytes: int) -> Iterator[PgRange]:
    """The ranges to read: per selected type, key ranges of about `chunk_bytes / BYTES_PER_ROW` rows each."""
    pg = parse_source(source)
    rows_per_range = max(1, chunk_bytes // BYTES_PER_ROW)
    with connect(pg) as conn:
        begin(conn, at)
        has_ctid, jsonb = _is_table(conn, pg), _is_jsonb(conn, pg)
        for resource_type in _types(conn, pg, selection, deletions):
            live = selection is None or selection.types is None or resource_type in selection.types
            gone = deletions is not None and (deletions.types is None or resource_type in deletions.types)
            if not (live or gone):
                continue
            cuts = _cuts(conn, pg, resource_type, rows_per_range) if resource_type is not None else []
            for lo, hi in zip([None, *cuts], [*cuts, None]):
                yield PgRange(source, resource_type, lo, hi, live, gone, has_ctid, jsonb)


def _is_table(conn, pg: PgSource) -> bool:
    kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", (pg.table,)).fetchone()
    return kind is not None and kind[0] in ("r", "p", "m")


def _is_jsonb(conn, pg: PgSource) -> bool:
    kind = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                        " WHERE attrelid = %s::regclass AND attname = 'resource'", (pg.table,)).fetchone()
    return kind is not None and kind[0] == "jsonb"


def unique_resources(source: str) -> bool:
    """True when the source cannot hold two rows of one resource: a history table (its latest version is
    read) or a table with a unique index on exactly (resource_type, id)."""
    pg = parse_source(source)
    if pg.history:
        return True
    with connect(pg) as conn:
        (unique,) = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = %s::regclass AND i.indisunique"
            " AND i.indpred IS NULL AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a"
            " WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)) = ARRAY['id', 'resource_type'])",
            (pg.table,)).fetchone()
    return unique


def _types(conn, pg: PgSource, selection, deletions) -> list[Optional[str]]:
    wanted = read_types(selection, deletions)
    if wanted is not None:
        return sorted(wanted)
    # Every type in the table: a loose index scan on (resource_type, ...) when there is one.
    rows = conn.execute(
        f"WITH RECURSIVE t(v) AS (SELECT min(resource_type) FROM {pg.table} UNION ALL"
        f" SELECT (SELECT min(resource_type) FROM {pg.table} WHERE resource_type > t.v) FROM t WHERE t.v IS NOT NULL)"
        " SELECT v FROM t WHERE v IS NOT NULL").fetchall()
    # A type that is not R4, and rows without a type, are read too, so they are reported as bad records.
    return [row[0] for row in rows] + [None]


def _cuts(conn, pg: PgSource, resource_type: str, rows_per_range: int) -> list[str]:
    """`id` values cutting a type's rows into ranges of about `rows_per_range`, from the planner's estimate."""
    plan = conn.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {pg.table} WHERE resource_type = %s",
                        (resource_type,)).fetchone()[0]
    estimate = plan[0]["Plan"]["Plan Rows"]
    ranges = math.ceil(estimate / rows_per_range)
    if ranges <= 1:
        return []
    fractions = [k / ranges for k in range(1, ranges)]
    cuts = conn.execute(
        f"SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY id) FROM {pg.table} WHERE resource_type = %s",
        (fractions, resource_type)).fetchone()[0] or []
    return sorted({c for c in cuts if c is not None})


def range_query(pg: PgSource, rng: PgRange, selection: Optional[ReadSelection],
                deletions: Optional[ReadSelection], at: ReadAt) -> tuple[str, list]:
    """The SQL (and its parameters) that reads one range, with every predicate pushed down."""
    keys, params = _keys(rng)
    keys.append("(last_updated <= %s OR last_updated IS NULL)")
    params.append(at.transaction_time)
    kinds, kind_params = [], []
    for wanted, chosen, flag in ((rng.live, selection, _LIVE), (rng.deleted, deletions, _GONE)):
        if not wanted:
            continue
        bounds, bound_params = _window(chosen)
        kinds.append(f"({flag}{bounds})")
        kind_params += bound_params
    which = " OR ".join(kinds) or "false"
    columns = _COLUMNS.format(resource="resource" if rng.jsonb else "convert_to(resource::text, 'UTF8')")
    ctid = (", ctid::text" if rng.has_ctid else ", NULL::text") + (f", {_CHECKED}" if rng.jsonb else ", false")
    if not pg.history:
        return (f"SELECT {columns}{ctid} FROM {pg.table} WHERE {' AND '.join(keys)} AND ({which})",
                params + kind_params)
    latest = (f"SELECT DISTINCT ON (id) * FROM {pg.table} WHERE {' AND '.join(keys)}"
              " ORDER BY id, last_updated DESC NULLS LAST, version_id DESC NULLS LAST")
    ctid = ctid.replace("ctid::text", "NULL::text")  # a row of a subquery has none
    return f"SELECT {columns}{ctid} FROM ({latest}) latest WHERE {which}", params + kind_params


def late_query(pg: PgSource, rng: PgRange, at: ReadAt) -> Optional[tuple[str, list]]:
    """The SQL listing the keys of the range's rows written after `transactionTime`, which `range_query`
    leaves out (the next run exports them): reported, never read. None for a history table (its later
    versions are not the resource at `transactionTime`). The recommended index serves it."""
    if pg.history:
        return None
    keys, params = _keys(rng)
    flags = [flag for wanted, flag in ((rng.live, _LIVE), (rng.deleted, _GONE)) if wanted] or ["false"]
    ctid = "ctid::text" if rng.has_ctid else "NULL::text"
    return (f"SELECT resource_type, id, {ctid} FROM {pg.table} WHERE {' AND '.join(keys)} AND last_updated > %s"
            f" AND ({' OR '.join(flags)})", params + [at.transaction_time])


def _keys(rng: PgRange) -> tuple[list[str], list]:
    """The range's type and `id` bounds as predicates."""
    keys, params = ["resource_type = %s"], [rng.resource_type]
    if rng.resource_type is None:
        keys, params = ["resource_type IS NULL"], []
    if rng.lo is not None:
        keys.append("id >= %s")
        params.append(rng.lo)
    if rng.hi is not None:
        keys.append("(id < %s OR id IS NULL)" if rng.lo is None else "id < %s")
        params.append(rng.hi)
    return keys, params


def _window(chosen: Optional[ReadSelection]) -> tuple[str, list]:
    """`_since` and `_until` as predicates (a row without `last_updated` is judged later, by its body)."""
    if chosen is None or chosen.window is None:
        return "", []
    since, until = chosen.window.since_until
    text, params = "", []
    if since:
        text += " AND (last_updated > %s OR last_updated IS NULL)"
        params.append(since)
    if until:
        text += " AND (last_updated < %s OR last_updated IS NULL)"
        params.append(until)
    return text, params


def read_range(rng: PgRange, selection: Optional[ReadSelection], deletions: Optional[ReadSelection],
               at: ReadAt, batch_size: int) -> Iterator[Item]:
    """Reads one range in the export's snapshot as `ResourceBatch`es, `Deletions` and `BadRecord`s."""
    pg = parse_source(rng.source)
    sql, params = range_query(pg, rng, selection, deletions, at)
    origin = Origin(pg.display, RECORDS)
    first = 0
    # Without parsing: rows the server checked, placed in time by their column, when nothing reads bodies.
    fast = rng.jsonb and selection is not None and not selection.keep_bodies
    with connect(pg) as conn:
        begin(conn, at)
        with conn.cursor(name="bulk_export_range", binary=True) as cursor:
            cursor.adapters.register_loader("jsonb", _raw_jsonb())
            cursor.execute(sql, params)
            for fetched in _fetched(cursor):
                for start in range(0, len(fetched), batch_size):
                    rows = fetched[start:start + batch_size]
                    positions = None  # the rows to parse, once the trusted ones are taken out
                    if fast:
                        trusted, positions = _trusted(origin, first, rows)
                        if trusted.resources:
                            yield trusted
                    if positions is None or positions:
                        yield from _parsed(pg, origin, first, rows, positions)
                    first += batch_size
        yield from _late(conn, pg, rng, at, origin, first)


def _late(conn, pg: PgSource, rng: PgRange, at: ReadAt, origin: Origin, first: int) -> Iterator[BadRecord]:
    """An `information` notice for each row of the range written after `transactionTime`, by its key."""
    late = late_query(pg, rng, at)
    if late is None:
        return
    for index, (resource_type, rid, ctid) in enumerate(conn.execute(*late), first):
        yield BadRecord(origin, index, f"last_updated column: {LATE}", resource_type if type(resource_type) is str
                        else None, code=UpdatedAfterTransaction.code, location=_location(pg, resource_type, rid, ctid),
                        severity=UpdatedAfterTransaction.severity)


def located(rng: PgRange, items: Iterable) -> Iterator:
    """`items` with each bad record the selection made (it has no location: placed by its body's
    `meta.lastUpdated`) located by the table's key, as the reader locates its own."""
    pg = parse_source(rng.source)
    for item in items:
        if type(item) is BadRecord and item.location is None:
            item = item._replace(location=_location(pg, item.resource_type, item.resource_id, None))
        yield item


@functools.cache
def _raw_jsonb() -> type:
    """A psycopg loader of a jsonb value (binary: a version byte, then its text) as that text's bytes,
    unparsed; made on first use, so that an export of files never imports psycopg (0.1 s)."""
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    class _RawJsonb(Loader):
        format = Format.BINARY

        def load(self, data) -> bytes:
            if data[:1] != b"\x01":
                raise ValueError("unknown jsonb binary version")
            return bytes(data[1:])

    return _RawJsonb


def _trusted(origin: Origin, first: int, rows: list[tuple]) -> tuple[ResourceBatch, list[int]]:
    """The rows that need no parse, as a batch (their bytes as PostgreSQL renders them, a body of just
    their type and id), and the positions of the others. Indexes count from `first` over `rows`."""
    kept, rest, known = [], [], RESOURCE_TYPES
    for position, row in enumerate(rows):
        resource_type, rid, moment, deleted, raw, _, checked = row
        if checked and moment is not None and not deleted and resource_type in known:
            body = {"resourceType": resource_type, "id": rid}
            kept.append(Resource(resource_type, raw, body, first + position, moment))
        else:
            rest.append(position)
    return ResourceBatch(origin, kept), rest


def _parsed(pg: PgSource, origin: Origin, first: int, rows: list[tuple], positions: Optional[list[int]]) -> Iterator:
    """`to_resources` over the rows (numbered from `first`) at `positions` (None: all), each bad one
    located by the table's key."""
    chosen = rows if positions is None else [rows[p] for p in positions]
    indexes = None if positions is None else [first + p for p in positions]
    types, ids, moments, deleted, resources, _, _ = map(list, zip(*chosen))
    for item in to_resources(origin, first, (types, ids, moments, deleted, resources), indexes):
        if type(item) is BadRecord:
            resource_type, rid, _, _, _, ctid, _ = rows[item.index - first]
            item = item._replace(location=_location(pg, resource_type, rid, ctid))
        yield item


def _fetched(cursor) -> Iterator[list]:
    """The cursor's rows, `FETCH_ROWS` at a time, fetched by a thread one step ahead of the caller, so
    the server's work (rendering rows) and this process's (parsing them) overlap."""
    chunks: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def fetch() -> None:
        try:
            size = FIRST_FETCH_ROWS  # the first rows come quickly, so the range's work starts at once
            while not stop.is_set():
                rows = cursor.fetchmany(size)
                size = FETCH_ROWS
                chunks.put(rows)
                if not rows:
                    return
        except BaseException as exc:  # noqa: BLE001 (handed to the reader, which raises it)
            chunks.put(exc)

    thread = threading.Thread(target=fetch, name="bulk-export-fetch", daemon=True)
    thread.start()
    try:
        while True:
            rows = chunks.get()
            if isinstance(rows, BaseException):
                raise rows
            if not rows:
                return
            yield rows
    finally:  # the cursor is closed next: its fetching thread must be done with it
        stop.set()
        while thread.is_alive():
            try:
                chunks.get_nowait()
            except queue.Empty:
                pass
            thread.join(0.05)


def _location(pg: PgSource, resource_type: object, rid: object, ctid: Optional[str]) -> str:
    """Where a bad row is: the table and its key (`resource_type`, `id`), or its `ctid` when the key
    holds something that is not a type and an id (never quoted); a view's row has no ctid."""
    if resource_type in RESOURCE_TYPES and type(rid) is str and FHIR_ID.match(rid):
        return f"{pg.display} row resource_type={resource_type} id={rid}"
    kind = f"resource_type={resource_type}" if resource_type in RESOURCE_TYPES else "a resource_type that is not R4"
    where = f"ctid={ctid}" if ctid else "in a view (no ctid)"
    return f"{pg.display} row {where} ({kind}, an id that is not a FHIR id)"


