"""Test helpers for columnar sources and Parquet parts: converting NDJSON, running exports, reading parts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import fastavro
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline

from pipelines.export import ExportJob, ExportSettings, build_pipeline
from pipelines.models import ExportRequest
from pipelines.options import LOCAL_RUNNER
from transforms.fhir.record_schema import RECORD_SCHEMA, load_avro_schema, record_columns, record_table
from transforms.read.ndjson import parse_lines, span_texts
from transforms.records import Origin, Resource, ResourceBatch
from transforms.storage.source_formats import PARQUET

TX = "2030-01-01T00:00:00Z"


def write_records(path: str, kind: str, resources: Sequence[Resource], rows_per_group: int = 10_000) -> None:
    """Writes resources as an Avro or Parquet file of resource records."""
    if kind == PARQUET:
        pq.write_table(record_table(resources), path, row_group_size=rows_per_group)
        return
    columns = record_columns(resources)
    columns["resource"] = [raw.decode() for raw in columns["resource"]]
    records = [dict(zip(columns, values)) for values in zip(*columns.values())]
    with open(path, "wb") as f:
        fastavro.writer(f, fastavro.parse_schema(load_avro_schema()), records)


def convert_ndjson(source: str, dest: str, kind: str, rows_per_group: int = 10_000) -> int:
    """Writes the resources of a local NDJSON file as an Avro or Parquet file; returns how many.
    Lines that are not resources are left out."""
    with open(source, "rb") as f:
        texts = span_texts(f, 0, None)
        items = parse_lines(texts, Origin(source, next(texts)), batch_size=1 << 62)
        resources = [r for item in items if type(item) is ResourceBatch for r in item.resources]
    write_records(dest, kind, resources, rows_per_group)
    return len(resources)


def columnar_copy(ndjson_dir: Path, out: Path, kind: str, rows_per_group: int = 64) -> Path:
    """Writes every NDJSON file of a folder as an Avro or Parquet file of the same resources."""
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(ndjson_dir.glob("*.ndjson")):
        convert_ndjson(str(path), str(out / f"{path.stem}.{kind}"), kind, rows_per_group)
    return out


def run_export(source: Path, out: Path, request: ExportRequest, **settings) -> dict:
    """Runs `build_pipeline` on the embedded runner; returns the manifest."""
    job = ExportJob("job", TX, ExportSettings(source=str(source), output=str(out), **settings))
    pipeline = TestPipeline(runner=LOCAL_RUNNER)
    build_pipeline(pipeline, request, job)
    pipeline.run().wait_until_finish()
    return orjson.loads(Path(job.job_dir, "manifest.json").read_bytes())


def file_of(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def part_lines(path: Path) -> list[bytes]:
    """The resources of an NDJSON part as lines, or of a Parquet part as its `resource` column's bytes."""
    if path.suffix == ".parquet":
        return [text.encode() for text in pq.read_table(path, columns=["resource"]).column(0).to_pylist()]
    return path.read_bytes().splitlines()


def exported(manifest: dict) -> dict[str, Counter]:
    """Resource bytes per type over a manifest's output files, checking each count."""
    found: dict[str, Counter] = {}
    for entry in manifest["output"]:
        lines = part_lines(file_of(entry["url"]))
        assert len(lines) == entry["count"], entry
        found.setdefault(entry["type"], Counter()).update(lines)
    return found


def write_rows(kind: str, path, rows: list[dict], rows_per_group: int = 3, schema=RECORD_SCHEMA,
               sync_interval: int = 64, codec: str = "null") -> str:
    """Writes record rows as given (bad ones included) in the documented schema (Avro: in blocks of
    about `sync_interval` bytes before `codec` compresses them)."""
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=rows_per_group)
    else:
        with open(path, "wb") as f:
            fastavro.writer(f, fastavro.parse_schema(load_avro_schema()), rows, codec, sync_interval)
    return str(path)


def record_row(rtype: str, rid, resource, last_updated=None, deleted=None) -> dict:
    """One resource record; `resource` as a dict, a string (kept as is) or None."""
    text = resource if isinstance(resource, str) or resource is None else orjson.dumps(resource).decode()
    return {"resourceType": rtype, "id": rid, "lastUpdated": last_updated, "versionId": None,
            "deleted": deleted, "resource": text}
