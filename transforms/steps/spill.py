"""Grouping many records by key without holding them in memory: run files on disk, one per partition.

`SpillRecords` appends the records its function draws from an element, by
partition, to the bundle's run file for that partition (marshalled lists of a few
thousand records) and, when the bundle ends, emits `(partition, run file)`: only those
small pairs go through a GroupByKey, whatever the runner (the local runner holds
a GroupByKey's values in memory). `read_partition` then reads one partition's
run files back, a 1/N share of the records. The files live under the attempt's
temporary folder, which the manifest assembly removes.
"""

from __future__ import annotations

import marshal
import os
import time
import uuid
from typing import Callable, Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms.steps.fence import Fence, StaleAttempt, check_fence
from transforms.storage.files import create_file, remove_abandoned

Records = Callable[[object], dict[int, list]]  # an element's records, by partition
WRITE_EVERY = 2000  # records a partition gathers before they are written, as one marshalled list
FENCE_EVERY_S = 1.0  # how often a bundle opening run files asks whether its attempt still owns the job


class SpillRecords(beam.DoFn):
    """Writes the records `records(element)` gives, by partition, into per-partition run files; emits one
    `(partition, path)` per run file when the bundle ends."""

    def __init__(self, folder: str, records: Records, fence: Optional[Fence] = None,
                 write_every: int = WRITE_EVERY, output_root: str = ""):
        """`write_every`: records a partition gathers before they are written (few, for records that
        carry resource bodies, so a bundle holds little); `output_root`: see `create_file`."""
        self._folder, self._records, self._fence, self._write_every = folder, records, fence, write_every
        self._output_root = output_root

    def start_bundle(self) -> None:
        self._files: dict[int, tuple[str, object]] = {}
        self._pending: dict[int, list] = {}
        self._bundle = uuid.uuid4().hex
        self._checked_at = float("-inf")

    def process(self, element) -> Iterator:
        pending = self._pending
        for partition, records in self._records(element).items():
            waiting = pending.get(partition)
            if waiting is None:
                waiting = pending[partition] = records
            else:
                waiting.extend(records)
            if len(waiting) >= self._write_every:
                self._write(partition)
        return iter(())

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._pending or self._files:  # the run files are handed on only by an attempt that owns the job
            self._check_fence("handing its run files on")
        for partition in list(self._pending):
            self._write(partition)
        window = GlobalWindow()
        for partition, (path, handle) in sorted(self._files.items()):
            handle.close()
            yield WindowedValue((partition, path), window.max_timestamp(), [window])
        self._files = {}

    def _write(self, partition: int) -> None:
        """Appends the partition's waiting records to its run file, as one marshalled list."""
        records = self._pending.pop(partition)
        handle = self._files.get(partition)
        if handle is None:
            self._check_fence("spilling records", FENCE_EVERY_S)
            path = f"{self._folder}/{partition:03d}/{self._bundle}.run"
            handle = self._files[partition] = (path, create_file(path, "application/octet-stream", self._output_root))
        blob = marshal.dumps(records)
        handle[1].write(len(blob).to_bytes(8, "little") + blob)

    def _check_fence(self, doing: str, unless_within: float = 0.0) -> None:
        """Checks the fence (not again within `unless_within` seconds); an attempt that lost the job removes
        this bundle's run files (and the folders a cancel's clean-up removed, if writing them made them
        again), then stops."""
        now = time.monotonic()
        if self._fence is None or now - self._checked_at < unless_within:
            return
        self._checked_at = now
        try:
            check_fence(self._fence, doing)
        except StaleAttempt:
            for path, handle in self._files.values():
                handle.close()
            remove_abandoned([path for path, _ in self._files.values()], os.path.dirname(self._folder),
                             within=self._folder)
            self._files, self._pending = {}, {}
            raise


def read_partition(paths: Iterable[str]) -> Iterator[tuple]:
    """The records of one partition's run files, file by file, one marshalled list at a time (memory
    holds one list, however large the file)."""
    for path in sorted(paths):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            while header := _read(f, 8):  # each list framed by its length: `marshal.load` from a file is slow
                yield from marshal.loads(_read(f, int.from_bytes(header, "little")))


def _read(f, size: int) -> bytes:
    """`size` bytes of `f` (b"" at its end), whatever a stream's single `read` returns."""
    data = f.read(size)
    while data and len(data) < size:
        more = f.read(size - len(data))
        if not more:
            raise EOFError(f"a run file ends inside a list ({len(data)} of {size} bytes)")
        data += more
    return data
