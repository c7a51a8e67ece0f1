"""NDJSON: the lines of a byte range of a file, parsed once into resources.

This is the export's hot loop. Lines are read in blocks and split in bulk, a
line is parsed once with orjson, and the common case (a JSON object with an R4
`resourceType`) costs one dict lookup beyond the parse, plus the read's
`ReadSelection` test. Anything else is explained on a slow path and becomes a
`BadRecord`.
"""

from __future__ import annotations

from typing import IO, Iterator, Optional, Union

import orjson

from transforms.fhir.instant import InvalidInstant
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.read.pushdown import ReadSelection, window_error
from transforms.records import BadRecord, Origin, Resource, ResourceBatch

# Small enough that a block's lines are parsed while still in the CPU cache (1 MiB
# blocks made parsing about 15% slower than reading line by line).
BLOCK_BYTES = 64 << 10
BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark, which some writers put first


def span_blocks(f: IO[bytes], start: int, end: Optional[int]) -> Iterator:
    """Yields the offset of the first line, then lists of the lines starting in [start, end).

    A line belongs to the range in which its first byte lies, so adjacent
    ranges split a file into its lines with none lost or read twice. `end`
    None reads to the end of the stream. A UTF-8 BOM opening a file is dropped.
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
                yield [b"".join(pending).removeprefix(BOM) if first else b"".join(pending)]
            return
        if b"\n" not in block:  # a long line: join its pieces once it ends, not block by block
            pending.append(block)
            continue
        data = b"".join(pending) + block if pending else block
        lines = data.split(b"\n")
        tail = lines.pop()
        pending = [tail] if tail else []
        if first:
            lines[0] = lines[0].removeprefix(BOM)
            first = False
        consumed = len(data) - len(tail)
        if end is None or pos + consumed <= end:
            pos += consumed
            yield lines
            continue
        kept = []  # the range ends inside this block: keep the lines starting before it
        for line in lines:
            kept.append(line)
            pos += len(line) + 1
            if pos >= end:
                break
        yield kept
        return


def span_lines(f: IO[bytes], start: int, end: Optional[int]) -> Iterator:
    """`span_blocks`, one line at a time (after the first line's offset)."""
    blocks = span_blocks(f, start, end)
    yield next(blocks)
    for lines in blocks:
        yield from lines


def parse_lines(
    blocks: Iterator[list[bytes]], origin: Origin, batch_size: int, selection: Optional[ReadSelection] = None
) -> Iterator[Union[ResourceBatch, BadRecord]]:
    """Parses blocks of lines into `ResourceBatch`es and `BadRecord`s; blank lines are skipped.

    `Resource.index` counts every line of the range, blank ones included, so
    that line numbers can be recovered from `origin`. With a `selection`, only
    the resources it admits are kept, and the last batch may be empty, to carry
    the `source_bytes` of the lines left out.
    """
    loads, decode_error, known = orjson.loads, orjson.JSONDecodeError, RESOURCE_TYPES
    types = selection.types if selection is not None else None
    in_window = selection.window.admits if selection is not None and selection.window is not None else None
    bodies = selection is None or selection.keep_bodies
    batch: list[Resource] = []
    first = 0  # the index of the block's first line
    unreported = 0  # source bytes not yet carried by a batch
    for lines in blocks:
        unreported += sum(map(len, lines)) + len(lines)
        for offset, line in enumerate(lines):
            try:
                body = loads(line)  # a CRLF line's "\r" is JSON whitespace
            except decode_error as exc:
                if line.strip():
                    yield BadRecord(origin, first + offset, f"not valid JSON ({exc})")
                continue
            if type(body) is dict:
                resource_type = body.get("resourceType")
                if type(resource_type) is str and resource_type in known:
                    if types is not None and resource_type not in types:
                        continue
                    if in_window is not None:
                        try:
                            if not in_window(body):
                                continue
                        except InvalidInstant as exc:
                            yield window_error(origin, first + offset, exc, resource_type)
                            continue
                    if line[-1:] == b"\r":
                        line = line[:-1]
                    batch.append(Resource(resource_type, line, body if bodies else None, first + offset))
                    if len(batch) >= batch_size:
                        yield ResourceBatch(origin, batch, unreported)
                        batch, unreported = [], 0
                    continue
            yield to_resource(body, line, first + offset, origin)
        first += len(lines)
    if batch or unreported:
        yield ResourceBatch(origin, batch, unreported)


def to_resource(body: object, raw: bytes, index: int, origin: Origin) -> Union[Resource, BadRecord]:
    """A parsed JSON value as a `Resource`, or a `BadRecord` saying why it is not one."""
    if type(body) is not dict:
        return BadRecord(origin, index, "not a JSON object")
    resource_type = body.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return BadRecord(origin, index, "has no resourceType")
    if resource_type not in RESOURCE_TYPES:
        return BadRecord(origin, index, f"resourceType {resource_type!r} is not an R4 resource type")
    return Resource(resource_type, raw, body, index)
