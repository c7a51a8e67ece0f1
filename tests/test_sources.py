"""Tests for transforms.read.resources.ReadResources: chunked NDJSON, gzip, Bundles, bad lines."""
import gzip
import io
import json
import random

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from tests.helpers import span_lines
from transforms.read.resources import ReadResources
from transforms.storage.source_files import SourceError, match_source
from transforms.write.error_files import locate


def _line(rtype: str, rid: str, pad: int = 0) -> bytes:
    body = {"resourceType": rtype, "id": rid}
    if pad:
        body["note"] = "x" * pad
    return json.dumps(body, separators=(",", ":")).encode()


def _read(pipeline, source, chunk_bytes=16 << 20, batch_size=2000, source_format="auto"):
    return pipeline | ReadResources(str(source), source_format, chunk_bytes, batch_size)


def _ids(batches, label="Ids"):
    return batches | label >> beam.FlatMap(lambda b: [(r.type, r.body["id"]) for r in b.resources])


def _kind(reason: str) -> str:
    """A BadRecord reason without the parser's detail, e.g. `not valid JSON`."""
    return reason.split(" (")[0]


def _located(read, label="Locate"):
    """(where, kind) of every bad record, with where computed by transforms.write.error_files.locate."""
    return (
        read.errors
        | f"{label}All" >> beam.combiners.ToList()
        | label >> beam.FlatMap(lambda recs, lines: [(w, _kind(r.reason)) for r, w in locate(recs, None, lines)],
                                beam.pvalue.AsList(read.lines))
    )


# --- plain NDJSON split into byte-range chunks -------------------------------

def _tricky_ndjson() -> tuple[bytes, list[tuple[str, bytes]]]:
    """A file with long lines, CRLF ends, blank lines and no trailing newline."""
    rng = random.Random(5)
    out, expected = [], []
    for i in range(40):
        rtype = rng.choice(["Patient", "Observation", "Encounter"])
        raw = _line(rtype, f"r{i}", pad=rng.choice([0, 5, 150, 400]))
        expected.append((f"r{i}", raw))
        out.append(raw + (b"\r" if i % 3 == 0 else b""))
        if i % 7 == 0:
            out.append(rng.choice([b"", b"   ", b"\r"]))
    return b"\n".join(out), expected  # no trailing newline


@pytest.mark.parametrize("chunk_bytes", [7, 50, 100, 1 << 20])
def test_every_line_is_read_exactly_once_whatever_the_chunk_size(pipeline, tmp_path, chunk_bytes):
    data, expected = _tricky_ndjson()
    assert not data.endswith(b"\n") and max(len(r) for _, r in expected) > 100
    (tmp_path / "in.ndjson").write_bytes(data)
    out = _read(pipeline, tmp_path / "in.ndjson", chunk_bytes, batch_size=3)
    raws = out.batches | beam.FlatMap(lambda b: [(r.body["id"], r.raw) for r in b.resources])
    sizes = out.batches | "Sizes" >> beam.Map(lambda b: len(b.resources) <= 3)
    assert_that(raws, equal_to(expected))
    assert_that(out.errors, equal_to([]), label="NoErrors")
    assert_that(sizes | beam.Distinct(), equal_to([True]), label="BatchSize")
    pipeline.run()


