"""organizeOutputBy: the one place where resource bodies are shuffled, through files on disk.

`KeyBlocks` (a step before `_elements`, so a subset never hides a reference)
notes the instances whose blocks hold each resource (`transforms.fhir.organize`):
for Patient judged against the covered patients, for another type against the
ids of the source's instances of it (`InstanceIds`, ids only, a side input).
`WriteBlocks` then groups them without holding the export in memory, on any
runner: each bundle appends `(instance, type, bytes, is the instance)` records to
one run file per hash partition of the instance id (`PARTITIONS` of them) under
the attempt's temporary folder (`transforms.steps.spill`); only `(partition, run
file)` pairs are shuffled.
Each partition is then read alone (a 1/`PARTITIONS` share of the export), its
records grouped by instance, and its blocks written into the bundle's rolling
parts, which never split a block: a block larger than the part limits gets a part of its
own. Run files go with the temporary folder when the manifest is assembled.
"""

from __future__ import annotations

import time
import uuid
import zlib
from collections import defaultdict
from typing import Callable, Iterable, Iterator, Optional, Union

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms.fhir.compartment import PATIENT, PatientSet
from transforms.fhir.organize import block_ids, block_lines, no_block
from transforms.records import BadRecord, PartFile, ResourceBatch
from transforms.steps.fence import Fence, ProgressSink, check_fence
from transforms.steps.resource_step import ResourceStep, StepOutputs
from transforms.steps.spill import SpillRecords, read_partition
from transforms.storage.files import create_file
from transforms.storage.layout import NDJSON_MIME

PARTITIONS = 128  # a partition, grouped in memory, is about 1/128 of the export
_FENCE_EVERY_S = 1.0


def blocks_name(by: str) -> str:
    """The parts' name: by-<Type>-<n>.ndjson."""
    return f"by-{by}"


class InstanceIds(beam.PTransform):
    """The ids of the `by` resources in the batches, as one frozenset (ids only)."""

    def __init__(self, by: str):
        super().__init__()
        self._by = by

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> beam.PCollection[frozenset]:
        return (
            batches
            | "Ids" >> beam.FlatMap(_instance_ids, self._by)
            | "Set" >> beam.CombineGlobally(_union).without_defaults()
        )


def _instance_ids(batch: ResourceBatch, by: str) -> Iterator[frozenset[str]]:
    ids = frozenset(r.body["id"] for r in batch.resources
                    if r.type == by and r.body is not None and type(r.body.get("id")) is str)
    if ids:
        yield ids


def _union(sets: Iterable[frozenset[str]]) -> frozenset[str]:
    return frozenset().union(*sets)


class KeyBlocks(beam.PTransform):
    """Notes the blocks of each resource, as `Resource.patients`: for Patient limited to the covered
    ones (a `PatientSet` side input; None: any); for another type judged against its instances' ids (a
    frozenset side input from `InstanceIds`). A resource in no block is an `information` notice."""

    def __init__(self, by: str, known: Optional[beam.pvalue.AsSideInput] = None):
        super().__init__()
        self._by, self._known = by, known

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        side = (self._known,) if self._known is not None else ()
        return batches | ResourceStep("organizeOutputBy", _KeyBlocksFn(self._by), *side)


class _KeyBlocksFn(beam.DoFn):
    def __init__(self, by: str):
        self._by = by

    def process(self, batch: ResourceBatch, known: Union[PatientSet, frozenset, None] = None) -> Iterator:
        by = self._by
        if isinstance(known, PatientSet):
            known = known.ids
        kept = []
        for resource in batch.resources:
            found = block_ids(by, resource.type, resource.body, known)
            if found:
                kept.append(resource._replace(patients=found))
                continue
            rid = resource.body.get("id")
            yield beam.pvalue.TaggedOutput("errors", BadRecord(
                batch.origin, resource.index, no_block(by), resource.type, code="informational",
                resource_id=rid if type(rid) is str else None, severity="information", entry=resource.entry))
        yield batch.replace(kept)


