"""NDJSON: the lines of a byte range of a file, parsed once into resources.

This is the export's hot loop. Lines are read in blocks and split in bulk, a
line is parsed once with orjson, and the common case (a JSON object with an R4
`resourceType` other than Bundle, and an `id`) costs two dict lookups beyond the
parse, plus the read's `ReadSelection` test. Anything else (a Bundle, whose
entries may be the resources, or a line that is no resource) is explained on a
slow path and becomes resources or a `BadRecord`.
"""

from __future__ import annotations

from typing import IO, Iterator, Optional, Union

import orjson

from transforms.fhir.instant import InvalidInstant
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.window import LATE
from transforms.read.line_screen import line_finder
from transforms.read.pushdown import ReadSelection, late_record, no_id_record, union, window_error
from transforms.records import BadRecord, Binaries, ChunkLines, Origin, Resource, ResourceBatch

# Small enough that a block's lines are parsed while still in the CPU cache (1 MiB
# blocks made parsing about 15% slower than reading line by line).
BLOCK_BYTES = 64 << 10
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, which some writers put first


def span_texts(f: IO[bytes], start: int, end: Optional[int]) -> Iterator:
    """Yields the offset of the first line, then texts of the lines starting in [start, end).

    A text is whole lines, each ending in a newline (one is added to a last line
    without), about a block long unless a line is longer. A line belongs to the
    range in which its first byte lies, so adjacent ranges split a file into its
    lines with none lost or read twice. `end` None reads to the end of the stream.
    A UTF-8 BOM opening a file is dropped.
    """
    if start:
        f.seek(start - 1)
        f.readline()
    pos = f.tell() if start else 0
    yield pos
    pending: list[bytes] = []  # the start of a line that no block so far has ended
    first = not start
    while end is None or pos < end:
        block = f.read(BLOCK_BYTES)
        if not block:
            if pending:
                text = b"".join(pending) + b"\n"
                yield text.removeprefix(BOM) if first else text
            return
        cut = block.rfind(b"\n") + 1
        if not cut:  # a long line: join its pieces once it ends, not block by block
            pending.append(block)
            continue
        text = block if cut == len(block) else block[:cut]
        if pending:
            text = b"".join([*pending, text])
        pending = [block[cut:]] if cut < len(block) else []
        if end is not None and pos + len(text) > end:  # the range ends in this text: its lines starting before
            text = text[: text.index(b"\n", end - pos - 1) + 1]
        pos += len(text)
        yield text.removeprefix(BOM) if first else text
        first = False


