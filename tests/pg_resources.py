"""Test helpers for the PostgreSQL source: resource tables filled from NDJSON, and SQL oracles."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path
from typing import Iterable, Optional

import orjson
import psycopg

COLUMNS = "resource_type text, id text, version_id text, last_updated timestamptz, deleted boolean"


def create_table(dsn: str, name: str = "resources", resource: str = "jsonb", history: bool = False,
                 key: bool = True) -> None:
    """A resource-record table; one row per resource (primary key), or every version with `history`;
    `key=False`: no primary key (rows without an id are allowed)."""
    key = ("" if not key else ", PRIMARY KEY (resource_type, id, version_id)" if history
           else ", PRIMARY KEY (resource_type, id)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} ({COLUMNS}, resource {resource}{key})")


def ndjson_resources(folder: Path) -> list[dict]:
    """Every resource of a folder's NDJSON files, gzip or not (a Synthea or sample-data export)."""
    paths = sorted([*folder.glob("*.ndjson"), *folder.glob("*.ndjson.gz")])
    return [orjson.loads(line) for path in paths
            for line in (gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()).splitlines()
            if line.strip()]


def last_updated(body: dict, default: dt.datetime) -> dt.datetime:
    text = (body.get("meta") or {}).get("lastUpdated")
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else default


def insert(dsn: str, resources: Iterable[dict], name: str = "resources", version: str = "1",
           deleted: bool = False, when: Optional[dt.datetime] = None) -> int:
    """Inserts resources as rows (their `meta.lastUpdated`, else `when`); returns how many."""
    when = when or dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    rows = [(r["resourceType"], r["id"], version, last_updated(r, when), deleted, orjson.dumps(r).decode())
            for r in resources]
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        columns = "resource_type, id, version_id, last_updated, deleted, resource"
        with cur.copy(f"COPY {name} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    return len(rows)


def query(dsn: str, sql: str, params: tuple = ()) -> list[tuple]:
    """The rows of one statement (none for a statement that returns none)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def source_url(dsn: str, table: str = "resources", history: bool = False) -> str:
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}table={table}" + ("&history=true" if history else "")


def exported_bodies(manifest: dict) -> dict[tuple[str, str], dict]:
    """`(type, id) -> body` over a manifest's output files, checking counts and that no key repeats."""
    found: dict[tuple[str, str], dict] = {}
    for entry in manifest["output"]:
        lines = Path(entry["url"].removeprefix("file://")).read_bytes().splitlines()
        assert len(lines) == entry["count"], entry
        for line in lines:
            body = orjson.loads(line)
            key = (body["resourceType"], body["id"])
            assert key not in found, key
            found[key] = body
    return found


def deleted_keys(manifest: dict) -> list[tuple[str, str]]:
    """`(type, id)` of every DELETE in a manifest's `deleted[]`, checking counts."""
    keys = []
    for entry in manifest["deleted"]:
        assert entry["type"] == "Bundle"
        lines = Path(entry["url"].removeprefix("file://")).read_bytes().splitlines()
        assert len(lines) == entry["count"], entry
        for line in lines:
            [item] = orjson.loads(line)["entry"]
            assert item["request"]["method"] == "DELETE"
            resource_type, rid = item["request"]["url"].split("/")
            keys.append((resource_type, rid))
    return keys
