"""`_type` pushed into Parquet and Avro reads: the narrow read is exactly the full read filtered afterwards,
and it never decodes what holds no selected type (a Parquet row group's other columns, an Avro block)."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import fastavro
import orjson
import pyarrow.parquet as pq
import pytest

from tests.columnar_data import record_row, write_rows
from transforms.read.avro_blocks import BlockScreen
from transforms.read.chunks import open_chunk, plan_chunks
from transforms.read.columnar import UnreadableFile, read_columnar
from transforms.records import BadRecord, Deletions, ResourceBatch

TYPES = ("Patient", "Observation", "Practitioner", "Encounter")
CHUNK_BYTES = 16384  # Avro ranges of many blocks: a dense start is long enough for the screen to stop


def _body(rtype: str, rid: str, n: int) -> dict:
    body = {"resourceType": rtype, "id": rid, "meta": {"lastUpdated": f"2020-01-{1 + n % 28:02d}T00:00:00Z"}}
    if rtype != "Patient":
        body["subject"] = {"reference": f"Patient/p{n}"}  # every other type names "Patient" in its JSON
    return body


def _row(rtype: str, n: int) -> dict:
    """A good row, or one of the bad kinds every few rows, or a deletion."""
    rid = f"{rtype[0].lower()}{n}"
    kind = n % 11
    if kind == 3:
        return record_row(rtype, rid, f'{{"resourceType": "{rtype}", "id": ')  # not JSON
    if kind == 5:
        return record_row(rtype, rid, _body(rtype, "other", n))  # id column disagrees
    if kind == 7:
        other = "Observation" if rtype == "Patient" else "Patient"
        return record_row(rtype, rid, _body(other, rid, n))  # resourceType column disagrees
    if kind == 9:
        return record_row(rtype, rid, _body(rtype, rid, n), dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc), True)
    last_updated = dt.datetime(2019, 1, 1 + n % 28, tzinfo=dt.timezone.utc) if n % 2 else None
    return record_row(rtype, rid, _body(rtype, rid, n), last_updated)


def _rows() -> list[dict]:
    """A dense run of Patients (an Avro read stops screening there), then types mixed at random, a row
    group of only unselected types whose statistics span "Patient", and an Observation with id "Patient"."""
    pick = random.Random(28).choice
    rows = [_row("Observation" if n % 9 == 4 else "Patient", n) for n in range(60)]
    rows += [_row(pick(TYPES[1:]) if n % 13 else "Patient", n) for n in range(60, 300)]
    rows += [_row("Observation", 300), _row("Practitioner", 301), _row("Observation", 302)]  # one row group
    rows.append(record_row("Observation", "Patient", _body("Observation", "Patient", 303)))
    return rows


def _read(path: str, types) -> list[tuple]:
    """Every item of a narrow (or, with `types` None, full) read of the file in chunks, as tuples."""
    found = []
    for chunk in plan_chunks(path, chunk_bytes=CHUNK_BYTES):
        with open_chunk(chunk) as f:
            items = read_columnar(chunk.columnar, chunk.path, f, chunk.start, chunk.end, 7, types, chunk.first)
            for item in items:
                if type(item) is BadRecord:
                    found.append(("bad", item.index, item.origin.path, item.reason, item.resource_type))
                    continue
                kind, batch = ("deleted", item.batch) if type(item) is Deletions else ("resource", item)
                assert type(batch) is ResourceBatch
                found += [(kind, r.index, batch.origin.path, r.type, r.raw, r.body, r.last_updated)
                          for r in batch.resources]
    return sorted(found, key=repr)


def _filtered(full: list[tuple], rows: list[dict], types: frozenset[str]) -> list[tuple]:
    """The full read's items of rows whose `resourceType` column is one of `types`."""
    return [item for item in full if rows[item[1]]["resourceType"] in types]


CASES = [("parquet", "null"), ("avro", "null"), ("avro", "deflate"), ("avro", "bzip2")]


@pytest.mark.parametrize("kind, codec", CASES)
@pytest.mark.parametrize("types", [{"Patient"}, {"Encounter"}, {"Observation", "Practitioner"}, {"Condition"}])
def test_a_narrow_read_is_the_full_read_filtered(tmp_path, kind, codec, types):
    rows = _rows()
    path = write_rows(kind, tmp_path / f"r.{kind}", rows, rows_per_group=3, sync_interval=300, codec=codec)
    full = _read(path, None)
    assert len({item[1] for item in full}) == len(rows)  # every row is read, as a resource or a bad record
    assert {item[0] for item in full} == {"resource", "deleted", "bad"}
    narrow = _read(path, frozenset(types))
    assert narrow == _filtered(full, rows, frozenset(types))
    assert narrow or types == {"Condition"}


