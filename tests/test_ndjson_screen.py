"""The NDJSON read with `_type` screens whole texts (`transforms.read.line_screen`), and gives exactly
what a plain loop gives that splits the file into lines and applies the documented line rule."""

import gzip
import io
import random
import re

import orjson
import pytest

from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.read import ndjson
from transforms.read.ndjson import BOM, _unusual_line, json_error, parse_lines, span_texts
from transforms.read.pushdown import NO_ID, ReadSelection
from transforms.records import BadRecord, ChunkLines, Origin, ResourceBatch

# Lines of every kind the rule tells apart, each in a run of its own in a file (runs make texts
# whose lines all open with one type) or alone.
KINDS = [
    b'{"resourceType":"Patient","id":"p%d"}',
    b'{"resourceType":"Observation","id":"o%d","subject":{"reference":"Patient/1"}}',
    b'{"resourceType":"Observation","id":"t%d","focus":{"type":"Patient"}}',  # names Patient, is not one
    b'{"resourceType":"Condition","id":"c%d","note":"a\\\\b \\\\ c"}',  # backslashes, no \\u
    b'{"resourceType":"Encounter","id":"e%d","text":"' + b"x" * 3000 + b'"}',  # longer than small blocks
    b'{"resourceType": "Patient", "id": "s%d"}',  # no opening the rule knows: found by its marker
    b'{"id":"i%d","resourceType":"Observation"}',
    b'{"resourceType":"\\u0050atient","id":"u%d"}',  # an escape that spells a selected type
    b'{"id":"v%d","resourceType":"Observ\\u0061tion"}',
    b'{"resourceType":"Patient","id":',  # broken, of a selected type: reported
    b'{"resourceType":"Observation","id":%d',  # broken, of a type nobody asked for: not reported
    b'{"resourceType":"Observation","id":"x%d","focus":"Patient",',  # the same, naming Patient
    b'not json "Patient" %d',
    b"not json %d",
    b'{"resourceType":"Patient"}',  # no id
    b'{"resourceType":"Foo","id":"f%d","x":"Patient"}',  # not an R4 type
    b'{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","id":"b%d"}}]}',
    b'{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Condition","id":"d%d"}}]}',
    b"[%d]",
    b"",
    b"   ",
]
SELECTIONS = [
    ["Patient"],
    ["Observation"],
    ["Patient", "Observation"],
    ["Condition", "Bundle"],
    sorted(RESOURCE_TYPES)[:12] + ["Patient"],  # above SCREEN_MAX_TYPES: only the opening is tested
    None,
]
_OPENING = re.compile(rb'\{"resourceType":"([^"]*)"')


def random_file(rng: random.Random) -> bytes:
    lines, serial = [], 0
    while len(lines) < rng.randint(1, 120):
        kind = rng.choice(KINDS)
        for _ in range(rng.choice([1, 1, 3, 20])):
            serial += 1
            line = kind % serial if b"%d" in kind else kind
            lines.append(line + (b"\r" if rng.random() < 0.1 else b""))
    data = b"\n".join(lines) + (b"\n" if rng.random() < 0.7 else b"")
    return (BOM if rng.random() < 0.3 else b"") + data


def may_hold(line: bytes, types: list[str]) -> bool:
    """The documented rule (`ReadSelection.screen`), for one line."""
    opening = _OPENING.match(line)
    if opening and opening[1].decode() in RESOURCE_TYPES and opening[1] != b"Bundle":
        return opening[1].decode() in types
    if len(types) > 8:
        return True
    return any(b'"%s"' % name.encode() in line for name in types) or b"\\u" in line


