"""The elements that flow between transforms: batches of resources and metadata.

A pipeline element is a batch of many resources, never one resource, so Beam's
per-element cost is paid per batch. Each resource keeps the exact bytes it was
read as; a transform that changes a resource replaces those bytes, and nothing
else re-serialises it.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Resource(NamedTuple):
    """One parsed resource and the bytes it is written as (no trailing newline)."""

    type: str
    raw: bytes
    body: dict[str, Any] | None  # None when the read dropped it: nothing after the read needs it
    index: int  # position within its batch's source span, for error locations
    # A columnar source's `lastUpdated` column, as a FHIR instant; it wins over meta.lastUpdated.
    last_updated: str | None = None
    # For a resource read from a Bundle on an NDJSON line (`index` is the line): its Bundle.entry index.
    entry: int | None = None
    # organizeOutputBy: the ids of the instances whose blocks hold it (`transforms.write.organized.KeyBlocks`).
    patients: tuple[str, ...] | None = None


class Origin(NamedTuple):
    """Where a batch came from.

    For NDJSON, `offset` is the byte offset at which line `index` 0 starts, so a
    line's number can be computed later and only when an error needs it. For a
    JSON document (a Bundle), `offset` is -1 and `index` counts entries. For an
    Avro or Parquet file, `offset` is `RECORDS` and `index` is the record's row
    number in the file, from 0.
    """

    path: str
    offset: int

    @property
    def is_records(self) -> bool:
        return self.offset == RECORDS


DOCUMENT, RECORDS = -1, -2  # the Origin.offset of a JSON document, and of a columnar file


class ChunkLines(NamedTuple):
    """How many lines start in the NDJSON chunk of `path` whose first line starts at byte `offset`."""

    path: str
    offset: int
    lines: int


class ResourceBatch(NamedTuple):
    """Resources read from one span of one source file.

    `source_bytes` is how much of the source reading the batch took, left-out
    and bad lines included, for progress; a batch may be empty and carry only that.
    """

    origin: Origin
    resources: list[Resource]
    source_bytes: int = 0

    def replace(self, resources: list[Resource]) -> "ResourceBatch":
        return ResourceBatch(self.origin, resources, self.source_bytes)


class Binaries(NamedTuple):
    """The Binaries a read found besides its selection, for the attachment step
    (`transforms.read.resources.ReadResources(binaries=...)`)."""

    batch: ResourceBatch


class Deletions(NamedTuple):
    """Resources a source marks deleted, read from one span of one source file.

    Each `Resource` is the deleted one: its `body` is the deleted version where
    the source keeps it, else only `resourceType` and `id`; `last_updated` is
    when it was deleted; `raw` is unused (empty). They become the manifest's
    `deleted[]` (`transforms.select.deletions`), never `output[]`.
    """

    batch: ResourceBatch


class BadRecord(NamedTuple):
    """A source line (or Bundle entry) that could not be exported, and why.

    `reason` names the element and the rule it breaks, never the value: it is
    copied into the manifest's error files, which the client reads.
    """

    origin: Origin
    index: int
    reason: str
    resource_type: str | None = None
    code: str = "invalid"  # the OperationOutcome issue type: bad content, or `exception`
    location: str | None = None  # set when the record is not a source line, e.g. a Group member
    resource_id: str | None = None  # the resource's id, when known (error files name it if it is a valid id)
    # The OperationOutcome issue severity: `error`; `information` for a notice (e.g. updated after
    # transactionTime, not exported); `warning` for a resource that is exported but needs a look.
    severity: str = "error"
    entry: int | None = None  # the Bundle.entry index of a Bundle read from an NDJSON line
    exported: bool = False  # a notice about exported resources (a `warning` always is one)


class PartFile(NamedTuple):
    """A written, not yet final, part: its temporary path and exact line count."""

    type: str
    temp_path: str
    count: int
    size: int
