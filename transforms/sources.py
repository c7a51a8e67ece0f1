"""Reading FHIR resources from NDJSON, Bundle, Avro and Parquet files as batches.

`ReadResources` expands a `--source` (file, glob or directory, any scheme Beam's
FileSystems knows) into chunks: line-aligned byte ranges of plain NDJSON files,
whole gzip files, whole JSON documents (Bundles), Parquet row groups and whole
Avro files (`transforms.columnar`). Only those small chunk
descriptors are shuffled; each chunk is then read, parsed once with orjson and
emitted as `ResourceBatch`es. Lines that are not resources go to the `errors`
output as `BadRecord`s, so a bad line never fails the job and is never lost.
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import os
import posixpath
import threading
from typing import IO, Iterable, Iterator, NamedTuple, Optional, Union

import apache_beam as beam
import orjson
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms.bundles import document_resources
from transforms.columnar import COLUMNAR_FORMATS, PARQUET, columnar_kind, parquet_row_groups, read_columnar
from transforms.ndjson import BLOCK_BYTES, BOM, parse_lines, span_blocks
from transforms.records import BadRecord, Origin, ResourceBatch
from transforms.selection import ReadSelection
from transforms import gcs  # noqa: F401  (on an emulator, GCS access is anonymous at once)

NDJSON, DOCUMENT, AUTO = "ndjson", "bundle", "auto"
SOURCE_FORMATS = (AUTO, NDJSON, DOCUMENT, *COLUMNAR_FORMATS)
_NDJSON_SUFFIXES = (".ndjson", ".jsonl")
_DOCUMENT_SUFFIXES = (".json",)
_GZIP_MAGIC = b"\x1f\x8b"
# Bytes of NDJSON per chunk: small enough that the local runner's workers, dealt
# chunks in turn, finish together (16 MiB left one idle for ~0.1 s of a 1 s export).
CHUNK_BYTES = 4 << 20
# Resources per batch: few enough that parsed bodies a later step reads are still in
# the CPU cache when it runs (2,000 made Group, _typeFilter and _elements exports 10-15% slower).
BATCH_SIZE = 500


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


class ReadResources(beam.PTransform):
    """Reads `source` into `ResourceBatch`es (tag `batches`) and `BadRecord`s (tag `errors`).

    A `selection` keeps only the resources it admits (see `transforms.selection`).
    """

    def __init__(
        self,
        source: str,
        source_format: str = AUTO,
        chunk_bytes: int = CHUNK_BYTES,
        batch_size: int = BATCH_SIZE,
        selection: Optional[ReadSelection] = None,
    ):
        super().__init__()
        if source_format not in SOURCE_FORMATS:
            raise ValueError(f"source format must be one of {SOURCE_FORMATS}")
        self._source = source
        self._format = source_format
        self._chunk_bytes = chunk_bytes
        self._batch_size = batch_size
        self._selection = selection

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        return (
            pbegin
            | "Source" >> beam.Create([self._source])
            | "PlanChunks" >> beam.ParDo(_PlanChunksFn(self._format, self._chunk_bytes))
            | "Spread" >> beam.Reshuffle()
            | "ReadChunks"
            >> beam.ParDo(_ReadChunkFn(self._batch_size, self._selection))
            .with_output_types(ResourceBatch)
            .with_outputs("errors", main="batches")
        )


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


class _PlanChunksFn(beam.DoFn):
    """Splits every matched file into chunks; sniffs gzip and NDJSON-vs-document."""

    def __init__(self, source_format: str, chunk_bytes: int):
        self._format = source_format
        self._chunk_bytes = chunk_bytes

    def process(self, source: str) -> Iterator[Chunk]:
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
        is_gzip = head[:2] == _GZIP_MAGIC
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
        if name.endswith(_NDJSON_SUFFIXES):
            return False
        if name.endswith(_DOCUMENT_SUFFIXES):
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


class _ReadChunkFn(beam.DoFn):
    """Reads one chunk and emits batches of the selected parsed resources, plus bad records."""

    def __init__(self, batch_size: int, selection: Optional[ReadSelection] = None):
        self._batch_size = batch_size
        self._selection = selection
        self._read = Metrics.counter("bulk_export", "resources_selected")  # those the selection kept
        self._bad = Metrics.counter("bulk_export", "bad_records")

    def setup(self) -> None:
        # Beam's own long-lived objects need no further collection passes.
        gc.freeze()

    def process(self, chunk: Chunk) -> Iterator:
        try:
            with _collector_paused(), _reader(chunk.path, chunk.gzip) as f:
                if chunk.columnar:
                    items = read_columnar(chunk.columnar, chunk.path, f, chunk.start, chunk.end, self._batch_size)
                    yield from self._emit(self._selected(items))
                elif chunk.document:
                    yield from self._emit(self._selected(self._document(chunk.path, f)))
                else:
                    yield from self._ndjson(chunk, f)
        except SourceError:
            raise
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise SourceError(f"cannot read source file {chunk.path!r}: {exc}") from exc

    def _ndjson(self, chunk: Chunk, f: IO[bytes]) -> Iterator:
        blocks = span_blocks(f, chunk.start, chunk.end if chunk.end >= 0 else None)
        origin = Origin(chunk.path, next(blocks))
        return self._emit(parse_lines(blocks, origin, self._batch_size, self._selection))

    def _selected(self, items: Iterable[Union[ResourceBatch, BadRecord]]) -> Iterator:
        """Applies the selection to batches read whole (NDJSON applies it while parsing)."""
        for item in items:
            if type(item) is not ResourceBatch:
                yield item
                continue
            if not item.source_bytes:
                item = item._replace(source_bytes=sum(len(r.raw) + 1 for r in item.resources))
            if self._selection is None:
                yield item
                continue
            batch, bad = self._selection.select(item)
            yield from bad
            yield batch

    def _emit(self, items: Iterable[Union[ResourceBatch, BadRecord]]) -> Iterator:
        """Counts and yields batches, and bad records tagged `errors`."""
        for item in items:
            if type(item) is ResourceBatch:
                self._read.inc(len(item.resources))
                yield item
            else:
                self._bad.inc()
                yield beam.pvalue.TaggedOutput("errors", item)

    def _document(self, path: str, f: IO[bytes]) -> Iterator:
        origin = Origin(path, -1)
        resources, bad = document_resources(origin, f.read())
        yield from bad
        for start in range(0, len(resources), self._batch_size):
            yield ResourceBatch(origin, resources[start : start + self._batch_size])


_gc_lock = threading.Lock()
_gc_pause = {"depth": 0, "was_enabled": True}


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pauses the cyclic garbage collector while a chunk is read, filtered and written.

    A batch keeps thousands of freshly parsed, acyclic JSON containers alive,
    and each allocation burst set off full collections over Beam's large heap:
    about 45% of the export's time. Reference counting still frees everything;
    collection resumes when the last concurrent chunk is done.
    """
    with _gc_lock:
        if _gc_pause["depth"] == 0:
            _gc_pause["was_enabled"] = gc.isenabled()
            gc.disable()
        _gc_pause["depth"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pause["depth"] -= 1
            if _gc_pause["depth"] == 0 and _gc_pause["was_enabled"]:
                gc.enable()


def plan_chunks(source: str, source_format: str = AUTO, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """The chunks `ReadResources` reads, planned in the calling process (e.g. at kickoff)."""
    return _PlanChunksFn(source_format, chunk_bytes).process(source)


def read_chunk(chunk: Chunk, batch_size: int = BATCH_SIZE, selection: Optional[ReadSelection] = None) -> Iterator[ResourceBatch]:
    """The resource batches of one chunk, read in the calling process; bad records are skipped."""
    for item in _ReadChunkFn(batch_size, selection).process(chunk):
        if type(item) is ResourceBatch:
            yield item


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
