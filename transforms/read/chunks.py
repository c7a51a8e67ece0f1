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
import stat
from typing import IO, Iterator, NamedTuple, Optional, Union

import orjson
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.read.avro_blocks import block_ranges
from transforms.read.columnar import parquet_row_groups
from transforms.read.ndjson import BOM
from transforms.read.pg_source import SCHEMES as PG_SCHEMES
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
from transforms.records import BadRecord, Origin

DOCUMENT_ORIGIN, WHOLE_FILE = -1, -1  # a refused file is reported as a whole file


class SourceError(IOError):
    """The source is missing or unreadable; the whole export must fail."""


class Chunk(NamedTuple):
    """A unit of reading: a byte range of a plain NDJSON file, row groups of a Parquet file, or a whole file."""

    path: str
    start: int
    end: int  # exclusive; -1 for a whole (gzip, document or Avro) file
    gzip: bool
    document: bool
    columnar: str = ""  # `avro` or `parquet`; then start and end count Parquet row groups (Avro: bytes)
    first: int = 0  # an Avro range's records before it


class Refused(NamedTuple):
    """A file of the source that is never opened, and why: a link leading out of the source's
    folder, or not a regular file (a FIFO, a socket, a device)."""

    path: str
    reason: str


LINK_OUT = "a link whose target is outside the source folder (not followed)"
NOT_REGULAR = "not a regular file (a FIFO, socket or device; not opened)"


def match_source(source: str) -> list[tuple[str, int]]:
    """Lists `(path, size)` of the files `source` names, or raises `SourceError`."""
    return list_source(source)[0]


def list_source(source: str) -> tuple[list[tuple[str, int]], list[Refused]]:
    """`(path, size)` of the files `source` names, and the files it names that are refused.

    A folder is read recursively; hidden files and folders (a name starting with
    `.`) are skipped. In a local folder or glob, a link whose target lies outside
    the source's folder is refused, as is anything but a regular file: neither is
    ever opened. Raises `SourceError` when nothing at all matches, or when the
    source itself is not a regular file or folder (a FIFO would block its reader).
    """
    local = FileSystems.get_scheme(source) is None
    if local and not source.endswith("/") and not any(c in source for c in "*?[") and os.path.lexists(source):
        if os.path.isdir(source):
            return _local_folder(source)
        if not os.path.exists(source):
            raise SourceError(f"source {source!r} is a broken link")
        if not stat.S_ISREG(os.stat(source).st_mode):
            raise SourceError(f"source {source!r} is not a regular file or a folder (e.g. a FIFO); it is not read")
    if local and source.endswith("/") and os.path.isdir(source):
        return _local_folder(source)
    pattern = source
    if source.endswith("/") or (not local and _is_object_folder(source)):
        pattern = source.rstrip("/") + "/**"  # every object under the prefix, at any depth
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as exc:  # Beam raises BeamIOError with the cause inside
        raise SourceError(f"cannot list source {source!r}: {exc}") from exc
    base = _literal_prefix(pattern)
    files, refused = [], []
    # In a local glob, links must stay inside its folder; a single file named as the source is the
    # operator's own choice, link or not.
    globbed = any(c in pattern for c in "*?[")
    inside = os.path.realpath(base or ".") if local and globbed else None
    for m in sorted(found, key=lambda m: m.path):
        if _is_hidden(m.path, base) or _is_local_dir(m.path):
            continue
        if local:
            problem = _local_problem(m.path, inside)
            if problem:
                refused.append(Refused(m.path, problem))
                continue
        files.append((m.path, m.size_in_bytes))
    if not files and not refused:
        raise SourceError(f"source {source!r} matches no files")
    return files, refused


