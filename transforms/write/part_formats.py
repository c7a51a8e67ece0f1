"""Part formats: how a part's resources become bytes, NDJSON or Parquet, behind one interface.

`WriteParts` owns the files, rolling and limits; a `PartSink` only turns the
resources it is given into one open file's content, and names its extension
and MIME type, so a final part is `<Type>-<n><extension>`. Parquet parts hold
the resource-record schema (`transforms.fhir.record_schema`) plus a few typed
columns per type read from the already-parsed resource (`TYPED_COLUMNS`), in
row groups of bounded rows and bytes.
"""

from __future__ import annotations

from typing import IO, Any, Optional, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.fhir.record_schema import RECORD_SCHEMA, record_table
from transforms.records import Resource
from transforms.storage.layout import NDJSON_MIME, PARQUET_MIME

ROW_GROUP_ROWS = 10_000
ROW_GROUP_BYTES = 64 << 20  # of resource JSON, so a row group of large resources stays bounded too


class PartWriter(Protocol):
    """Writes resources (all of one type) into one open part file."""

    def write(self, resources: list[Resource]) -> None: ...

    def close(self) -> None:
        """Writes what is buffered; the caller closes the file itself."""


class PartSink(Protocol):
    """A part format: its file extension, MIME type and writer (picklable)."""

    extension: str
    mime: str
    needs_bodies: bool  # whether the writer reads `Resource.body`, or only the original bytes

    def open(self, handle: IO[bytes], resource_type: str) -> PartWriter: ...


class NdjsonSink:
    """Parts as NDJSON: each resource's original bytes and a newline."""

    extension, mime, needs_bodies = ".ndjson", NDJSON_MIME, False

    def open(self, handle: IO[bytes], resource_type: str) -> PartWriter:
        return _NdjsonWriter(handle)


class _NdjsonWriter:
    def __init__(self, handle: IO[bytes]):
        self._handle = handle

    def write(self, resources: list[Resource]) -> None:
        lines = [r.raw for r in resources]
        lines.append(b"")
        self._handle.write(b"\n".join(lines))

    def close(self) -> None:
        pass


class ParquetSink:
    """Parts as Parquet: one row per resource, its JSON unchanged in `resource`."""

    extension, mime, needs_bodies = ".parquet", PARQUET_MIME, True

    def __init__(self, row_group_rows: int = ROW_GROUP_ROWS, row_group_bytes: int = ROW_GROUP_BYTES):
        if row_group_rows < 1 or row_group_bytes < 1:
            raise ValueError("row group limits must be positive")
        self._rows, self._bytes = row_group_rows, row_group_bytes

    def open(self, handle: IO[bytes], resource_type: str) -> PartWriter:
        return _ParquetWriter(handle, resource_type, self._rows, self._bytes)


# Typed columns: name -> the body paths tried in order (an int indexes a list); the first string wins.
_SUBJECT = ("subject_reference", (("subject", "reference"),))
_PATIENT = ("patient_reference", (("patient", "reference"),))
_STATUS = ("status", (("status",),))
_CODE = ("code", (("code", "coding", 0, "code"),))
_CODE_SYSTEM = ("code_system", (("code", "coding", 0, "system"),))
_EFFECTIVE = ("effective", (("effectiveDateTime",), ("effectiveInstant",), ("effectivePeriod", "start")))
TYPED_COLUMNS: dict[str, tuple[tuple[str, tuple[tuple[Any, ...], ...]], ...]] = {
    "Patient": (("gender", (("gender",),)), ("birth_date", (("birthDate",),))),
    "Observation": (_SUBJECT, _STATUS, _CODE, _CODE_SYSTEM, _EFFECTIVE),
    "Condition": (_SUBJECT, _CODE, _CODE_SYSTEM, ("onset", (("onsetDateTime",), ("onsetPeriod", "start")))),
    "Encounter": (_SUBJECT, _STATUS, ("period_start", (("period", "start"),)), ("period_end", (("period", "end"),))),
    "MedicationRequest": (_SUBJECT, _STATUS, ("authored_on", (("authoredOn",),))),
    "Procedure": (_SUBJECT, _STATUS, _CODE, ("performed", (("performedDateTime",), ("performedPeriod", "start")))),
    "DiagnosticReport": (_SUBJECT, _STATUS, _CODE, _EFFECTIVE),
    "Immunization": (_PATIENT, _STATUS, ("occurrence", (("occurrenceDateTime",),))),
    "Claim": (_PATIENT, _STATUS),
    "ExplanationOfBenefit": (_PATIENT, _STATUS),
}


def part_schema(resource_type: str) -> pa.Schema:
    """The Arrow schema of a Parquet part of `resource_type`: the record schema, then its typed columns."""
    typed = [pa.field(name, pa.string()) for name, _ in TYPED_COLUMNS.get(resource_type, ())]
    return pa.schema(list(RECORD_SCHEMA) + typed)


def _pick(body: dict, paths: tuple[tuple[Any, ...], ...]) -> Optional[str]:
    for path in paths:
        value: Any = body
        for step in path:
            if type(step) is int:
                value = value[step] if type(value) is list and len(value) > step else None
            else:
                value = value.get(step) if type(value) is dict else None
        if type(value) is str:
            return value
    return None


class _ParquetWriter:
    """Buffers one row group of resources at a time and writes it as a bounded row group."""

    def __init__(self, handle: IO[bytes], resource_type: str, max_rows: int, max_bytes: int):
        self._typed = TYPED_COLUMNS.get(resource_type, ())
        self._writer = pq.ParquetWriter(handle, part_schema(resource_type))
        self._max_rows, self._max_bytes = max_rows, max_bytes
        self._pending: list[Resource] = []
        self._pending_bytes = 0

    def write(self, resources: list[Resource]) -> None:
        for resource in resources:
            size = len(resource.raw)
            # As with parts, a row group never starts empty, so one huge resource gets a group of its own.
            if self._pending and (len(self._pending) >= self._max_rows or self._pending_bytes + size > self._max_bytes):
                self._flush()
            self._pending.append(resource)
            self._pending_bytes += size

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def _flush(self) -> None:
        if not self._pending:
            return
        rows = self._pending
        table = record_table(rows)
        for name, paths in self._typed:
            values = pa.array([_pick(r.body, paths) for r in rows], pa.string())
            table = table.append_column(pa.field(name, pa.string()), values)
        self._writer.write_table(table, row_group_size=len(rows))
        self._pending, self._pending_bytes = [], 0