def reference(data: bytes, cuts: list[int], types, origin_path: str = "f") -> list:
    """A plain loop: the file's lines, each in the range its first byte lies in, the rule, then a parse."""
    selection = ReadSelection.of(types or ())
    body = data.removeprefix(BOM)
    lines = body.split(b"\n")
    if lines[-1] == b"" and body:
        lines.pop()
    starts, at = [], len(data) - len(body)
    for line in lines:
        starts.append(0 if not starts else at)
        at += len(line) + 1
    out = []
    for start, end in zip(cuts, cuts[1:]):
        mine = [(i, line) for i, (s, line) in enumerate(zip(starts, lines)) if start <= s < end]
        later = [s for s in starts if s >= start]  # where a range's first line starts, if any does
        origin = Origin(origin_path, 0 if not start else later[0] if later else len(data))
        first = mine[0][0] if mine else 0
        resources, bad = [], []
        for i, line in mine:
            if types is not None and not may_hold(line, types):
                continue
            _parse(line, i - first, origin, selection, resources, bad)
        source_bytes = sum(len(line) + 1 for _, line in mine)
        out.append((origin.offset, resources, bad, len(mine), source_bytes))
    return out


def _parse(line: bytes, index: int, origin: Origin, selection: ReadSelection, resources: list, bad: list) -> None:
    try:
        body = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if line.strip():
            bad.append((index, json_error(exc)))
        return
    raw = line.removesuffix(b"\r")
    rtype = body.get("resourceType") if type(body) is dict else None
    if type(rtype) is str and rtype in RESOURCE_TYPES and rtype != "Bundle":
        if selection.types is not None and rtype not in selection.types:
            return
        if type(body.get("id")) is str and body["id"]:
            resources.append((rtype, raw, index))
        else:
            bad.append((index, NO_ID))
        return
    for item in _unusual_line(body, line, index, origin, selection):
        if type(item) is BadRecord:
            bad.append((item.index, item.reason))
        else:
            resources.append((item.type, item.raw, item.index))


def read(data: bytes, cuts: list[int], types, zipped: bool = False, origin_path: str = "f") -> list:
    """What `parse_lines` gives for each range."""
    selection = None if types is None else ReadSelection.of(types)
    out = []
    for start, end in zip(cuts, cuts[1:]):
        f = gzip.GzipFile(fileobj=io.BytesIO(gzip.compress(data))) if zipped else io.BytesIO(data)
        texts = span_texts(f, start, None if zipped else end)
        origin = Origin(origin_path, next(texts))
        resources, bad, counts, source_bytes = [], [], [], 0
        items = list(parse_lines(texts, origin, 3, selection))
        for item in items:
            if type(item) is ResourceBatch:
                assert item.resources or item is items[-2], "only the last batch may be empty"
                resources += [(r.type, r.raw, r.index) for r in item.resources]
                source_bytes += item.source_bytes
            elif type(item) is ChunkLines:
                counts.append(item)
            else:
                bad.append((item.index, item.reason))
        assert counts == [ChunkLines(origin_path, origin.offset, counts[0].lines)] and items[-1] is counts[0]
        out.append((origin.offset, resources, bad, counts[0].lines, source_bytes))
    return out


@pytest.mark.parametrize("block_bytes", [1, 7, 64, 300, 4096, 1 << 16])
def test_the_screened_read_is_the_plain_loop_whatever_the_blocks_and_ranges(monkeypatch, block_bytes):
    monkeypatch.setattr(ndjson, "BLOCK_BYTES", block_bytes)
    rng = random.Random(block_bytes)
    for _ in range(12):
        data = random_file(rng)
        size = len(data)
        for cuts in ([0, size], sorted({0, min(3, size), size}), sorted({0, size, *rng.sample(range(size), min(size, 7))})):
            for types in SELECTIONS:
                assert read(data, cuts, types) == reference(data, cuts, types), (cuts, types)
        types = rng.choice(SELECTIONS)
        assert read(data, [0, size], types, zipped=True) == reference(data, [0, size], types), types


def test_a_skipped_block_still_counts_its_lines_for_the_line_numbers_after_it():
    skipped = b'{"resourceType":"Observation","id":"o"}\n' * 5000  # texts skipped whole
    data = skipped + b'{"resourceType":"Patient","id":' + b"\n" + b'{"resourceType":"Patient","id":"p"}\n'
    [(offset, resources, bad, lines, source_bytes)] = read(data, [0, len(data)], ["Patient"])
    assert (offset, lines, source_bytes) == (0, 5002, len(data))
    assert [index for index, _ in bad] == [5000] and [r[2] for r in resources] == [5001]
