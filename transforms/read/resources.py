"""Reading FHIR resources from NDJSON, Bundle, Avro and Parquet files, or a PostgreSQL table, as batches.

`ReadResources` plans a `--source` into chunks (`transforms.read.chunks`),
spreads the small chunk descriptors, then reads each chunk, parses it once
with orjson and emits `ResourceBatch`es. Lines that are not resources go to
the `errors` output as `BadRecord`s, so a bad line never fails the job and is
never lost. A PostgreSQL source (`transforms.read.postgres`) is planned into
key ranges instead of chunks, and read the same way.
"""

from __future__ import annotations

import gzip
from typing import IO, Iterable, Iterator, Optional, Union

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.read import gc_pause
from transforms.read.bundles import document_resources
from transforms.read.chunks import Chunk, NotListed, SourceError, open_chunk, plan_source, swapped
from transforms.read.columnar import read_columnar
from transforms.read.ndjson import parse_lines, span_texts
from transforms.read.postgres import PgRange, located, plan_ranges, read_range
from transforms.read.pushdown import ReadSelection, read_types, union
from transforms.records import BadRecord, Binaries, ChunkLines, Deletions, Origin, ResourceBatch
from transforms.steps import coders  # noqa: F401  (registers the ResourceBatch coder with Beam)
from transforms.storage.pg_source import ReadAt, is_postgres, parse_source
from transforms.storage.source_formats import AUTO, BATCH_SIZE, CHUNK_BYTES, SOURCE_FORMATS


class ReadResources(beam.PTransform):
    """Reads `source` into `ResourceBatch`es (tag `batches`) and `BadRecord`s (tag `errors`).

    A `selection` keeps only the resources it admits (see `transforms.read.pushdown`).
    Files the plan refuses (links out of the source's folder, FIFOs), links to files read at
    another name (`information` notices) and files found swapped since they were listed are `errors` too.
    Tag `lines` has one `ChunkLines` per NDJSON chunk: how many lines start in it, from
    which the line numbers of its bad records are found without reading the file again.
    Tag `deletions` has the `ResourceBatch`es of resources the source marks deleted that
    `deletions` (a selection, None: none) keeps; NDJSON and Bundle files mark none.
    Tag `binaries` has the resources `binaries` (a selection of Binary, None: none) keeps, found
    by the same read (a file source is read once, not once more for them); only the main
    selection's bad records are reported, as if each were read alone. A PostgreSQL source, whose
    read is a query per selection, refuses `binaries`.
    """

    def __init__(
        self,
        source: str,
        source_format: str = AUTO,
        chunk_bytes: int = CHUNK_BYTES,
        batch_size: int = BATCH_SIZE,
        selection: Optional[ReadSelection] = None,
        deletions: Optional[ReadSelection] = None,
        at: Optional[ReadAt] = None,
        binaries: Optional[ReadSelection] = None,
    ):
        super().__init__()
        if source_format not in SOURCE_FORMATS:
            raise ValueError(f"source format must be one of {SOURCE_FORMATS}")
        self._source = source
        self._format = source_format
        self._chunk_bytes = chunk_bytes
        self._batch_size = batch_size
        self._selection = selection
        self._deletions = deletions
        self._at = at
        self._binaries = binaries
        if is_postgres(source):
            if binaries is not None:
                raise ValueError("a PostgreSQL source reads Binaries with a selection of their own")
            parse_source(source)  # refuses a bad URL (or one holding a password) before the pipeline runs
            if at is None:
                raise ValueError("reading a PostgreSQL source needs the job's transactionTime (at=ReadAt(...))")

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        if is_postgres(self._source):
            plan = beam.FlatMap(plan_ranges, self._selection, self._deletions, self._at, self._chunk_bytes)
        else:
            plan = beam.FlatMap(plan_source, self._format, self._chunk_bytes)
        return (
            pbegin
            | "Source" >> beam.Create([self._source])
            | "PlanChunks" >> plan
            | "Spread" >> beam.Reshuffle()
            | "ReadChunks"
            >> beam.ParDo(_ReadChunkFn(self._batch_size, self._selection, self._deletions, self._at, self._binaries))
            .with_output_types(ResourceBatch)
            .with_outputs("errors", "lines", "deletions", "binaries", main="batches")
        )


_EVERY = ReadSelection()


