"""Chunks: what `--source` names, split into units of reading, and the files behind them.

A source (file, glob or folder, any scheme Beam's FileSystems knows) becomes
chunks: line-aligned byte ranges of plain NDJSON files, whole gzip files,
whole JSON documents (Bundles), Parquet row groups and whole Avro files. Only
these small descriptors are shuffled; `transforms.read.resources` reads them.
"""

from __future__ import annotations

import gzip
from typing import IO, Iterator, NamedTuple, Optional, Union

import orjson
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.read.avro_blocks import block_ranges
from transforms.read.columnar import parquet_row_groups
from transforms.read.ndjson import BOM
from transforms.records import BadRecord, Origin
from transforms.storage.source_files import (
    LINK_IN,
    SWAPPED,
    LocalFile,
    NotListed,
    SourceError,
    open_listed,
    source_files,
)
from transforms.storage.source_formats import (
    AUTO,
    CHUNK_BYTES,
    COLUMNAR_FORMATS,
    DOCUMENT,
    DOCUMENT_SUFFIXES,
    GZIP_MAGIC,
    NDJSON_SUFFIXES,
    PARQUET,
    columnar_kind,
)

DOCUMENT_ORIGIN, WHOLE_FILE = -1, -1  # a refused file is reported as a whole file


class Chunk(NamedTuple):
    """A unit of reading: a byte range of a plain NDJSON file, row groups of a Parquet file, or a whole file."""

    path: str
    start: int
    end: int  # exclusive; -1 for a whole (gzip, document or Avro) file
    gzip: bool
    document: bool
    columnar: str = ""  # `avro` or `parquet`; then start and end count Parquet row groups (Avro: bytes)
    first: int = 0  # an Avro range's records before it
    file: Optional[LocalFile] = None  # a local file as listed, which its reader checks it finds


def _open(path: str, file: Optional[LocalFile] = None) -> IO[bytes]:
    if file is not None:
        return open_listed(path, file)
    try:
        return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception as exc:
        raise SourceError(f"cannot read source file {path!r}: {exc}") from exc


class ChunkPlanner:
    """Splits every matched file into chunks; sniffs gzip and NDJSON-vs-document."""

    def __init__(self, source_format: str, chunk_bytes: int):
        self._format = source_format
        self._chunk_bytes = chunk_bytes

    def plan(self, source: str) -> Iterator[Chunk]:
        """The chunks of the source's readable files; refused files are left out."""
        return (item for item in self.plan_all(source) if type(item) is Chunk)

    def plan_all(self, source: str) -> Iterator[Union[Chunk, BadRecord]]:
        """The chunks, after a `BadRecord` for each refused file (which is never opened), each link
        to a file read at another name (an `information` notice), and each file found swapped."""
        listing = source_files(source)
        for path, reason in listing.refused:
            yield BadRecord(Origin(path, DOCUMENT_ORIGIN), WHOLE_FILE, reason)
        for path in listing.linked:
            yield BadRecord(Origin(path, DOCUMENT_ORIGIN), WHOLE_FILE, LINK_IN, code="informational",
                            severity="information")
        # Largest first: a runner that deals chunks out in turn (the local runner's
        # workers) then ends with small ones, so its workers finish together.
        planned = []
        for path, size, file in listing.files:
            if size:
                try:
                    planned += self._plan(path, size, file)
                except NotListed:
                    yield swapped(path)
        for _, chunk in sorted(planned, key=lambda sized: -sized[0]):
            yield chunk

    def _plan(self, path: str, size: int, file: Optional[LocalFile]) -> list[tuple[int, Chunk]]:
        """The file's chunks, each with its size in bytes (estimated for Parquet row groups)."""
        with _open(path, file) as f:
            head = f.read(4)
        columnar = self._columnar(path, head)
        if columnar:
            chunks = list(_columnar_chunks(path, columnar, self._chunk_bytes, file))
            return [(size // len(chunks), chunk) for chunk in chunks]
        is_gzip = head[:2] == GZIP_MAGIC
        document = self._is_document(path, is_gzip, file)
        if is_gzip or document:
            return [(size, Chunk(path, 0, -1, is_gzip, document, file=file))]
        # Equal byte ranges (ceil divisions), rather than full ones and a small remainder.
        ranges = -(-size // self._chunk_bytes)
        step = -(-size // ranges)
        return [(min(step, size - start), Chunk(path, start, min(start + step, size), False, False, file=file))
                for start in range(0, size, step)]

    def _columnar(self, path: str, head: bytes) -> str:
        if self._format in COLUMNAR_FORMATS:
            return self._format
        return (columnar_kind(path, head) or "") if self._format == AUTO else ""

    def _is_document(self, path: str, is_gzip: bool, file: Optional[LocalFile]) -> bool:
        if self._format != AUTO:
            return self._format == DOCUMENT
        name = path[:-3] if path.endswith(".gz") else path
        if name.endswith(NDJSON_SUFFIXES):
            return False
        if name.endswith(DOCUMENT_SUFFIXES):
            return True
        # Any other name: NDJSON when its first line is a complete JSON object.
        with _reader(path, is_gzip, file) as f:
            first = b""
            while not first:
                line = f.readline()
                if not line:
                    break
                first = line.strip().removeprefix(BOM)
        try:
            return not isinstance(orjson.loads(first), dict)
        except orjson.JSONDecodeError:
            return True


def _columnar_chunks(path: str, kind: str, chunk_bytes: int, file: Optional[LocalFile]) -> Iterator[Chunk]:
    """One chunk per Parquet row group (at least one, which reports a bad schema); a local Avro file in
    ranges of whole blocks of about `chunk_bytes` (`transforms.read.avro_blocks`), a remote one whole
    (walking its block headers would cost a request per block)."""
    if kind != PARQUET:
        ranges = []
        if FileSystems.get_scheme(path) is None:
            with _open(path, file) as f:
                ranges = block_ranges(f, chunk_bytes)
        if len(ranges) < 2:
            yield Chunk(path, 0, -1, False, False, kind, file=file)
        for r in ranges if len(ranges) > 1 else ():
            yield Chunk(path, r.start, r.end, False, False, kind, r.first, file)
        return
    with _open(path, file) as f:
        try:
            groups = parquet_row_groups(f)
        except OSError as exc:
            raise SourceError(f"cannot read source file {path!r}: {exc}") from exc
    for group in range(max(groups, 1)):
        yield Chunk(path, group, group + 1, False, False, kind, file=file)


def _reader(path: str, is_gzip: bool, file: Optional[LocalFile] = None) -> IO[bytes]:
    raw = _open(path, file)
    return gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw


def swapped(path: str) -> BadRecord:
    """The report of a listed file found swapped (`SWAPPED`), which is not read."""
    return BadRecord(Origin(path, DOCUMENT_ORIGIN), WHOLE_FILE, SWAPPED)


def plan_chunks(source: str, source_format: str = AUTO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """The chunks of `source`, largest first (refused files left out)."""
    return ChunkPlanner(source_format, chunk_bytes).plan(source)


def plan_source(source: str, source_format: str = AUTO, chunk_bytes: int = CHUNK_BYTES) -> Iterator:
    """`plan_chunks`, after a `BadRecord` for each refused file of `source`."""
    return ChunkPlanner(source_format, chunk_bytes).plan_all(source)


def open_chunk(chunk: Chunk) -> IO[bytes]:
    """The chunk's file, decompressed when it is gzip; raises `NotListed` when a local file is not
    the one listed."""
    return _reader(chunk.path, chunk.gzip, chunk.file)
