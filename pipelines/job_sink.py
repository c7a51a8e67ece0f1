"""The job sink: how the pipeline reports to whoever tracks the job.

The launcher injects an implementation (e.g. one bound to its job store), so
`pipelines/` never imports `launcher/`. It must be picklable: on a distributed
runner it travels to the workers with the DoFns.
"""

from __future__ import annotations

import time
from typing import Iterator, Optional, Protocol

import apache_beam as beam

from pipelines.models import Manifest
from transforms.records import ResourceBatch

_REPORT_EVERY_S = 2.0


class JobSink(Protocol):
    """Reports progress and completion of one job."""

    def progress(self, counts: dict[str, int]) -> None:
        """Adds resources written so far, per type."""

    def read(self, nbytes: int) -> None:
        """Adds source bytes read so far (the job's overall fraction)."""

    def owns(self) -> bool:
        """Whether this attempt still owns the job; writing steps stop when it does not."""

    def publish(self, kind: str, resource_type: Optional[str], url: str, count: int) -> bool:
        """Lists a final file in the job's partial manifests (allowPartialManifests); False when the
        attempt no longer runs the job."""

    def complete(self, manifest: Manifest, bad_records: int) -> bool:
        """Claims completion before the manifest becomes visible.

        Returns False when the job has meanwhile ended otherwise (e.g. it was
        cancelled): the manifest must then never appear.
        """


class ReportRead(beam.PTransform):
    """Passes batches through unchanged, reporting the source bytes they came from."""

    def __init__(self, sink: JobSink):
        super().__init__()
        self._sink = sink

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> beam.PCollection[ResourceBatch]:
        return batches | beam.ParDo(_ReportReadFn(self._sink)).with_output_types(ResourceBatch)


class _ReportReadFn(beam.DoFn):
    def __init__(self, sink: JobSink):
        self._sink = sink

    def start_bundle(self) -> None:
        self._unreported = 0
        self._reported_at = time.monotonic()

    def process(self, batch: ResourceBatch) -> Iterator[ResourceBatch]:
        self._unreported += batch.source_bytes
        if time.monotonic() - self._reported_at > _REPORT_EVERY_S:
            self._report()
        yield batch

    def finish_bundle(self) -> None:
        self._report()

    def _report(self) -> None:
        if self._unreported:
            self._sink.read(self._unreported)
            self._unreported = 0
        self._reported_at = time.monotonic()
