"""Part writing: rolling per-type files, written where resources are filtered.

`WriteParts` writes each batch's resources, as their original bytes, into
temporary files under a hidden folder, opening a new part per type whenever
the line or byte limit would be passed. The file format is a `PartSink`
(`transforms.write.part_formats`): NDJSON by default, or Parquet. It emits only `PartFile` metadata;
resource bodies are never shuffled. Final names are given later, all at once,
by `AssembleManifest`, so no file is ever visible under its final name
half-written.
"""

from __future__ import annotations

import time
import uuid
from typing import Callable, Iterator, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms.errors import Refused
from transforms.records import PartFile, Resource, ResourceBatch
from transforms.steps.fence import Fence, ProgressSink, StaleAttempt, check_fence
from transforms.storage.files import create_file, remove_abandoned
from transforms.write.part_formats import NdjsonSink, PartSink

_PROGRESS_EVERY_S = 2.0
# How often a writing bundle asks its fence whether its attempt still owns the job: a cancelled
# or superseded attempt on a remote worker (Dask, Dataflow) stops within about this long.
_FENCE_EVERY_S = 1.0


class WriteParts(beam.PTransform):
    """Writes `ResourceBatch`es into temporary parts; emits one `PartFile` per part."""

    def __init__(
        self,
        temp_dir: str,
        max_lines: int = 100_000,
        max_bytes: int = 256 << 20,
        progress: Optional[ProgressSink] = None,
        sink: PartSink = NdjsonSink(),
        fence: Optional[Fence] = None,
        publish: Optional[Callable[[PartFile], PartFile]] = None,
        output_root: str = "",
    ):
        """`publish` (allowPartialManifests, `transforms.write.publish.Publisher`) makes each part final
        and lists it the moment it is closed; `output_root`: no folder below it is written through a link."""
        super().__init__()
        if max_lines < 1 or max_bytes < 1:
            raise Refused("part limits must be positive")
        self._fn = _WritePartsFn(temp_dir, max_lines, max_bytes, progress, sink, fence, publish, output_root)

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> beam.PCollection[PartFile]:
        return batches | beam.ParDo(self._fn)


class _OpenPart:
    __slots__ = ("type", "path", "handle", "writer", "count", "size")

    def __init__(self, resource_type: str, path: str, sink: PartSink, root: str = ""):
        self.type, self.path = resource_type, path
        self.handle = create_file(path, sink.mime, root)
        self.writer = sink.open(self.handle, resource_type)
        self.count = self.size = 0  # size: the resources' NDJSON bytes, which the byte limit counts

    def close(self) -> PartFile:
        self.writer.close()
        self.handle.close()
        return PartFile(self.type, self.path, self.count, self.size)

    def abandon(self) -> str:
        """Closes the file without finishing it (it is about to be removed); returns its path."""
        try:
            self.handle.close()
        except Exception:  # noqa: BLE001: a half-written part is removed whatever its state
            pass
        return self.path


class _WritePartsFn(beam.DoFn):
    """Keeps one open part per type for the bundle; closes them all when the bundle ends."""

    def __init__(self, temp_dir, max_lines, max_bytes, progress, sink, fence=None, publish=None, output_root=""):
        self._temp_dir = temp_dir
        self._output_root = output_root
        self._fence = fence
        self._publish = publish
        self._sink = sink
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._progress = progress
        self._counters: dict[str, object] = {}

    def start_bundle(self) -> None:
        self._open: dict[str, _OpenPart] = {}
        self._closed: list[PartFile] = []
        self._unreported: dict[str, int] = {}
        self._reported_at = self._fenced_at = time.monotonic()

    def process(self, batch: ResourceBatch) -> Iterator[PartFile]:
        by_type: dict[str, list[Resource]] = {}
        for resource in batch.resources:
            same = by_type.get(resource.type)
            if same is None:
                same = by_type[resource.type] = []
            same.append(resource)
        for resource_type, resources in by_type.items():
            self._write(resource_type, resources)
            self._count(resource_type, len(resources))
        now = time.monotonic()
        if self._progress and now - self._reported_at > _PROGRESS_EVERY_S:
            self._report()
        if self._fence is not None and now - self._fenced_at > _FENCE_EVERY_S:
            self._check_fence("writing parts")
        return iter(())

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for part in self._open.values():
            self._closed.append(self._closing(part))
        self._open.clear()
        self._check_fence("handing its parts on")
        if self._progress:
            self._report()
        window = GlobalWindow()
        for part in self._closed:
            yield WindowedValue(part, window.max_timestamp(), [window])

    def _write(self, resource_type: str, resources: list[Resource]) -> None:
        part = self._open.get(resource_type)
        if part is not None and part.count + len(resources) <= self._max_lines:
            size = sum([len(r.raw) for r in resources]) + len(resources)
            if part.size + size <= self._max_bytes:  # the common case: all of them fit the open part
                part.count += len(resources)
                part.size += size
                _flush(part, resources)
                return
        pending: list[Resource] = []
        for resource in resources:
            size = len(resource.raw) + 1
            # A part never starts empty, so a line larger than max_bytes gets a part of its own.
            if part is None or part.count >= self._max_lines or part.size + size > self._max_bytes:
                if part is not None:
                    _flush(part, pending)
                    self._closed.append(self._closing(part))
                    pending = []
                self._check_fence("opening a part")
                path = f"{self._temp_dir}/{resource_type}.{uuid.uuid4().hex}{self._sink.extension}"
                part = self._open[resource_type] = _OpenPart(resource_type, path, self._sink, self._output_root)
            pending.append(resource)
            part.count += 1
            part.size += size
        _flush(part, pending)

    def _closing(self, part: "_OpenPart") -> PartFile:
        closed = part.close()
        return self._publish(closed) if self._publish is not None else closed

    def _check_fence(self, doing: str) -> None:
        """Checks the fence; an attempt that lost the job removes every unpublished part of this bundle,
        then stops."""
        self._fenced_at = time.monotonic()
        try:
            check_fence(self._fence, doing)
        except StaleAttempt:
            # A published part is final and listed already (`transforms.write.publish`): it stays.
            closed = [] if self._publish is not None else [part.temp_path for part in self._closed]
            paths = closed + [part.abandon() for part in self._open.values()]
            self._open.clear()
            self._closed.clear()
            remove_abandoned(paths, self._temp_dir)
            raise

    def _count(self, resource_type: str, n: int) -> None:
        counter = self._counters.get(resource_type)
        if counter is None:
            counter = self._counters[resource_type] = Metrics.counter(
                "bulk_export", f"exported_{resource_type}"
            )
        counter.inc(n)
        self._unreported[resource_type] = self._unreported.get(resource_type, 0) + n

    def _report(self) -> None:
        if self._unreported:
            self._progress.progress(dict(self._unreported))
            self._unreported.clear()
        self._reported_at = time.monotonic()


def _flush(part: _OpenPart, resources: list[Resource]) -> None:
    if resources:
        part.writer.write(resources)
