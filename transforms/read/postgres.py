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
table and its key. The URL and connections are `transforms.read.pg_source`'s.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Optional

from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.references import FHIR_ID
from transforms.read.columnar import Item, to_resources
from transforms.read.pg_source import PgSource, ReadAt, begin, connect, parse_source
from transforms.read.pushdown import ReadSelection
from transforms.records import RECORDS, BadRecord, Origin

# A range's rows per `chunk_bytes` of a file source: 4 MiB chunks make ranges of 16,384 rows.
BYTES_PER_ROW = 256
_INSTANT = """to_char(last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
_COLUMNS = f"resource_type, id, {_INSTANT}, deleted, convert_to(resource::text, 'UTF8')"


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


def plan_ranges(source: str, selection: Optional[ReadSelection], deletions: Optional[ReadSelection],
                at: ReadAt, chunk_bytes: int) -> Iterator[PgRange]:
    """The ranges to read: per selected type, key ranges of about `chunk_bytes / BYTES_PER_ROW` rows each."""
    pg = parse_source(source)
    rows_per_range = max(1, chunk_bytes // BYTES_PER_ROW)
    with connect(pg) as conn:
        begin(conn, at)
        has_ctid = _is_table(conn, pg)
        for resource_type in _types(conn, pg, selection, deletions):
            live = selection is None or selection.types is None or resource_type in selection.types
            gone = deletions is not None and (deletions.types is None or resource_type in deletions.types)
            if not (live or gone):
                continue
            cuts = _cuts(conn, pg, resource_type, rows_per_range) if resource_type is not None else []
            for lo, hi in zip([None, *cuts], [*cuts, None]):
                yield PgRange(source, resource_type, lo, hi, live, gone, has_ctid)


def _is_table(conn, pg: PgSource) -> bool:
    kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = %s::regclass", (pg.table,)).fetchone()
    return kind is not None and kind[0] in ("r", "p", "m")


def _types(conn, pg: PgSource, selection, deletions) -> list[str]:
    wanted = [s.types for s in (selection, deletions) if s is not None]
    if wanted and all(types is not None for types in wanted):
        return sorted(set().union(*wanted))
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
    keys, params = ["resource_type = %s"], [rng.resource_type]
    if rng.resource_type is None:
        keys, params = ["resource_type IS NULL"], []
    if rng.lo is not None:
        keys.append("id >= %s")
        params.append(rng.lo)
    if rng.hi is not None:
        keys.append("(id < %s OR id IS NULL)" if rng.lo is None else "id < %s")
        params.append(rng.hi)
    keys.append("(last_updated <= %s OR last_updated IS NULL)")
    params.append(at.transaction_time)
    kinds, kind_params = [], []
    for wanted, chosen, flag in ((rng.live, selection, "NOT coalesce(deleted, false)"),
                                 (rng.deleted, deletions, "coalesce(deleted, false)")):
        if not wanted:
            continue
        bounds, bound_params = _window(chosen)
        kinds.append(f"({flag}{bounds})")
        kind_params += bound_params
    which = " OR ".join(kinds) or "false"
    ctid = ", ctid::text" if rng.has_ctid else ", NULL::text"
    if not pg.history:
        return (f"SELECT {_COLUMNS}{ctid} FROM {pg.table} WHERE {' AND '.join(keys)} AND ({which})",
                params + kind_params)
    latest = (f"SELECT DISTINCT ON (id) *{ctid} AS row_ctid FROM {pg.table} WHERE {' AND '.join(keys)}"
              " ORDER BY id, last_updated DESC NULLS LAST, version_id DESC NULLS LAST")
    return f"SELECT {_COLUMNS}, row_ctid FROM ({latest}) latest WHERE {which}", params + kind_params


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
    with connect(pg) as conn:
        begin(conn, at)
        with conn.cursor(name="bulk_export_range", binary=True) as cursor:
            cursor.itersize = max(batch_size, 2000)
            cursor.execute(sql, params)
            while True:
                rows = cursor.fetchmany(batch_size)
                if not rows:
                    return
                types, ids, moments, deleted, resources, ctids = map(list, zip(*rows))
                for item in to_resources(origin, first, (types, ids, moments, deleted, resources)):
                    if type(item) is BadRecord:
                        row = item.index - first
                        item = item._replace(location=_location(pg, types[row], ids[row], ctids[row]))
                    yield item
                first += len(rows)


def _location(pg: PgSource, resource_type: object, rid: object, ctid: Optional[str]) -> str:
    """Where a bad row is: the table and its key (`resource_type`, `id`), or its `ctid` when the key
    holds something that is not a type and an id (never quoted); a view's row has no ctid."""
    if resource_type in RESOURCE_TYPES and type(rid) is str and FHIR_ID.match(rid):
        return f"{pg.display} row resource_type={resource_type} id={rid}"
    kind = f"resource_type={resource_type}" if resource_type in RESOURCE_TYPES else "a resource_type that is not R4"
    where = f"ctid={ctid}" if ctid else "in a view (no ctid)"
    return f"{pg.display} row {where} ({kind}, an id that is not a FHIR id)"