def _local_problem(path: str, inside: Optional[str]) -> Optional[str]:
    """Why a matched local file must not be read, or None (`inside`: the folder it must stay in)."""
    if inside is not None and not _within(os.path.realpath(path), inside):
        return LINK_OUT
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return NOT_REGULAR
    return None if stat.S_ISREG(mode) else NOT_REGULAR


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _local_folder(source: str) -> tuple[list[tuple[str, int]], list[Refused]]:
    """A local folder's files at any depth, without following links out of it (nor in circles)."""
    top = source.rstrip("/") or "/"
    inside = os.path.realpath(top)
    files: list[tuple[str, int]] = []
    refused: list[Refused] = []
    seen = {inside}
    pending = [top]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"cannot list source folder {folder!r}: {exc}") from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = f"{folder.rstrip('/')}/{entry.name}"
            if entry.is_symlink():
                target = os.path.realpath(path)
                if not _within(target, inside):
                    refused.append(Refused(path, LINK_OUT))
                    continue
                if os.path.isdir(target):
                    if target not in seen:  # a link back up the tree is read once, at its real place
                        seen.add(target)
                        pending.append(path)
                    continue
            elif entry.is_dir(follow_symlinks=False):
                real = os.path.realpath(path)
                if real not in seen:
                    seen.add(real)
                    pending.append(path)
                continue
            try:
                info = os.stat(path)
            except OSError:
                refused.append(Refused(path, NOT_REGULAR))
                continue
            if not stat.S_ISREG(info.st_mode):
                refused.append(Refused(path, NOT_REGULAR))
                continue
            files.append((path, info.st_size))
    if not files and not refused:
        raise SourceError(f"source {source!r} matches no files")
    return sorted(files), sorted(refused)


def source_root(source: str) -> str:
    """The prefix that error files strip from a source file's path: the `--source` folder
    (with its `/`), a glob's folder before its first wildcard, or a single file's folder; "" for
    a PostgreSQL source, whose errors name the table."""
    if source.startswith(PG_SCHEMES):
        return ""
    if any(c in source for c in "*?["):
        return _literal_prefix(source)
    if source.endswith("/"):
        return source
    if FileSystems.get_scheme(source) is None:
        if os.path.isdir(source):
            return source + "/"
    elif _is_object_folder(source):
        return source + "/"
    return source[: source.rfind("/") + 1]


def relative_path(path: str, root: str) -> str:
    """`path` relative to a `source_root`; a path outside it is named by its file name only."""
    if root and path.startswith(root) and len(path) > len(root):
        return path[len(root):]
    return posixpath.basename(path)


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
        """The chunks of the source's readable files; refused files are left out."""
        return (item for item in self.plan_all(source) if type(item) is Chunk)

    def plan_all(self, source: str) -> Iterator[Union[Chunk, BadRecord]]:
        """The chunks, after a `BadRecord` for each refused file (which is never opened)."""
        files, refused = list_source(source)
        for path, reason in refused:
            yield BadRecord(Origin(path, DOCUMENT_ORIGIN), WHOLE_FILE, reason)
        # Largest first: a runner that deals chunks out in turn (the local runner's
        # workers) then ends with small ones, so its workers finish together.
        planned = [chunk for path, size in files if size for chunk in self._plan(path, size)]
        for _, chunk in sorted(planned, key=lambda sized: -sized[0]):
            yield chunk

    def _plan(self, path: str, size: int) -> Iterator[tuple[int, Chunk]]:
        """The file's chunks, each with its size in bytes (estimated for Parquet row groups)."""
        with _open(path) as f:
            head = f.read(4)
        columnar = self._columnar(path, head)
        if columnar:
            chunks = list(_columnar_chunks(path, columnar, self._chunk_bytes))
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


def _columnar_chunks(path: str, kind: str, chunk_bytes: int) -> Iterator[Chunk]:
    """One chunk per Parquet row group (at least one, which reports a bad schema); a local Avro file in
    ranges of whole blocks of about `chunk_bytes` (`transforms.read.avro_blocks`), a remote one whole
    (walking its block headers would cost a request per block)."""
    if kind != PARQUET:
        ranges = []
        if FileSystems.get_scheme(path) is None:
            with _open(path) as f:
                ranges = block_ranges(f, chunk_bytes)
        if len(ranges) < 2:
            yield Chunk(path, 0, -1, False, False, kind)
        for r in ranges if len(ranges) > 1 else ():
            yield Chunk(path, r.start, r.end, False, False, kind, r.first)
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
    """The chunks of `source`, largest first (refused files left out)."""
    return ChunkPlanner(source_format, chunk_bytes).plan(source)


def plan_source(source: str, source_format: str = AUTO, chunk_bytes: int = CHUNK_BYTES) -> Iterator:
    """`plan_chunks`, after a `BadRecord` for each refused file of `source`."""
    return ChunkPlanner(source_format, chunk_bytes).plan_all(source)


def open_chunk(chunk: Chunk) -> IO[bytes]:
    """The chunk's file, decompressed when it is gzip."""
    return _reader(chunk.path, chunk.gzip)