class _ReadChunkFn(beam.DoFn):
    """Reads one chunk and emits batches of the selected parsed resources, plus bad records."""

    def __init__(self, batch_size: int, selection: Optional[ReadSelection] = None,
                 deletions: Optional[ReadSelection] = None, at: Optional[ReadAt] = None,
                 binaries: Optional[ReadSelection] = None):
        self._batch_size = batch_size
        self._at = at
        self._selection = selection
        self._deletions = deletions
        self._binaries = binaries
        self._main_types = (selection or _EVERY).types
        # what a columnar read keeps past `resourceType`
        self._types = read_types(selection if binaries is None else union(selection, binaries), deletions)
        self._read = Metrics.counter("bulk_export", "resources_selected")  # those the selection kept
        self._bad = Metrics.counter("bulk_export", "bad_records")
        self._deleted = Metrics.counter("bulk_export", "deletions_selected")
        self._deleted_skipped = Metrics.counter("bulk_export", "deletions_skipped")  # no `_since`, or left out

    def setup(self) -> None:
        # Beam's own long-lived objects need no further collection passes.
        gc_pause.freeze_heap()

    def process(self, chunk: Union[Chunk, PgRange, BadRecord]) -> Iterator:
        if type(chunk) is BadRecord:  # a file the plan refused (never opened)
            self._bad.inc()
            yield beam.pvalue.TaggedOutput("errors", chunk)
            return
        if type(chunk) is PgRange:
            with gc_pause.collector_paused():
                yield from self._emit(located(chunk, self._selected(
                    read_range(chunk, self._selection, self._deletions, self._at, self._batch_size), windowed=True)))
            return
        try:
            f = open_chunk(chunk)
        except NotListed:  # swapped since it was listed: reported by each chunk that finds it, never read
            self._bad.inc()
            yield beam.pvalue.TaggedOutput("errors", swapped(chunk.path))
            return
        try:
            with gc_pause.collector_paused(), f:
                if chunk.columnar:
                    items = read_columnar(chunk.columnar, chunk.path, f, chunk.start, chunk.end, self._batch_size,
                                          self._types, chunk.first)
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
        texts = span_texts(f, chunk.start, chunk.end if chunk.end >= 0 else None)
        origin = Origin(chunk.path, next(texts))
        yield from self._emit(parse_lines(texts, origin, self._batch_size, self._selection, self._binaries))

    def _selected(self, items: Iterable[Union[ResourceBatch, BadRecord]], windowed: bool = False) -> Iterator:
        """Applies the selection, and `binaries`, to batches read whole (NDJSON applies them while
        parsing); `windowed`: see `ReadSelection.select`."""
        for item in items:
            if type(item) is Deletions:
                yield from self._selected_deletions(item.batch, windowed)
                continue
            if type(item) is not ResourceBatch:
                if self._reports(item):
                    yield item
                continue
            if not item.source_bytes:
                item = item._replace(source_bytes=sum(len(r.raw) + 1 for r in item.resources))
            # every selection drops resources without an id
            batch, bad = (self._selection or _EVERY).select(item, windowed)
            yield from bad
            yield batch
            if self._binaries is not None:
                found, _ = self._binaries.select(item, windowed)  # bad Binaries are not the export's
                if found.resources:
                    yield Binaries(found)

    def _reports(self, item: object) -> bool:
        """Whether a record the read made is reported: always, but a bad record of a type only the
        Binaries' selection reads."""
        return (self._binaries is None or type(item) is not BadRecord or item.resource_type is None
                or self._main_types is None or item.resource_type in self._main_types)

    def _selected_deletions(self, batch: ResourceBatch, windowed: bool = False) -> Iterator:
        if self._deletions is None:
            self._deleted_skipped.inc(len(batch.resources))
            return
        kept, bad = self._deletions.select(batch, windowed)
        self._deleted_skipped.inc(len(batch.resources) - len(kept.resources) - len(bad))
        yield from bad
        if kept.resources:
            yield Deletions(kept)

    def _emit(self, items: Iterable[Union[ResourceBatch, BadRecord, ChunkLines]]) -> Iterator:
        """Counts and yields batches, bad records tagged `errors` and line counts tagged `lines`."""
        for item in items:
            if type(item) is ResourceBatch:
                self._read.inc(len(item.resources))
                yield item
            elif type(item) is Deletions:
                self._deleted.inc(len(item.batch.resources))
                yield beam.pvalue.TaggedOutput("deletions", item.batch)
            elif type(item) is ChunkLines:
                yield beam.pvalue.TaggedOutput("lines", item)
            elif type(item) is Binaries:
                yield beam.pvalue.TaggedOutput("binaries", item.batch)
            else:
                self._bad.inc()
                yield beam.pvalue.TaggedOutput("errors", item)

    def _document(self, path: str, f: IO[bytes]) -> Iterator:
        origin = Origin(path, -1)
        resources, bad = document_resources(origin, f.read())
        yield from bad
        for start in range(0, len(resources), self._batch_size):
            yield ResourceBatch(origin, resources[start : start + self._batch_size])


def read_chunk(chunk: Chunk, batch_size: int = BATCH_SIZE,
               selection: Optional[ReadSelection] = None) -> Iterator[ResourceBatch]:
    """The resource batches of one chunk, read in the calling process; bad records are skipped."""
    for item in _ReadChunkFn(batch_size, selection).process(chunk):
        if type(item) is ResourceBatch:
            yield item