def test_the_test_data_has_the_row_groups_and_blocks_it_names(tmp_path):
    rows = _rows()
    parquet = pq.ParquetFile(write_rows("parquet", tmp_path / "r.parquet", rows, rows_per_group=3))
    groups = [set(parquet.read_row_group(g, columns=["resourceType"]).column(0).to_pylist())
              for g in range(parquet.metadata.num_row_groups)]
    assert {"Observation", "Practitioner"} in groups and any(len(g) > 1 and "Patient" in g for g in groups)
    path = write_rows("avro", tmp_path / "r.avro", rows, sync_interval=300)
    with open(path, "rb") as f:
        blocks = [{r["resourceType"] for r in block} for block in fastavro.block_reader(f)]
    first_chunk = next(iter(plan_chunks(path, chunk_bytes=CHUNK_BYTES)))
    assert first_chunk.end > 0 and blocks[0] == {"Patient"}
    with open(path, "rb") as f:  # the first chunk is long enough for the screen to stop in its dense start
        assert sum(1 for b in fastavro.block_reader(f) if b.offset < first_chunk.end) > 2 * BlockScreen.AFTER
    assert sum("Patient" in b for b in blocks[:BlockScreen.AFTER]) >= BlockScreen.DENSE * BlockScreen.AFTER
    assert any("Patient" not in b for b in blocks) and any(len(b) > 1 and "Patient" in b for b in blocks[40:])


def _corrupt_resource_column(path: Path, group: int) -> None:
    """Overwrites the start of a row group's `resource` column chunk (its first page header) with zeros."""
    column = pq.ParquetFile(path).metadata.row_group(group).column(5)
    assert column.path_in_schema == "resource"
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start:start + 32] = bytes(32)
    path.write_bytes(bytes(data))


def test_a_parquet_row_group_without_a_selected_row_is_read_no_further_than_its_types(tmp_path):
    """The group's statistics (Observation..Practitioner) span "Patient", so only its `resourceType`
    column can show that it holds none; its broken `resource` column is then never read."""
    rows = [record_row("Patient", f"p{n}", _body("Patient", f"p{n}", n)) for n in range(2)]  # row group 0
    rows += [record_row(t, f"x{n}", _body(t, f"x{n}", n)) for n, t in enumerate(("Observation", "Practitioner"))]
    rows += [record_row("Patient", "p2", _body("Patient", "p2", 2))]
    path = Path(write_rows("parquet", tmp_path / "r.parquet", rows, rows_per_group=2))
    _corrupt_resource_column(path, 1)
    with pytest.raises((UnreadableFile, OSError)):
        _read(str(path), None)
    narrow = _read(str(path), frozenset({"Patient"}))
    assert [(item[1], item[5]["id"]) for item in narrow] == [(0, "p0"), (1, "p1"), (4, "p2")]


def test_an_avro_block_without_a_selected_type_is_never_decoded(tmp_path):
    """Invalid UTF-8 in an Observation's `resource` fails a read that decodes its block, not a Patient read
    (its block holds no Patient), and a Patient beyond it keeps its record number."""
    rows = [record_row("Patient", "p1", _body("Patient", "p1", 1))]
    rows += [record_row("Observation", f"o{n}", {**_body("Observation", f"o{n}", n), "note": "MARK"})
             for n in range(3)]
    rows += [record_row("Patient", "p2", _body("Patient", "p2", 2))]
    path = Path(write_rows("avro", tmp_path / "r.avro", rows, sync_interval=64))
    data = path.read_bytes()
    assert data.count(b"MARK") == 3
    path.write_bytes(data.replace(b"MARK", b"\xff\xfe\xff\xfe", 1))
    with pytest.raises(UnreadableFile, match="corrupt Avro data"):
        _read(str(path), None)
    narrow = _read(str(path), frozenset({"Patient"}))
    assert [(item[1], item[5]["id"]) for item in narrow] == [(0, "p1"), (4, "p2")]
    assert orjson.loads(narrow[1][4])["id"] == "p2"