class WriteBlocks(beam.PTransform):
    """Writes keyed `ResourceBatch`es as blocks into temporary parts; emits one `PartFile` per part."""

    def __init__(self, temp_dir: str, max_lines: int, max_bytes: int, progress: Optional[ProgressSink] = None,
                 fence: Optional[Fence] = None, publish: Optional[Callable[[PartFile], PartFile]] = None,
                 output_root: str = "", by: str = PATIENT):
        super().__init__()
        self._spill = SpillRecords(f"{temp_dir}/organize", _BlockRecords(by), fence, write_every=32,
                                   output_root=output_root)
        self._blocks = _BlocksFn(by, temp_dir, max_lines, max_bytes, progress, fence, publish, output_root)

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> beam.PCollection[PartFile]:
        return (
            batches
            | "Spill" >> beam.ParDo(self._spill)
            | "ByPartition" >> beam.GroupByKey()
            | "Blocks" >> beam.ParDo(self._blocks)
        )


class _BlockRecords:
    """`(instance, type, bytes, is the instance)` once per block of each resource, by partition of
    the instance id."""

    def __init__(self, by: str):
        self._by = by

    def __call__(self, batch: ResourceBatch) -> dict[int, list[tuple]]:
        by_partition: dict[int, list[tuple]] = defaultdict(list)
        crc32, by = zlib.crc32, self._by
        for resource in batch.resources:
            own = resource.body.get("id") if resource.type == by and resource.body is not None else None
            for key in resource.patients:
                by_partition[crc32(key.encode()) % PARTITIONS].append(
                    (key, resource.type, resource.raw, key == own))
        return by_partition


class _BlocksFn(beam.DoFn):
    """Groups one partition's run files by instance and writes its blocks into rolling parts."""

    def __init__(self, by, temp_dir, max_lines, max_bytes, progress, fence, publish=None, output_root=""):
        self._by = by
        self._temp_dir, self._max_lines, self._max_bytes = temp_dir, max_lines, max_bytes
        self._progress, self._fence, self._publish = progress, fence, publish
        self._output_root = output_root

    def start_bundle(self) -> None:
        # One set of rolling parts for the bundle's partitions: few files, whatever the partitions.
        self._writer = _RollingParts(blocks_name(self._by), self._temp_dir, self._max_lines, self._max_bytes,
                                     self._publish, self._output_root)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        window = GlobalWindow()
        for part in self._writer.close():
            yield WindowedValue(part, window.max_timestamp(), [window])

    def process(self, element: tuple[int, list[str]]) -> Iterator[PartFile]:
        _, paths = element
        check_fence(self._fence, "writing blocks")
        grouped: dict[str, list[tuple[str, bytes, bool]]] = defaultdict(list)
        for key, resource_type, raw, own in read_partition(paths):
            grouped[key].append((resource_type, raw, own))
        writer = self._writer
        counts: dict[str, int] = defaultdict(int)
        checked = time.monotonic()
        for key in sorted(grouped):
            members = grouped.pop(key)
            writer.add(block_lines(self._by, key, members))
            for resource_type, _, _ in members:
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

    def __init__(self, name: str, temp_dir: str, max_lines: int, max_bytes: int, publish=None,
                 output_root: str = ""):
        self._name, self._temp_dir, self._max_lines, self._max_bytes = name, temp_dir, max_lines, max_bytes
        self._publish, self._output_root = publish, output_root
        self._path, self._handle, self._lines, self._bytes = None, None, 0, 0
        self._closed: list[PartFile] = []

    def add(self, lines: list[bytes]) -> None:
        size = sum(map(len, lines)) + len(lines)
        if self._handle is not None and (self._lines + len(lines) > self._max_lines
                                         or self._bytes + size > self._max_bytes):
            self._closed.append(self._finish())
        if self._handle is None:
            self._path = f"{self._temp_dir}/{self._name}.{uuid.uuid4().hex}.ndjson"
            self._handle = create_file(self._path, NDJSON_MIME, self._output_root)
        self._handle.write(b"\n".join(lines) + b"\n")
        self._lines += len(lines)
        self._bytes += size

    def _finish(self) -> PartFile:
        self._handle.close()
        part = PartFile(self._name, self._path, self._lines, self._bytes)
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