def parse_lines(
    texts: Iterator[bytes], origin: Origin, batch_size: int, selection: Optional[ReadSelection] = None,
    binaries: Optional[ReadSelection] = None,
) -> Iterator[Union[ResourceBatch, BadRecord, ChunkLines, Binaries]]:
    """Parses the texts of `span_texts` into `ResourceBatch`es and `BadRecord`s, then a `ChunkLines`.

    `Resource.index` counts every line of the range, blank ones included, so
    that line numbers can be recovered from `origin`. With a `selection`, only
    the resources it admits are kept, and the last batch may be empty, to carry
    the `source_bytes` of the lines left out. A kept resource without an `id` is a
    bad record, and one updated after `transactionTime` an `information` notice.
    A line holding a `transaction`, `batch`, `collection` or `searchset` Bundle is
    read as its entries, as a Bundle file is (`transforms.read.bundles`). Lines that
    cannot be of a selected type are not parsed, nor most split (`transforms.read.line_screen`).
    The `ChunkLines` counts the range's lines.

    `binaries` (a selection of Binary, None: none) makes the same pass also yield, as `Binaries`, the
    resources it keeps, with their bodies; a line that only it may hold reports nothing of its own
    (not JSON, no id, a bad `meta.lastUpdated`), as a read of `selection` alone would not.
    """
    loads, decode_error, known = orjson.loads, orjson.JSONDecodeError, _PLAIN_TYPES
    types = selection.types if selection is not None else None
    in_window = selection.window.classify if selection is not None and selection.window is not None else None
    bodies = selection is None or selection.keep_bodies
    also = binaries.types if binaries is not None else frozenset()
    reported = (selection.screen() if selection is not None else None) if also else None  # None: every line
    find_lines = line_finder(selection if not also else union(selection, binaries))
    found: list[Resource] = []  # the Binaries, given in batches of their own
    batch: list[Resource] = []
    first = 0  # the index of the text's first line
    unreported = 0  # source bytes not yet carried by a batch
    for text in texts:
        unreported += len(text)
        count, lines = find_lines(text, first)
        for index, line in lines:
            try:
                body = loads(line)  # a CRLF line's "\r" is JSON whitespace
            except decode_error as exc:
                if line.strip() and (reported is None or reported(line)):
                    yield BadRecord(origin, index, json_error(exc))
                continue
            if type(body) is dict:
                resource_type = body.get("resourceType")
                if type(resource_type) is str and resource_type in known:
                    if resource_type in also:
                        found.extend(_kept(binaries, origin, Resource(resource_type, line.removesuffix(b"\r"),
                                                                      body, index)))
                        if len(found) >= batch_size:
                            yield Binaries(ResourceBatch(origin, found))
                            found = []
                    if types is not None and resource_type not in types:
                        continue
                    if in_window is not None:
                        try:
                            verdict = in_window(body)
                        except InvalidInstant as exc:
                            yield window_error(origin, index, exc, resource_type, body.get("id"))
                            continue
                        if verdict is not True:
                            if verdict is LATE:  # only resources past transactionTime take this path
                                yield late_record(origin, index, resource_type, body.get("id"))
                            continue
                    rid = body.get("id")
                    if type(rid) is not str or not rid:
                        yield no_id_record(origin, index, resource_type)
                        continue
                    if line[-1:] == b"\r":
                        line = line[:-1]
                    batch.append(Resource(resource_type, line, body if bodies else None, index))
                    if len(batch) >= batch_size:
                        yield ResourceBatch(origin, batch, unreported)
                        batch, unreported = [], 0
                    continue
            # The slow path: not a resource, or a Bundle (whose entries may be the resources).
            if also:
                found.extend(item for item in _unusual_line(body, line, index, origin, binaries)
                             if type(item) is Resource)
            for item in _unusual_line(body, line, index, origin, selection):
                if type(item) is not Resource:
                    if reported is None or reported(line):
                        yield item
                    continue
                batch.append(item if bodies else item._replace(body=None))
                if len(batch) >= batch_size:
                    yield ResourceBatch(origin, batch, unreported)
                    batch, unreported = [], 0
        first += count
    if batch or unreported:
        yield ResourceBatch(origin, batch, unreported)
    if found:
        yield Binaries(ResourceBatch(origin, found))
    yield ChunkLines(origin.path, origin.offset, first)


# Every R4 type but Bundle takes the hot path; a Bundle line may hold the resources as entries.
_PLAIN_TYPES = RESOURCE_TYPES - {"Bundle"}


def _kept(selection: ReadSelection, origin: Origin, resource: Resource) -> list[Resource]:
    """`resource` if `selection` keeps it; its bad records are not the read's, so none is reported."""
    return selection.select(ResourceBatch(origin, [resource]))[0].resources


def json_error(exc: orjson.JSONDecodeError, what: str = "not valid JSON") -> str:
    """Why a text is not JSON: orjson's own message (fixed texts, never the input) and the
    column, without the position text of `str(exc)`, which counts from the line's start."""
    return f"{what} ({exc.msg} at column {exc.colno})"


def _unusual_line(body: object, raw: bytes, index: int, origin: Origin, selection: Optional[ReadSelection]) -> list:
    """The `Resource`s and `BadRecord`s of a line the hot loop did not take: a Bundle, or not a resource."""
    if type(body) is not dict or body.get("resourceType") != "Bundle":
        parsed = to_resource(body, raw, index, origin)
        return [parsed] if type(parsed) is BadRecord else []  # any R4 resource but a Bundle took the hot path
    from transforms.read.bundles import bundle_items  # bundles imports this module

    raw = raw[:-1] if raw[-1:] == b"\r" else raw
    selection = selection if selection is not None else ReadSelection()
    kept: list = []
    for entry, item in bundle_items(body, raw, index, origin):
        if type(item) is Resource:
            batch, bad = selection.select(ResourceBatch(origin, [item._replace(entry=entry)]))
            kept.extend(batch.resources)
        else:
            bad = [item]
        kept.extend(bad if entry is None else (r._replace(entry=entry) for r in bad))
    return kept


def to_resource(body: object, raw: bytes, index: int, origin: Origin) -> Union[Resource, BadRecord]:
    """A parsed JSON value as a `Resource`, or a `BadRecord` saying why it is not one.

    The reason never quotes the value (e.g. an unknown `resourceType`)."""
    if type(body) is not dict:
        return BadRecord(origin, index, "not a JSON object")
    resource_type = body.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return BadRecord(origin, index, "has no resourceType")
    if resource_type not in RESOURCE_TYPES:
        return BadRecord(origin, index, UNKNOWN_TYPE)
    return Resource(resource_type, raw, body, index)


UNKNOWN_TYPE = "resourceType is not an R4 resource type"
