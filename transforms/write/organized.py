"""organizeOutputBy=Patient: the one place where resource bodies are shuffled, through files on disk.

`KeyBlocks` (a step before `_elements`, so a subset never hides a reference)
notes each resource's block patients (`transforms.fhir.organize`).
`WriteBlocks` then groups them without holding the export in memory, on any
runner: each bundle appends `(patient, type, bytes)` records to one run file
per hash partition of the patient id (`PARTITIONS` of them) under the
attempt's temporary folder (`transforms.steps.spill`); only `(partition, run
file)` pairs are shuffled.
Each partition is then read alone (a 1/`PARTITIONS` share of the export), its
records grouped by patient, and its blocks written into the bundle's rolling
parts, which never split a block: a block larger than the part limits gets a part of its
own. Run files go with the temporary folder when the manifest is assembled.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections import defaultdict
from typing import Callable, Iterator, Optional

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms.fhir.compartment import PatientSet
from transforms.fhir.organize import NO_BLOCK, block_lines, block_patients
from transforms.records import BadRecord, PartFile, ResourceBatch
from transforms.steps.fence import Fence, ProgressSink, check_fence
from transforms.steps.resource_step import ResourceStep, StepOutputs
from transforms.steps.spill import SpillRecords, read_partition
from transforms.storage.files import create_file
from transforms.storage.layout import NDJSON_MIME

PARTITIONS = 128  # a partition, grouped in memory, is about 1/128 of the export
BLOCKS = "by-Patient"  # the parts' name: by-Patient-<n>.ndjson
_FENCE_EVERY_S = 1.0


class KeyBlocks(beam.PTransform):
    """Notes the block patients of each resource (limited to the covered ones, a `PatientSet` side
    input, at Patient and Group level); a resource in no block is an `information` notice."""

    def __init__(self, patients: Optional[beam.pvalue.AsSideInput] = None):
        super().__init__()
        self._patients = patients

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        side = (self._patients,) if self._patients is not None else ()
        return batches | ResourceStep("organizeOutputBy", _KeyBlocksFn(), *side)


class _KeyBlocksFn(beam.DoFn):
    def process(self, batch: ResourceBatch, patients: Optional[PatientSet] = None) -> Iterator:
        covered = patients.ids if patients is not None else None
        kept = []
        for resource in batch.resources:
            found = block_patients(resource.type, resource.body, covered)
            if found:
                kept.append(resource._replace(patients=found))
                continue
            rid = resource.body.get("id")
            yield beam.pvalue.TaggedOutput("errors", BadRecord(
                batch.origin, resource.index, NO_BLOCK, resource.type, code="informational",
                resource_id=rid if type(rid) is str else None, severity="information", entry=resource.entry))
        yield batch.replace(kept)


class WriteBlocks(beam.PTransform):
    """Writes keyed `ResourceBatch`es as blocks into temporary parts; emits one `PartFile` per part."""

    def __init__(self, temp_dir: str, max_lines: int, max_bytes: int, progress: Optional[ProgressSink] = None,
                 fence: Optional[Fence] = None, publish: Optional[Callable[[PartFile], PartFile]] = None,
                 output_root: str = ""):
        super().__init__()
        self._spill = SpillRecords(f"{temp_dir}/organize", _block_records, fence, write_every=32,
                                   output_root=output_root)
        self._blocks = _BlocksFn(temp_dir, max_lines, max_bytes, progress, fence, publish, output_root)

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> beam.PCollection[PartFile]:
        return (
            batches
            | "Spill" >> beam.ParDo(self._spill)
            | "ByPartition" >> beam.GroupByKey()
            | "Blocks" >> beam.ParDo(self._blocks)
        )


def _block_records(batch: ResourceBatch) -> dict[int, list[tuple]]:
    """`(patient, type, bytes)` once per block of each resource, by partition of the patient."""
    by_partition: dict[int, list[tuple]] = defaultdict(list)
    crc32 = zlib.crc32
    for resource in batch.resources:
        for patient in resource.patients:
            by_partition[crc32(patient.encode()) % PARTITIONS].append((patient, resource.type, resource.raw))
    return by_partition


class _BlocksFn(beam.DoFn):
    """Groups one partition's run files by patient and writes its blocks into rolling parts."""

    def __init__(self, temp_dir, max_lines, max_bytes, progress, fence, publish=None, output_root=""):
        self._temp_dir, self._max_lines, self._max_bytes = temp_dir, max_lines, max_bytes
        self._progress, self._fence, self._publish = progress, fence, publish
        self._output_root = output_root

    def start_bundle(self) -> None:
        # One set of rolling parts for the bundle's partitions: few files, whatever the partitions.
        self._writer = _RollingParts(self._temp_dir, self._max_lines, self._max_bytes, self._publish,
                                     self._output_root)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        window = GlobalWindow()
        for part in self._writer.close():
            yield WindowedValue(part, window.max_timestamp(), [window])

    def process(self, element: tuple[int, list[str]]) -> Iterator[PartFile]:
        _, paths = element
        check_fence(self._fence, "writing blocks")
        grouped: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for patient, resource_type, raw in read_partition(paths):
            grouped[patient].append((resource_type, raw))
        writer = self._writer
        counts: dict[str, int] = defaultdict(int)
        checked = time.monotonic()
        for patient in sorted(grouped):
            members = grouped.pop(patient)
            writer.add(block_lines(patient, members))
            for resource_type, _ in members:
                counts[resource_type] += 1
            if time.monotonic() - checked > _FENCE_EVERY_S:
                check_fence(self._fence, "writing blocks")
                checked = time.monotonic()
        yield from writer.take_closed()
        if self._progress is not None and counts:
            self._progress.progress(dict(counts))


class _RollingParts:
    """NDJSON parts that take whole blocks: a part never splits one, and a block too large for any
    part is a part of its own."""

    def __init__(self, temp_dir: str, max_lines: int, max_bytes: int, publish=None, output_root: str = ""):
        self._temp_dir, self._max_lines, self._max_bytes = temp_dir, max_lines, max_bytes
        self._publish, self._output_root = publish, output_root
        self._path, self._handle, self._lines, self._bytes = None, None, 0, 0
        self._closed: list[PartFile] = []

    def add(self, lines: list[bytes]) -> None:
        size = sum(map(len, lines)) + len(lines)
        if self._handle is not None and (self._lines + len(lines) > self._max_lines
                                         or self._bytes + size > self._max_bytes):
            self._closed.append(self._finish())
        if self._handle is None:
            self._path = f"{self._temp_dir}/{BLOCKS}.{uuid.uuid4().hex}.ndjson"
            self._handle = create_file(self._path, NDJSON_MIME, self._output_root)
        self._handle.write(b"\n".join(lines) + b"\n")
        self._lines += len(lines)
        self._bytes += size

    def _finish(self) -> PartFile:
        self._handle.close()
        part = PartFile(BLOCKS, self._path, self._lines, self._bytes)
        self._path, self._handle, self._lines, self._bytes = None, None, 0, 0
        return self._publish(part) if self._publish is not None else part

    def take_closed(self) -> list[PartFile]:
        """The parts finished since the last call (the open one stays open)."""
        closed, self._closed = self._closed, []
        return closed

    def close(self) -> list[PartFile]:
        if self._handle is not None:
            self._closed.append(self._finish())
        return self.take_closed()
