"""Bad source records as FHIR OperationOutcomes, one per record, naming file and line.

Error files go to the client, so an OperationOutcome names the element, the
rule and the place (the file relative to the source's root, the line, Bundle
entry or record, and the resource's id when it is a valid FHIR id), never a
value from the source nor the server's own paths.

`WriteErrorFiles` writes them where they are found: each bundle of bad records
becomes OperationOutcome lines in temporary error parts, through the same
fenced part writer as resources, and only the parts' metadata reaches the
manifest step. The line number of a record read from a chunk that starts
mid-file comes from the read's own line counts per chunk (`ChunkLines`, a
small side input): no source file is read again, and no worker gathers every
bad record.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Iterable, Iterator, Optional

import apache_beam as beam
import orjson
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms.fhir.references import FHIR_ID
from transforms.records import BadRecord, ChunkLines, Origin, PartFile, Resource, ResourceBatch
from transforms.steps.fence import Fence
from transforms.storage.layout import ERROR_TYPE
from transforms.storage.source_files import relative_path
from transforms.storage.source_formats import BATCH_SIZE
from transforms.write.parts import WriteParts


class LineIndex:
    """The number of lines before each NDJSON chunk, from the read's `ChunkLines`."""

    def __init__(self, chunks: Iterable[ChunkLines]):
        by_path: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for chunk in chunks:
            by_path[chunk.path].append((chunk.offset, chunk.lines))
        self._starts: dict[str, list[int]] = {}
        self._before: dict[str, list[int]] = {}
        for path, spans in by_path.items():
            spans.sort()
            total, before = 0, []
            for _, lines in spans:
                before.append(total)
                total += lines
            self._starts[path], self._before[path] = [offset for offset, _ in spans], before

    def lines_before(self, path: str, offset: int) -> Optional[int]:
        """How many lines of `path` start before byte `offset` (the first byte of a chunk's first line);
        None for a chunk the main read did not count."""
        if offset <= 0:
            return 0
        starts = self._starts.get(path, [])
        n = bisect.bisect_left(starts, offset)
        return self._before[path][n] if n < len(starts) and starts[n] == offset else None


def location(record: BadRecord, root: Optional[str], lines: LineIndex) -> str:
    """A human location: `path line N` (from 1), `path Bundle.entry[N]` (from 0, as in FHIRPath;
    `path line N Bundle.entry[M]` for a Bundle on an NDJSON line) or, for Avro and Parquet,
    `path record N` (the row number, from 0), then ` (Type/id)` when the resource's id is known
    and a valid FHIR id. With `root` (a `transforms.read.chunks.source_root`), `path` is
    relative to it."""
    if record.location is not None:
        return record.location
    path, offset = record.origin
    name = relative_path(path, root) if root is not None else path
    if record.origin.is_records:
        where = f"{name} record {record.index}" if record.index >= 0 else name
    elif offset < 0:
        where = f"{name} Bundle.entry[{record.index}]" if record.index >= 0 else name
    else:
        before = lines.lines_before(path, offset)
        if before is None:  # never expected: every chunk's lines are counted; still, say where it is
            where = f"{name} line {record.index + 1} after byte {offset}"
        else:
            where = f"{name} line {before + record.index + 1}"
        if record.entry is not None:
            where += f" Bundle.entry[{record.entry}]"
    if record.resource_id is not None and record.resource_type and FHIR_ID.match(record.resource_id):
        where += f" ({record.resource_type}/{record.resource_id})"
    return where


def locate(records: Iterable[BadRecord], root: Optional[str],
           lines: Iterable[ChunkLines]) -> list[tuple[BadRecord, str]]:
    """Each record with its `location`, in source order."""
    index = LineIndex(lines)
    records = sorted(records, key=lambda r: (r.origin.path, r.origin.offset, r.index, r.entry or 0))
    return [(record, location(record, root, index)) for record in records]


def operation_outcome(record: BadRecord, where: str) -> dict:
    """The OperationOutcome reporting one bad record. It never copies the record's content.

    Its diagnostics end `; not exported`, except for a `warning` or another notice about exported
    resources (`exported`)."""
    outcome = "" if record.severity == "warning" or record.exported else "; not exported"
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": record.severity,
                "code": record.code,
                "diagnostics": f"{where}: {record.reason}{outcome}",
            }
        ],
    }


class WriteErrorFiles(beam.PTransform):
    """Writes bad records as OperationOutcome parts under `temp_dir`; emits one `PartFile` per part.

    `lines` is the main read's `ChunkLines`; `root` the source's root, against which file names are
    given. Parts roll over at `max_lines`, and a `fence` stops an attempt that lost the job."""

    def __init__(self, temp_dir: str, root: Optional[str], lines: beam.PCollection, max_lines: int = 100_000,
                 max_bytes: int = 256 << 20, fence: Optional[Fence] = None, output_root: str = ""):
        super().__init__()
        self._root, self._lines = root, lines
        self._write = WriteParts(temp_dir, max_lines, max_bytes, fence=fence, output_root=output_root)

    def expand(self, errors: beam.PCollection[BadRecord]) -> beam.PCollection[PartFile]:
        return (
            errors
            | "Outcomes" >> beam.ParDo(_OutcomesFn(self._root), beam.pvalue.AsList(self._lines))
            | "Write" >> self._write
        )


_NOWHERE = Origin("", 0)


class _OutcomesFn(beam.DoFn):
    """Turns bad records into batches of OperationOutcome lines, as resources the part writer takes."""

    def __init__(self, root: Optional[str]):
        self._root = root

    def start_bundle(self) -> None:
        self._pending: list[Resource] = []
        self._index: Optional[LineIndex] = None  # built once per bundle, from its first record's side input

    def process(self, record: BadRecord, lines: list[ChunkLines]) -> Iterator[ResourceBatch]:
        if self._index is None:
            self._index = LineIndex(lines)
        outcome = orjson.dumps(operation_outcome(record, location(record, self._root, self._index)))
        self._pending.append(Resource(ERROR_TYPE, outcome, None, 0))
        if len(self._pending) >= BATCH_SIZE:
            yield ResourceBatch(_NOWHERE, self._pending)
            self._pending = []

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._pending:
            window = GlobalWindow()
            yield WindowedValue(ResourceBatch(_NOWHERE, self._pending), window.max_timestamp(), [window])
            self._pending = []
