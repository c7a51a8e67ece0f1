"""Chunks: what `--source` names, split into units of reading, and the files behind them.

A source (file, glob or folder, any scheme Beam's FileSystems knows) becomes
chunks: line-aligned byte ranges of plain NDJSON files, whole gzip files,
whole JSON documents (Bundles), Parquet row groups and whole Avro files. Only
these small descriptors are shuffled; `transforms.read.resources` reads them.
"""

from __future__ import annotations

import gzip
import os
import posixpath
from typing import IO, Iterable, Iterator, NamedTuple

import orjson
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.read.columnar import parquet_row_groups
from transforms.read.ndjson import BLOCK_BYTES, BOM
from transforms.read.source_formats import (
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


class SourceError(IOError):
    """The source is missing or unreadable; the whole export must fail."""


class Chunk(NamedTuple):
    """A unit of reading: a byte range of a plain NDJSON file, row groups of a Parquet file, or a whole file."""

    path: str
    start: int
    end: int  # exclusive; -1 for a whole (gzip, document or Avro) file
    gzip: bool
    document: bool
    columnar: str = ""  # `avro` or `parquet`; then start and end count Parquet row groups


def match_source(source: str) -> list[tuple[str, int]]:
    """Lists `(path, size)` of the files `source` names, or raises `SourceError`."""
    pattern = source
    if source.endswith("/") or (_is_local_dir(source) if FileSystems.get_scheme(source) is None
                                else _is_object_folder(source)):
        pattern = FileSystems.join(source.rstrip("/") or "/", "*")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # Beam raises BeamIOError with the cause inside
        raise SourceError(f"cannot list source {source!r}: {exc}") from exc
    base = _literal_prefix(pattern)
    files = sorted(
        (m.path, m.size_in_bytes)
        for m in found
        if not _is_hidden(m.path, base) and not _is_local_dir(m.path)
    )
    if not files:
        raise SourceError(f"source {source!r} matches no files")
    return files


def _is_object_folder(source: str) -> bool:
    """In an object store (gs://) a folder is a prefix: a plain name that is not an object itself."""
    return not any(c in source for c in "*?[") and not FileSystems.exists(source)


def _literal_prefix(pattern: str) -> str:
    """The folder part of a pattern before its first wildcard."""
    cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
    return pattern[: pattern.rfind("/", 0, cut) + 1]


def _is_hidden(path: str, base: str) -> bool:
    """True when a file, or a folder the pattern reached into, is hidden (e.g. `.parts-tmp-1`)."""
    relative = path[len(base) :] if path.startswith(base) else posixpath.basename(path)
    return any(segment.startswith(".") for segment in relative.split("/"))


def _is_local_dir(path: str) -> bool:
    return FileSystems.get_scheme(path) is None and os.path.isdir(path)


def _open(path: str) -> IO[bytes]:
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
        # Largest first: a runner that deals chunks out in turn (the local runner's
        # workers) then ends with small ones, so its workers finish together.
        planned = [chunk for path, size in match_source(source) if size for chunk in self._plan(path, size)]
        for _, chunk in sorted(planned, key=lambda sized: -sized[0]):
            yield chunk

    def _plan(self, path: str, size: int) -> Iterator[tuple[int, Chunk]]:
        """The file's chunks, each with its size in bytes (estimated for Parquet row groups)."""
        with _open(path) as f:
            head = f.read(4)
        columnar = self._columnar(path, head)
        if columnar:
            chunks = list(_columnar_chunks(path, columnar))
            yield from ((size // len(chunks), chunk) for chunk in chunks)
            return
        is_gzip = head[:2] == GZIP_MAGIC
        document = self._is_document(path, is_gzip)
        if is_gzip or document:
            yield size, Chunk(path, 0, -1, is_gzip, document)
            return
        # Equal byte ranges (ceil divisions), rather than full ones and a small remainder.
        ranges = -(-size // self._chunk_bytes)
        step = -(-size // ranges)
        for start in range(0, size, step):
            yield min(step, size - start), Chunk(path, start, min(start + step, size), False, False)

    def _columnar(self, path: str, head: bytes) -> str:
        if self._format in COLUMNAR_FORMATS:
            return self._format
        return (columnar_kind(path, head) or "") if self._format == AUTO else ""

    def _is_document(self, path: str, is_gzip: bool) -> bool:
        if self._format != AUTO:
            return self._format == DOCUMENT
        name = path[:-3] if path.endswith(".gz") else path
        if name.endswith(NDJSON_SUFFIXES):
            return False
        if name.endswith(DOCUMENT_SUFFIXES):
            return True
        # Any other name: NDJSON when its first line is a complete JSON object.
        with _reader(path, is_gzip) as f:
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


def _columnar_chunks(path: str, kind: str) -> Iterator[Chunk]:
    """One chunk per Parquet row group (at least one, which reports a bad schema); an Avro file whole."""
    if kind != PARQUET:
        yield Chunk(path, 0, -1, False, False, kind)
        return
    with _open(path) as f:
        try:
            groups = parquet_row_groups(f)
        except OSError as exc:
            raise SourceError(f"cannot read source file {path!r}: {exc}") from exc
    for group in range(max(groups, 1)):
        yield Chunk(path, group, group + 1, False, False, kind)


def _reader(path: str, is_gzip: bool) -> IO[bytes]:
    raw = _open(path)
    return gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw



def plan_chunks(source: str, source_format: str = AUTO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """The chunks of `source`, largest first."""
    return ChunkPlanner(source_format, chunk_bytes).plan(source)


def open_chunk(chunk: Chunk) -> IO[bytes]:
    """The chunk's file, decompressed when it is gzip."""
    return _reader(chunk.path, chunk.gzip)


def count_newlines_before(path: str, offsets: Iterable[int]) -> dict[int, int]:
    """Counts newlines before each byte offset of a plain file, in one pass."""
    wanted = sorted(set(offsets))
    counts: dict[int, int] = {}
    seen = pos = 0
    with _open(path) as f:
        for offset in wanted:
            while pos < offset:
                block = f.read(min(BLOCK_BYTES, offset - pos))
                if not block:
                    break
                seen += block.count(b"\n")
                pos += len(block)
            counts[offset] = seen
    return counts
