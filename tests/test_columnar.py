"""Avro and Parquet sources: the same exports as NDJSON, the lastUpdated column, bad records, batching."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import apache_beam as beam
import fastavro
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines.models import ExportRequest
from tests.columnar_data import columnar_copy, exported, file_of, record_row, run_export, write_rows
from transforms.fhir.record_schema import (
    RECORD_SCHEMA,
    arrow_schema_of_avro,
    instant_micros,
    instant_texts,
    load_avro_schema,
)
from transforms.read.chunks import Chunk
from transforms.read.resources import ReadResources, read_chunk
from transforms.storage.source_files import SourceError
from transforms.write.error_files import locate

BASE = "https://ehr.example.org/fhir"
COLUMNAR = ("avro", "parquet")
# One kickoff per case; a Group-level case is one more entry (its source needs the Group resource,
# which the sample data has as grp-00001).
KICKOFFS = {
    "system": f"{BASE}/$export",
    "type_since": f"{BASE}/$export?_type=Patient,Observation,Encounter&_since=2019-06-01T00:00:00Z",
    "group": f"{BASE}/Group/grp-00001/$export",
    "group_since": f"{BASE}/Group/grp-00001/$export?_since=2019-06-01T00:00:00Z",
    "patient_type_filter": f"{BASE}/Patient/$export?_typeFilter=Condition%3Fclinical-status%3Dactive",
    "elements": f"{BASE}/$export?_type=Observation,Patient&_elements=Observation.code,id",
}


@pytest.fixture(scope="session")
def sources(sample_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("columnar")
    copies = {kind: columnar_copy(sample_dir, root / kind, kind, rows_per_group=64) for kind in COLUMNAR}
    return {"ndjson": sample_dir, **copies}


_reference: dict[str, dict] = {}


def _cli_export(run_cli, source, out, kickoff, *extra) -> dict:
    result = run_cli("export", "--source", str(source), "--output", str(out), "--kickoff", kickoff, *extra)
    assert result.code == 0, result.err
    return result.manifest()


@pytest.mark.parametrize("kickoff", KICKOFFS.values(), ids=KICKOFFS.keys())
@pytest.mark.parametrize("kind", COLUMNAR)
def test_columnar_sources_export_exactly_what_ndjson_does(run_cli, sources, tmp_path_factory, kind, kickoff):
    if kickoff not in _reference:
        _reference[kickoff] = _cli_export(run_cli, sources["ndjson"], tmp_path_factory.mktemp("ref"), kickoff)
    reference = _reference[kickoff]
    manifest = _cli_export(run_cli, sources[kind], tmp_path_factory.mktemp(kind), kickoff)
    assert exported(manifest) == exported(reference) != {}
    assert manifest["error"] == reference["error"] == []
    # Parts roll per type as for NDJSON: the same files with the same counts.
    assert [(e["type"], e["count"]) for e in manifest["output"]] == [
        (e["type"], e["count"]) for e in reference["output"]
    ]


def test_the_suite_exercises_its_filters(sources, tmp_path):
    """The `type_since` case really drops types and instants: it is not the system export in disguise."""
    system = exported(run_export(sources["ndjson"], tmp_path / "a", ExportRequest(request_url=BASE)))
    window = exported(run_export(sources["ndjson"], tmp_path / "b", ExportRequest(
        request_url=BASE, types=("Patient", "Observation", "Encounter"), since="2019-06-01T00:00:00Z")))
    assert set(system) > set(window)
    assert sum(window["Observation"].values()) < sum(system["Observation"].values())


# --- the schema ------------------------------------------------------------------------

def test_the_avro_schema_and_the_arrow_schema_are_the_same_record():
    avro = arrow_schema_of_avro(load_avro_schema())
    assert avro.equals(RECORD_SCHEMA), (avro, RECORD_SCHEMA)
    fastavro.parse_schema(load_avro_schema())  # a valid Avro schema


def _patient(rid: str, last_updated: str | None = None) -> dict:
    body = {"resourceType": "Patient", "id": rid}
    if last_updated:
        body["meta"] = {"lastUpdated": last_updated}
    return body


def _utc(year: int) -> dt.datetime:
    return dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc)


def _ids(manifest: dict) -> set[str]:
    return {orjson.loads(line)["id"] for lines in exported(manifest).values() for line in lines}


@pytest.mark.parametrize("kind", COLUMNAR)
def test_the_last_updated_column_wins_over_meta(tmp_path, kind):
    rows = [
        record_row("Patient", "column-late", _patient("column-late", "2015-01-01T00:00:00Z"), _utc(2021)),
        record_row("Patient", "column-early", _patient("column-early", "2021-01-01T00:00:00Z"), _utc(2015)),
        record_row("Patient", "meta-late", _patient("meta-late", "2021-01-01T00:00:00Z")),
        record_row("Patient", "meta-early", _patient("meta-early", "2015-01-01T00:00:00Z")),
        record_row("Patient", "column-only", _patient("column-only"), _utc(2022)),
        record_row("Patient", "nothing", _patient("nothing")),
    ]
    (tmp_path / "in").mkdir()
    write_rows(kind, tmp_path / "in" / f"p.{kind}", rows)
    request = ExportRequest(request_url=BASE, since="2020-01-01T00:00:00Z")
    manifest = run_export(tmp_path / "in", tmp_path / "out", request, include_missing_last_updated=False)
    assert _ids(manifest) == {"column-late", "meta-late", "column-only"}


@pytest.mark.parametrize("kind", COLUMNAR)
def test_bad_records_go_to_error_naming_file_and_record_number(tmp_path, kind):
    rows = [
        record_row("Patient", "ok1", _patient("ok1")),
        record_row("Patient", "bad-json", '{"resourceType": "Patient", "id": '),
        record_row("Observation", "p2", _patient("p2")),
        record_row("Patient", "wrong-id", _patient("right-id")),
        record_row("Basic", "x", "[1, 2]"),
        record_row("Unicorn", "u", {"resourceType": "Unicorn", "id": "u"}),
        record_row("Patient", "ok2", _patient("ok2")),  # row group 3: record numbers run across row groups
    ]
    (tmp_path / "in").mkdir()
    write_rows(kind, tmp_path / "in" / f"r.{kind}", rows)
    manifest = run_export(tmp_path / "in", tmp_path / "out", ExportRequest(request_url=BASE))
    assert _ids(manifest) == {"ok1", "ok2"}
    lines = [line for entry in manifest["error"] for line in file_of(entry["url"]).read_bytes().splitlines()]
    diagnostics = sorted(orjson.loads(line)["issue"][0]["diagnostics"] for line in lines)
    name = f"r.{kind}"  # issue 14: relative to the source folder, and no value is quoted
    assert diagnostics == [
        f"{name} record 1: resource column: not valid JSON (" + diagnostics[0].split("(", 1)[1],
        f"{name} record 2: resourceType column disagrees with the resource's resourceType; not exported",
        f"{name} record 3: id column disagrees with the resource's id; not exported",
        f"{name} record 4: resource column: not a JSON object; not exported",
        f"{name} record 5: resource column: resourceType is not an R4 resource type; not exported",
    ]
    assert sum(entry["count"] for entry in manifest["error"]) == 5


def _located(pipeline, source, **read):
    out = pipeline | ReadResources(str(source), **read)
    errors = out.errors | beam.combiners.ToList() | beam.FlatMap(
        lambda rs, lines: [(w, r.reason) for r, w in locate(rs, None, lines)], beam.pvalue.AsList(out.lines))
    return out, errors


@pytest.mark.parametrize("kind", COLUMNAR)
def test_a_file_without_the_record_schema_is_one_error(pipeline, tmp_path, kind):
    if kind == "parquet":
        path = str(tmp_path / "x.parquet")
        pq.write_table(pa.table({"resourceType": ["Patient"], "id": ["p"], "json": ["{}"]}), path)
    else:
        path = str(tmp_path / "x.avro")
        schema = {"type": "record", "name": "R", "fields": [{"name": "resourceType", "type": "string"}]}
        with open(path, "wb") as f:
            fastavro.writer(f, schema, [{"resourceType": "Patient"}])
    out, errors = _located(pipeline, path)
    missing = {"avro": "Avro file has no 'id', 'resource'", "parquet": "Parquet file has no 'resource'"}[kind]
    assert_that(errors, equal_to([(path, f"{missing} column (see the resource-record schema)")]))
    assert_that(out.batches, equal_to([]), label="NoBatches")
    pipeline.run()


def test_a_naive_last_updated_timestamp_is_refused_for_the_whole_file(pipeline, tmp_path):
    schema = RECORD_SCHEMA.set(2, pa.field("lastUpdated", pa.timestamp("us")))
    row = record_row("Patient", "p", _patient("p"), dt.datetime(2020, 1, 1))
    path = write_rows("parquet", tmp_path / "n.parquet", [row], schema=schema)
    _, errors = _located(pipeline, path)
    reason = "Parquet file column 'lastUpdated' is timestamp[us], not a timestamp with time zone"
    assert_that(errors, equal_to([(path, reason)]))
    pipeline.run()


@pytest.mark.parametrize("kind, magic", [("parquet", b"PAR1"), ("avro", b"Obj\x01")])
def test_a_corrupt_file_fails_the_read_naming_it(pipeline, tmp_path, kind, magic):
    path = tmp_path / f"broken.{kind}"
    path.write_bytes(magic + b"\x00" * 40)
    pipeline | ReadResources(str(path))
    with pytest.raises(Exception, match=f"cannot read source file '{path}'") as info:
        pipeline.run()
    assert isinstance(info.value, SourceError) or "SourceError" in str(info.value)


def test_a_truncated_avro_file_fails_naming_it_unless_cut_between_blocks(tmp_path):
    """Avro has no record count, so a cut between blocks reads as a shorter file; any other cut
    (mid-block fastavro raises IndexError, EOFError or ValueError) must fail the read naming the file."""
    rows = [record_row("Patient", f"p{i}", _patient(f"p{i}")) for i in range(30)]
    whole = Path(write_rows("avro", tmp_path / "whole.avro", rows)).read_bytes()
    path = tmp_path / "cut.avro"
    outcomes = Counter()
    for cut in range(1, len(whole) + 1):
        path.write_bytes(whole[:cut])
        try:
            ids = [r.body["id"] for b in read_chunk(Chunk(str(path), 0, -1, False, False, "avro")) for r in b.resources]
        except SourceError as exc:
            assert f"cannot read source file {str(path)!r}" in str(exc), exc
            outcomes["refused"] += 1
        else:
            assert ids == [f"p{i}" for i in range(len(ids))]
            outcomes["whole" if len(ids) == 30 else "blocks"] += 1
    assert outcomes["whole"] == 1 and outcomes["blocks"] >= 2 and outcomes["refused"] > len(whole) // 2, outcomes


@pytest.mark.parametrize("kind", COLUMNAR)
def test_records_are_read_in_batches_by_row_group_or_block(pipeline, tmp_path, kind):
    rows = [record_row("Patient", f"p{i}", _patient(f"p{i}")) for i in range(25)]
    path = write_rows(kind, tmp_path / f"b.{kind}", rows, rows_per_group=10)
    out = pipeline | ReadResources(path, batch_size=10)
    sizes = out.batches | beam.Map(lambda b: len(b.resources))
    indexes = out.batches | "Indexes" >> beam.FlatMap(lambda b: [(r.index, r.body["id"]) for r in b.resources])
    assert_that(sizes, equal_to([10, 10, 5]))
    assert_that(indexes, equal_to([(i, f"p{i}") for i in range(25)]), label="RecordNumbers")
    pipeline.run()


@pytest.mark.parametrize("kind", COLUMNAR)
def test_raw_bytes_are_the_resource_string_unless_it_spans_lines(pipeline, tmp_path, kind):
    exact = '{ "resourceType" : "Patient", "id" : "p1", "name": [{"text": "caf\\u00e9 Zoë"}] }'
    pretty = '{\n  "resourceType": "Patient",\r\n  "id": "p2"\n}'
    path = write_rows(kind, tmp_path / f"r.{kind}",
                      [record_row("Patient", "p1", exact), record_row("Patient", "p2", pretty)])
    out = pipeline | ReadResources(path)
    raws = out.batches | beam.FlatMap(lambda b: [r.raw for r in b.resources])
    assert_that(raws, equal_to([exact.encode(), orjson.dumps(orjson.loads(pretty))]))
    pipeline.run()


def test_deleted_records_are_not_exported(tmp_path):
    rows = [record_row("Patient", "kept", _patient("kept"), deleted=False),
            record_row("Patient", "gone", _patient("gone"), deleted=True),
            record_row("Patient", "unknown", _patient("unknown"))]
    (tmp_path / "in").mkdir()
    write_rows("parquet", tmp_path / "in" / "d.parquet", rows)
    manifest = run_export(tmp_path / "in", tmp_path / "out", ExportRequest(request_url=BASE))
    assert _ids(manifest) == {"kept", "unknown"} and manifest["error"] == []


@pytest.mark.parametrize("name, source_format", [("data.bin", "auto"), ("data.ndjson", "parquet")])
def test_parquet_is_found_by_magic_bytes_or_by_source_format(pipeline, tmp_path, name, source_format):
    path = write_rows("parquet", tmp_path / name, [record_row("Patient", "p1", _patient("p1"))])
    out = pipeline | ReadResources(path, source_format)
    assert_that(out.batches | beam.FlatMap(lambda b: [r.body["id"] for r in b.resources]), equal_to(["p1"]))
    pipeline.run()


def test_a_folder_may_mix_ndjson_avro_and_parquet(pipeline, tmp_path):
    (tmp_path / "a.ndjson").write_bytes(orjson.dumps(_patient("n1")) + b"\n")
    write_rows("avro", tmp_path / "b.avro", [record_row("Patient", "a1", _patient("a1"))])
    write_rows("parquet", tmp_path / "c.parquet", [record_row("Patient", "q1", _patient("q1"))])
    out = pipeline | ReadResources(str(tmp_path))
    assert_that(out.batches | beam.FlatMap(lambda b: [r.body["id"] for r in b.resources]),
                equal_to(["n1", "a1", "q1"]))
    pipeline.run()


# --- instants between columns and FHIR text ------------------------------------------------

def test_timestamps_render_as_exact_utc_instants():
    paris = dt.timezone(dt.timedelta(hours=1))
    moments = [dt.datetime(2020, 1, 1, 1, 0, 0, tzinfo=paris), None,
               dt.datetime(2020, 1, 1, 0, 0, 0, 120, tzinfo=dt.timezone.utc)]
    assert instant_texts(pa.array(moments, pa.timestamp("us", tz="+01:00"))) == [
        "2020-01-01T00:00:00Z", None, "2020-01-01T00:00:00.000120Z"]
    assert instant_texts(pa.array([1500], pa.timestamp("ms", tz="America/New_York"))) == ["1970-01-01T00:00:01.500000Z"]
    assert instant_micros("2020-01-01T01:00:00.000120+01:00") == instant_micros("2020-01-01T00:00:00.00012Z")
    assert instant_micros("2020-01-01T00:00:00.0000001Z") is None  # finer than a column can hold
    assert instant_micros("2020-01-01") is None and instant_micros(None) is None


@pytest.mark.parametrize("kind", COLUMNAR)
def test_type_is_pushed_into_the_read_and_record_numbers_stay_exact(tmp_path, kind):
    """`_type=Patient`: other types' rows are never parsed (their bad JSON goes unreported), and a bad
    Patient row is still named by its record number in the whole file."""
    rows = [record_row("Observation", f"o{i}", "{broken") for i in range(3)]  # row group 0: no Patient
    rows += [record_row("Patient", "p1", _patient("p1")), record_row("Observation", "o9", "{broken"),
             record_row("Patient", "p-bad", '{"resourceType": "Patient", "id": ')]  # row group 1
    rows += [record_row("Patient", "p2", _patient("p2"))]  # row group 2
    (tmp_path / "in").mkdir()
    write_rows(kind, tmp_path / "in" / f"r.{kind}", rows)
    manifest = run_export(tmp_path / "in", tmp_path / "out", ExportRequest(request_url=BASE, types=("Patient",)))
    assert _ids(manifest) == {"p1", "p2"}
    [entry] = manifest["error"]
    [line] = file_of(entry["url"]).read_bytes().splitlines()
    assert orjson.loads(line)["issue"][0]["diagnostics"].startswith(f"r.{kind} record 5: resource column: not valid")


def test_a_parquet_row_group_whose_statistics_exclude_the_types_is_not_read(tmp_path):
    from transforms.read.columnar import _may_hold

    rows = [record_row("Observation", "o1", "{}"), record_row("Observation", "o2", "{}"),
            record_row("Patient", "p1", "{}"), record_row("Practitioner", "x", "{}")]
    path = write_rows("parquet", tmp_path / "r.parquet", rows, rows_per_group=2)
    parquet = pq.ParquetFile(path)
    groups = [parquet.metadata.row_group(g) for g in range(parquet.metadata.num_row_groups)]
    assert [_may_hold(g, parquet.schema_arrow, frozenset({"Patient"})) for g in groups] == [False, True]
    assert [_may_hold(g, parquet.schema_arrow, frozenset({"Encounter"})) for g in groups] == [False, False]
    assert [_may_hold(g, parquet.schema_arrow, frozenset({"Observation"})) for g in groups] == [True, False]


def test_a_large_avro_file_is_read_in_ranges_of_whole_blocks_with_exact_record_numbers(tmp_path):
    from transforms.read.chunks import plan_chunks

    rows = [record_row("Patient", f"p{i}", _patient(f"p{i}")) for i in range(400)]
    rows[333] = record_row("Patient", "bad", '{"resourceType": "Patient", "id": ')
    (tmp_path / "in").mkdir()
    path = write_rows("avro", tmp_path / "in" / "big.avro", rows)  # blocks of about 64 bytes
    chunks = list(plan_chunks(path, chunk_bytes=2048))
    assert len(chunks) > 4 and all(c.columnar == "avro" and c.end > c.start for c in chunks), chunks
    assert chunks[0].first == 0 and sorted(c.first for c in chunks) == [c.first for c in sorted(chunks)]
    manifest = run_export(tmp_path / "in", tmp_path / "out", ExportRequest(request_url=BASE), chunk_bytes=2048)
    assert _ids(manifest) == {f"p{i}" for i in range(400)} - {"p333"}
    [entry] = manifest["error"]
    [line] = file_of(entry["url"]).read_bytes().splitlines()
    assert orjson.loads(line)["issue"][0]["diagnostics"].startswith("big.avro record 333: resource column")