def test_gzip_is_read_whole_and_names_are_sniffed_in_a_directory(pipeline, tmp_path):
    lines = [_line("Patient", f"p{i}", pad=30) for i in range(20)]
    # `data.bin` is gzip whatever its name: 10 whole lines, then a truncated 11th.
    (tmp_path / "data.bin").write_bytes(gzip.compress(b"\n".join(lines[:10]) + b"\n" + lines[10][:15]))
    (tmp_path / "more.ndjson.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    # Any other name is NDJSON when its first line is a JSON object.
    (tmp_path / "export.txt").write_bytes(_line("Encounter", "e1") + b"\n" + _line("Encounter", "e2"))
    (tmp_path / ".hidden.ndjson").write_bytes(_line("Patient", "hidden") + b"\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.ndjson").write_bytes(_line("Patient", "nested") + b"\n")
    out = _read(pipeline, tmp_path, chunk_bytes=7)
    expected = [("Patient", f"p{i}") for i in list(range(20)) + list(range(10))]
    expected += [("Encounter", "e1"), ("Encounter", "e2")]
    expected += [("Patient", "nested")]  # subfolders are read (issue 14, item 8)
    assert_that(_ids(out.batches), equal_to(expected))
    assert_that(_located(out), equal_to([(f"{tmp_path}/data.bin line 11", "not valid JSON")]),
                label="Errors")
    pipeline.run()


def test_ndjson_reason_for_every_kind_of_bad_line(pipeline, tmp_path):
    rows = [
        (_line("Patient", "ok1"), None),
        (b"not json at all", "not valid JSON"),
        (b'{"resourceType": "Patient", "id": ', "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"Patient"', "not a JSON object"),
        (b'{"id": "x"}', "has no resourceType"),
        (b'{"resourceType": 5}', "has no resourceType"),
        (b'{"resourceType": ""}', "has no resourceType"),
        (b'{"resourceType": "Foo"}', "resourceType is not an R4 resource type"),  # never quoted (issue 14)
        (_line("Observation", "ok2"), None),
    ]
    (tmp_path / "bad.ndjson").write_bytes(b"\n".join(line for line, _ in rows) + b"\n")
    out = _read(pipeline, tmp_path / "bad.ndjson")
    expected = [(f"{tmp_path}/bad.ndjson line {n}", kind) for n, (_, kind) in enumerate(rows, 1) if kind]
    assert_that(_located(out), equal_to(expected))
    assert_that(_ids(out.batches), equal_to([("Patient", "ok1"), ("Observation", "ok2")]), label="Good")
    pipeline.run()


def _mixed_rows(rng: random.Random) -> list[bytes]:
    bad = [b"{oops", b"[]", b'{"id": "z"}', b'{"resourceType": "Foo", "id": "f"}', b"", b"\r"]
    rows = []
    for i in range(80):
        if rng.random() < 0.3:
            rows.append(rng.choice(bad))
        else:
            rows.append(_line("Patient", f"g{i}", pad=rng.randrange(0, 90)) + rng.choice([b"", b"\r"]))
    return rows


@pytest.mark.parametrize("chunk_bytes", [7, 64, 333, 1 << 20])
def test_bad_line_numbers_are_true_file_lines_with_mid_file_chunks(pipeline, tmp_path, chunk_bytes):
    rows = _mixed_rows(random.Random(chunk_bytes))
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(b"\n".join(rows) + b"\n")
    # Expectations from the file itself: enumerate its lines, 1-based.
    bad, good = [], []
    for n, line in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
        text = line.rstrip(b"\r")
        if text.startswith(b'{"resourceType":"Patient"'):
            good.append(("Patient", json.loads(text)["id"]))
        elif text.strip():
            bad.append((f"{path} line {n}", text))
    kinds = {b"{oops": "not valid JSON", b"[]": "not a JSON object", b'{"id": "z"}': "has no resourceType",
             b'{"resourceType": "Foo", "id": "f"}': "resourceType is not an R4 resource type"}
    assert len(bad) > 10 and len(good) > 40
    out = _read(pipeline, path, chunk_bytes)
    assert_that(_located(out), equal_to([(where, kinds[text]) for where, text in bad]))
    assert_that(_ids(out.batches), equal_to(good), label="Good")
    pipeline.run()


# --- Bundles and other JSON documents ----------------------------------------

def _bundle(kind: str, entries: list, bid: str = "b") -> dict:
    return {"resourceType": "Bundle", "id": bid, "type": kind, "entry": entries}


def _entry(rtype: str, rid: str) -> dict:
    return {"fullUrl": f"urn:uuid:{rid}", "resource": {"resourceType": rtype, "id": rid, "active": True}}


def test_container_bundles_yield_their_entries(pipeline, tmp_path):
    bundles = {
        "tx.json": _bundle("transaction", [_entry("Patient", "t1"), _entry("Observation", "t2"),
                                           {"request": {"method": "DELETE", "url": "Patient/old"}}]),
        "batch.json": _bundle("batch", [_entry("Encounter", "b1")]),
        "search.json": _bundle("searchset", [_entry("Patient", "s1"), {"search": {"mode": "match"}},
                                             {"resource": {"resourceType": "Foo", "id": "f"}}]),
    }
    for name, doc in bundles.items():  # pretty-printed over many lines
        (tmp_path / name).write_text(json.dumps(doc, indent=2))
    coll = _bundle("collection", [_entry("Condition", "c1"), _entry("Patient", "c2")])
    (tmp_path / "coll.json.gz").write_bytes(gzip.compress(json.dumps(coll, indent=1).encode()))
    out = _read(pipeline, tmp_path, chunk_bytes=7)
    entries = [e["resource"] for d in [*bundles.values(), coll] for e in d["entry"]
               if "resource" in e and e["resource"]["resourceType"] != "Foo"]
    raws = out.batches | beam.FlatMap(lambda b: [(r.type, json.loads(r.raw)) for r in b.resources])
    assert_that(raws | beam.Map(json.dumps), equal_to([json.dumps((e["resourceType"], e)) for e in entries]))
    assert_that(_located(out), equal_to([
        (f"{tmp_path}/tx.json Bundle.entry[2]", "Bundle entry has no resource"),
        (f"{tmp_path}/search.json Bundle.entry[1]", "Bundle entry has no resource"),
        (f"{tmp_path}/search.json Bundle.entry[2]", "resourceType is not an R4 resource type"),
    ]), label="Errors")
    reasons = out.errors | beam.Map(lambda r: r.reason) | beam.Filter(lambda r: "DELETE" in r)
    assert_that(reasons, equal_to(["Bundle entry has no resource (request.method DELETE)"]), label="Method")
    pipeline.run()


def test_history_document_and_malformed_bundles(pipeline, tmp_path):
    (tmp_path / "hist.json").write_text(json.dumps(_bundle("history", [_entry("Patient", "h1")]), indent=2))
    document = _bundle("document", [_entry("Composition", "d1"), _entry("Patient", "d2")], bid="doc")
    (tmp_path / "doc.json").write_text(json.dumps(document, indent=2))
    (tmp_path / "broken.json").write_text('{"resourceType": "Bundle",\n')
    # Malformed Bundles are bad records, never a failed job.
    odd_entry = [{"request": "DELETE"}, _entry("Patient", "m1")]
    (tmp_path / "odd.json").write_text(json.dumps(_bundle("batch", odd_entry)))
    (tmp_path / "scalar.json").write_text(json.dumps(_bundle("collection", 5)))
    (tmp_path / "empty.json").write_bytes(b"")  # empty files hold nothing, not an error
    (tmp_path / "empty.dat").write_bytes(b"")
    out = _read(pipeline, tmp_path)
    whole = out.batches | beam.FlatMap(lambda b: [(r.type, json.loads(r.raw)) for r in b.resources])
    assert_that(whole | beam.Map(json.dumps), equal_to(
        [json.dumps(("Bundle", document)), json.dumps(("Patient", odd_entry[1]["resource"]))]))
    assert_that(_located(out), equal_to([
        (f"{tmp_path}/hist.json", "Bundle type 'history' is not a source of resources"),
        (f"{tmp_path}/broken.json", "document is not valid JSON"),
        (f"{tmp_path}/odd.json Bundle.entry[0]", "Bundle entry has no resource"),
        (f"{tmp_path}/scalar.json", "Bundle.entry is not a JSON array"),
    ]), label="Errors")
    pipeline.run()


# --- matching sources ----------------------------------------------------------

def test_match_source_lists_visible_files_and_rejects_empty_matches(tmp_path):
    (tmp_path / "a.ndjson").write_bytes(b"12345")
    (tmp_path / ".b.ndjson").write_bytes(b"1")
    (tmp_path / "sub").mkdir()
    assert match_source(str(tmp_path)) == [(str(tmp_path / "a.ndjson"), 5)]
    assert match_source(f"{tmp_path}/") == [(str(tmp_path / "a.ndjson"), 5)]
    assert match_source(f"{tmp_path}/*.ndjson") == [(str(tmp_path / "a.ndjson"), 5)]
    with pytest.raises(SourceError, match="matches no files"):
        match_source(f"{tmp_path}/*.json")
    with pytest.raises(SourceError, match="matches no files"):
        match_source(str(tmp_path / "sub"))
    with pytest.raises(SourceError, match="matches no files"):
        match_source(str(tmp_path / ".b.ndjson"))


def test_pipeline_fails_with_source_error_when_nothing_matches(pipeline, tmp_path):
    _read(pipeline, tmp_path / "missing" / "*.ndjson")
    with pytest.raises(SourceError, match="matches no files"):
        pipeline.run()


# --- span_lines, property style -----------------------------------------------

def _random_file(rng: random.Random) -> bytes:
    alphabet = [b"a", b"b", b"\n", b"\r", b"{", b" "]
    weights = [5, 5, 2 if rng.random() < 0.5 else 0.1, 1, 1, 1]
    return b"".join(rng.choices(alphabet, weights, k=rng.randrange(0, 120)))


def testspan_lines_chunks_partition_the_file_into_its_lines():
    rng = random.Random(20240601)
    for case in range(400):
        data = _random_file(rng)
        chunk = rng.randrange(1, len(data) + 3)
        expected = data.split(b"\n")
        if expected[-1] == b"":
            expected.pop()
        got, offsets = [], []
        for start in range(0, len(data), chunk):
            lines = span_lines(io.BytesIO(data), start, min(start + chunk, len(data)))
            first = next(lines)
            chunk_lines = list(lines)
            if chunk_lines:
                offsets.append((len(got), first))
            got += chunk_lines
        assert got == expected, (case, data, chunk)
        for n, offset in offsets:  # a chunk's first offset is where its first line starts
            assert offset == sum(len(line) + 1 for line in expected[:n]), (case, data, chunk)
        whole = span_lines(io.BytesIO(data), 0, None)
        assert next(whole) == 0 and list(whole) == expected


def test_glob_skips_files_in_hidden_folders_but_not_hidden_parents(tmp_path):
    root = tmp_path / ".cache" / "data"  # a hidden folder above the pattern is the user's choice
    (root / "job" / ".parts-tmp-1").mkdir(parents=True)
    (root / "job" / "Patient-0.ndjson").write_bytes(b"1\n")
    (root / "job" / ".parts-tmp-1" / "Patient.x.ndjson").write_bytes(b"2\n")
    assert match_source(f"{root}/*/*.ndjson") == [(str(root / "job" / "Patient-0.ndjson"), 2)]
    with pytest.raises(SourceError, match="matches no files"):
        match_source(f"{root}/*/*/*.ndjson")


def test_sniffing_skips_a_bom_and_blank_first_lines(pipeline, tmp_path):
    (tmp_path / "export.txt").write_bytes(b"\n  \n" + _line("Patient", "p1") + b"\n" + _line("Patient", "p2"))
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + _line("Encounter", "e1") + b"\n")
    out = _read(pipeline, tmp_path)
    assert_that(_ids(out.batches), equal_to([("Patient", "p1"), ("Patient", "p2"), ("Encounter", "e1")]))
    assert_that(_located(out), equal_to([]), label="NoErrors")
    pipeline.run()


@pytest.mark.parametrize("block_bytes", [1, 7, 64, 1 << 16])
def test_lines_longer_than_a_block_are_read_whole_once_across_ranges(monkeypatch, block_bytes):
    monkeypatch.setattr("transforms.read.ndjson.BLOCK_BYTES", block_bytes)
    rng = random.Random(block_bytes)
    lines = [b"x" * rng.choice([0, 1, 30, 200, 5000]) + str(i).encode() for i in range(60)]
    data = b"\xef\xbb\xbf" + b"\n".join(lines)  # a BOM, and no trailing newline
    size = len(data)
    for cuts in ([0, size], [0, 3, size], [0, 1, 100, 2000, 2001, size], sorted({0, size, *rng.sample(range(size), 9)})):
        read = []
        for start, end in zip(cuts, cuts[1:]):
            spans = span_lines(io.BytesIO(data), start, end)
            next(spans)
            read.extend(spans)
        assert read == lines, (block_bytes, cuts)
