"""Splitting an Avro file at its sync markers, so one large file is read by many workers.

An Avro object container file is a header (magic, metadata, a 16-byte sync
marker) then blocks: a record count, a byte size, the (possibly compressed)
records, and the sync marker again. `block_ranges` walks the block headers
only, seeking over their data, and cuts the file into byte ranges of whole
blocks of about `chunk_bytes`, each with the number of records before it (so
record numbers in error files stay those of the whole file). `range_stream`
gives one range as a complete Avro file (the header, then its blocks), which
fastavro reads as usual. fastavro decodes the header and the block counts.
"""

from __future__ import annotations

import io
from typing import IO, NamedTuple

import fastavro

# The container file's header, as the Avro specification defines it.
_HEADER = fastavro.parse_schema({
    "type": "record", "name": "org.apache.avro.file.Header",
    "fields": [
        {"name": "magic", "type": {"type": "fixed", "name": "Magic", "size": 4}},
        {"name": "meta", "type": {"type": "map", "values": "bytes"}},
        {"name": "sync", "type": {"type": "fixed", "name": "Sync", "size": 16}},
    ],
})
_MAGIC = b"Obj\x01"


class BlockRange(NamedTuple):
    """Whole blocks `[start, end)` of an Avro file (byte offsets), and the records before `start`."""

    start: int
    end: int
    first: int


def block_ranges(f: IO[bytes], chunk_bytes: int) -> list[BlockRange]:
    """The file's blocks grouped into ranges of about `chunk_bytes`; [] when the file is not a
    well-formed container (a truncated or corrupt file is then read whole, and its reader says why)."""
    try:
        header = fastavro.schemaless_reader(f, _HEADER)
        if header["magic"] != _MAGIC:
            return []
        sync, position = header["sync"], f.tell()
        ranges, start, records, first = [], position, 0, 0
        while True:
            if not f.read(1):
                break
            f.seek(-1, io.SEEK_CUR)
            count = fastavro.schemaless_reader(f, "long")
            size = fastavro.schemaless_reader(f, "long")
            f.seek(size, io.SEEK_CUR)
            if count < 0 or size < 0 or f.read(16) != sync:
                return []
            records += count
            position = f.tell()
            if position - start >= chunk_bytes:
                ranges.append(BlockRange(start, position, first))
                start, first = position, records
    except (EOFError, ValueError, OSError, StopIteration):
        return []
    if position > start or not ranges:
        ranges.append(BlockRange(start, position, first))
    return ranges


def range_stream(f: IO[bytes], start: int, end: int) -> IO[bytes]:
    """The blocks `[start, end)` of an Avro file as an Avro file of their own: its header, then them."""
    f.seek(0)
    fastavro.schemaless_reader(f, _HEADER)
    length = f.tell()
    f.seek(0)
    head = f.read(length)
    f.seek(start)
    return io.BytesIO(head + f.read(end - start))
