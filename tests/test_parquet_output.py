"""Parquet output (`_outputFormat=application/vnd.apache.parquet`): read back with pyarrow and
compared with the NDJSON export of the same request, and the round trip through a Parquet source."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import apache_beam as beam
import orjson
import pyarrow.parquet as pq
import pytest

from pipelines.export import part_sink
from pipelines.models import PARQUET_FORMATS, ExportRequest
from tests.columnar_data import exported, file_of, run_export
from tests.conftest import SHARED_DATA
from transforms.fhir.instant import instant_key
from transforms.fhir.record_schema import instant_texts
from transforms.records import Origin, Resource, ResourceBatch
from transforms.write.part_formats import NdjsonSink, ParquetSink, part_schema
from transforms.write.parts import WriteParts

BASE = "https://ehr.example.org/fhir"
PARQUET = PARQUET_FORMATS[0]
REQUESTS = {
    "system": dict(),
    "type_since": dict(types=("Patient", "Observation", "Encounter"), since="2019-06-01T00:00:00Z"),
}


def _request(output_format: str = "application/fhir+ndjson", **fields) -> ExportRequest:
    return ExportRequest(request_url=f"{BASE}/$export", output_format=output_format, **fields)


@pytest.mark.parametrize("fields", REQUESTS.values(), ids=REQUESTS.keys())
def test_parquet_parts_hold_the_ndjson_exports_resources(sample_dir, tmp_path, fields):
    ndjson = run_export(sample_dir, tmp_path / "ndjson", _request(**fields))
    parquet = run_export(sample_dir, tmp_path / "parquet", _request(PARQUET, **fields))
    assert exported(parquet) == exported(ndjson) != {}  # same JSON bytes per type; counts checked inside
    for entry in parquet["output"]:
        path = file_of(entry["url"])
        assert path.name.endswith(".parquet") and path.name.startswith(entry["type"] + "-")
        table = pq.read_table(path)
        assert table.num_rows == entry["count"]
        assert table.schema.equals(part_schema(entry["type"])), entry
        bodies = [orjson.loads(text) for text in table.column("resource").to_pylist()]
        assert table.column("id").to_pylist() == [b["id"] for b in bodies]
        assert set(table.column("resourceType").to_pylist()) == {entry["type"]}
        assert table.column("deleted").to_pylist() == [False] * entry["count"]
        for body, text in zip(bodies, instant_texts(table.column("lastUpdated"))):
            meta = body.get("meta", {}).get("lastUpdated")
            assert (text is None) == (meta is None) and (meta is None or instant_key(text) == instant_key(meta))
    assert [(e["type"], e["count"]) for e in parquet["output"]] == [(e["type"], e["count"]) for e in ndjson["output"]]


def test_typed_columns_are_read_from_the_resource(sample_dir, tmp_path):
    manifest = run_export(sample_dir, tmp_path, _request(PARQUET, types=("Observation", "Patient")))
    checked = Counter()
    for entry in manifest["output"]:
        table = pq.read_table(file_of(entry["url"])).to_pylist()
        for row in table:
            body = orjson.loads(row["resource"])
            if entry["type"] == "Observation":
                assert row["subject_reference"] == body["subject"]["reference"]
                assert row["effective"] == body.get("effectiveDateTime", body.get("effectivePeriod", {}).get("start"))
                assert row["code"] == body["code"]["coding"][0]["code"]
                assert row["status"] == body["status"]
            else:
                assert (row["gender"], row["birth_date"]) == (body.get("gender"), body.get("birthDate"))
            checked[entry["type"]] += 1
    assert checked["Observation"] > 100 and checked["Patient"] == 30


def _patients(n: int, pad: int) -> list[ResourceBatch]:
    bodies = [{"resourceType": "Patient", "id": f"p{i}", "text": "x" * pad} for i in range(n)]
    resources = [Resource("Patient", orjson.dumps(b), b, i) for i, b in enumerate(bodies)]
    return [ResourceBatch(Origin("mem", 0), resources[i:i + 10]) for i in range(0, n, 10)]


@pytest.mark.parametrize("sink, max_group_rows", [(ParquetSink(row_group_rows=7), 7),
                                                  (ParquetSink(row_group_bytes=3000), 3)])
def test_parts_roll_and_row_groups_are_bounded(pipeline, tmp_path, sink, max_group_rows):
    pipeline | beam.Create(_patients(45, pad=900)) | WriteParts(str(tmp_path), max_lines=20, sink=sink)
    pipeline.run()
    files = sorted(tmp_path.glob("Patient.*.parquet"))
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 45 and len(files) >= 3
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert meta.num_rows <= 20
        assert max(meta.row_group(g).num_rows for g in range(meta.num_row_groups)) <= max_group_rows


def _ndjson_with_fine_instants(folder: Path, sample_dir: Path) -> Path:
    """The sample plus resources whose meta.lastUpdated no timestamp column can hold exactly:
    up to 0.5 µs after the `type_since` case's `_since` (a column rounding them would drop them)."""
    shutil.copytree(sample_dir, folder)
    fine = [{"resourceType": "Patient", "id": f"fine{i}",
             "meta": {"lastUpdated": f"2019-06-01T02:00:00.000000{i}+02:00"}}
            for i in range(6)]
    (folder / "fine.ndjson").write_bytes(b"".join(orjson.dumps(b) + b"\n" for b in fine))
    return folder


@pytest.mark.parametrize("fields", REQUESTS.values(), ids=REQUESTS.keys())
def test_round_trip_through_our_parquet_gives_byte_identical_resources(sample_dir, tmp_path, fields):
    source = _ndjson_with_fine_instants(tmp_path / "src", sample_dir)
    ndjson = run_export(source, tmp_path / "ndjson", _request(**fields))
    to_parquet = run_export(source, tmp_path / "parquet", _request(PARQUET))
    parts = file_of(to_parquet["output"][0]["url"]).parent / "*.parquet"
    back = run_export(parts, tmp_path / "back", _request(**fields), source_format="parquet")
    assert exported(back) == exported(ndjson) != {}
    fine = {orjson.loads(line)["id"] for line in exported(back)["Patient"] if b'"fine' in line}
    assert fine == ({f"fine{i}" for i in range(1, 6)} if fields else {f"fine{i}" for i in range(6)})
    assert back["error"] == ndjson["error"] == []


needs_shared = pytest.mark.skipif(not (SHARED_DATA / "synthea-100").is_dir(), reason="../shared/data is not present")


@needs_shared
def test_synthea_round_trip_through_parquet(tmp_path):
    source = tmp_path / "synthea"
    source.mkdir()
    for path in (SHARED_DATA / "synthea-100").glob("*.ndjson.gz"):
        (source / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    ndjson = run_export(source, tmp_path / "ndjson", _request())
    parquet = run_export(source, tmp_path / "parquet", _request(PARQUET))
    assert exported(parquet) == exported(ndjson)
    assert sum(e["count"] for e in parquet["output"]) == sum(p.read_bytes().count(b"\n") for p in source.iterdir())
    back = run_export(file_of(parquet["output"][0]["url"]).parent / "*.parquet", tmp_path / "back", _request())
    assert exported(back) == exported(ndjson)


def test_output_format_chooses_the_part_sink_and_refuses_others():
    assert type(part_sink(_request().output_format)) is NdjsonSink
    assert all(type(part_sink(name)) is ParquetSink for name in PARQUET_FORMATS)
    with pytest.raises(ValueError, match="_outputFormat 'text/csv' is not supported"):
        part_sink("text/csv")
