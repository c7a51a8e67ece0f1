"""Splitting an Avro file at its sync markers, so one large file is read by many workers.

An Avro object container file is a header (magic, metadata, a 16-byte sync
marker) then blocks: a record count, a byte size, the (possibly compressed)
records, and the sync marker again. `block_ranges` walks the block headers
only, seeking over their data, and cuts the file into byte ranges of whole
blocks of about `chunk_bytes`, each with the number of records before it (so
record numbers in error files stay those of the whole file). `range_stream`
gives one range as a complete Avro file (the header, then its blocks), which
fastavro reads as usual. fastavro decodes the header and the block counts.

A read that keeps only some resource types walks the blocks itself (`BlockScreen`):
a block whose bytes hold no selected type's encoded name is dropped undecoded, and
only the others reach fastavro.
"""

from __future__ import annotations

import io
import zlib
from typing import IO, Callable, Iterator, NamedTuple, Optional

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
    return _Joined(head, io.BytesIO(f.read(end - start)))  # type: ignore[return-value]


class AvroHeader(NamedTuple):
    """An Avro file's header: its bytes, its writer schema (parsed), codec and sync marker."""

    data: bytes
    schema: dict
    codec: str
    sync: bytes


class _Joined:
    """A read-only stream of `head`, then the rest of `f`; with `keep`, it keeps what it read."""

    def __init__(self, head: bytes, f: IO[bytes], keep: bool = False):
        self._head, self._f, self._kept = io.BytesIO(head), f, [] if keep else None

    def read(self, n: int = -1) -> bytes:
        data = self._head.read(n)
        if n < 0 or len(data) < n:
            data += self._f.read(-1 if n < 0 else n - len(data))
            if self._kept is None:  # `head` is spent: read `f` itself from now on
                self.read = self._f.read  # type: ignore[method-assign]
        if self._kept is not None:
            self._kept.append(data)
        return data

    def kept(self) -> bytes:
        return b"".join(self._kept or ())


def read_header(f: IO[bytes]) -> AvroHeader:
    """The header of the Avro file `f` (which is left at its first block); fastavro's errors when it is none."""
    tape = _Joined(b"", f, keep=True)
    schema = fastavro.reader(tape).writer_schema
    data = tape.kept()
    header = fastavro.schemaless_reader(io.BytesIO(data), _HEADER)
    codec = header["meta"].get("avro.codec", b"null").decode()
    return AvroHeader(data, schema, codec, header["sync"])


def rejoined(header: AvroHeader, f: IO[bytes]) -> IO[bytes]:
    """The Avro file `f` whole again, after `read_header` read its header."""
    return _Joined(header.data, f)


# How a block's records are read back from its bytes, by codec; other codecs' blocks are never screened.
_RECORD_BYTES: dict[str, Callable[[bytes], bytes]] = {
    "null": lambda data: data,
    "deflate": lambda data: zlib.decompress(data, -15),
}


class BlockScreen:
    """Finds the blocks of an Avro file that may hold a record of one of `types` without decoding any.

    A record's `resourceType` (a string: its length as a varint, then its UTF-8 bytes) lies in its
    block's bytes as is, so a block in which no selected type's encoding occurs holds none of them
    and is left out undecoded; the others may still hold other types, which their reader tests.
    When most blocks hold one, screening costs more than it saves: it stops, and `first` says where."""

    DENSE = 0.75  # stop when at least this share of the blocks screened (at least `AFTER`) was kept
    AFTER = 16

    def __init__(self, f: IO[bytes], header: AvroHeader, types: frozenset[str], first: int):
        self._f, self._header, self.first = f, header, first  # `first`: the number of the next record
        self._markers = [_encoded(name) for name in types]

    def runs(self, batch_size: int) -> Iterator[tuple[bytes, list[range]]]:
        """The kept blocks in runs of about `batch_size` records: each run an Avro file of its own (the
        header, then its blocks) with the numbers of its blocks' records, one range per block."""
        record_bytes, markers = _RECORD_BYTES.get(self._header.codec), self._markers
        blocks: list[bytes] = []
        spans: list[range] = []
        records = seen = kept = 0
        while not (seen >= self.AFTER and kept >= seen * self.DENSE):
            block = _next_block(self._f, self._header.sync)
            if block is None:
                break
            raw, count, data = block
            seen += 1
            if record_bytes is None or any(marker in record_bytes(data) for marker in markers):
                kept += 1
                blocks.append(raw)
                spans.append(range(self.first, self.first + count))
                records += count
            self.first += count
            if records >= batch_size:
                yield self._header.data + b"".join(blocks), spans
                blocks, spans, records = [], [], 0
        if blocks:
            yield self._header.data + b"".join(blocks), spans


def _encoded(text: str) -> bytes:
    """An Avro string's encoding."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "string", text)
    return out.getvalue()


def _next_block(f: IO[bytes], sync: bytes) -> Optional[tuple[bytes, int, bytes]]:
    """The next block of `f`: its bytes (record count, size, data, sync marker), record count and data;
    None at the end of the file. Raises EOFError when it is cut short, ValueError when it is malformed."""
    first = f.read(1)
    if not first:
        return None
    tape = _Joined(first, f, keep=True)  # the block's head, as fastavro decodes its two longs
    try:
        count = fastavro.schemaless_reader(tape, "long")
        size = fastavro.schemaless_reader(tape, "long")
    except (EOFError, IndexError):  # fastavro's IndexError: a varint cut short
        raise EOFError("a block header is cut short") from None
    if count < 0 or size < 0:
        raise ValueError("a negative block count or size")
    data = f.read(size)
    marker = f.read(16)
    if len(data) < size or len(marker) < 16:
        raise EOFError("a block is cut short")
    if marker != sync:
        raise ValueError("a block does not end with the file's sync marker")
    return tape.kept() + data + marker, count, data
