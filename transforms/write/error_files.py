"""Bad source records as FHIR OperationOutcomes, one per record, naming file and line."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from transforms.read.chunks import count_newlines_before
from transforms.records import BadRecord


def locate(records: Iterable[BadRecord]) -> list[tuple[BadRecord, str]]:
    """Pairs each bad record with a human location: `path line N` (from 1), `path Bundle.entry[N]`
    (from 0, as in FHIRPath) or, for Avro and Parquet, `path record N` (the row number, from 0).

    Line numbers of chunks that start mid-file are found by counting newlines
    before the chunk, once per file and only here, on the error path.
    """
    records = sorted(records, key=lambda r: (r.origin.path, r.origin.offset, r.index))
    offsets: dict[str, set[int]] = defaultdict(set)
    for record in records:
        if record.origin.offset > 0:
            offsets[record.origin.path].add(record.origin.offset)
    before = {path: count_newlines_before(path, wanted) for path, wanted in offsets.items()}
    located = []
    for record in records:
        path, offset = record.origin
        if record.location is not None:
            located.append((record, record.location))
            continue
        if record.origin.is_records:
            where = f"{path} record {record.index}" if record.index >= 0 else path
        elif offset < 0:
            where = f"{path} Bundle.entry[{record.index}]" if record.index >= 0 else path
        else:
            lines_before = before[path][offset] if offset else 0
            where = f"{path} line {lines_before + record.index + 1}"
        located.append((record, where))
    return located


def operation_outcome(record: BadRecord, where: str) -> dict:
    """The OperationOutcome reporting one bad record. It never copies the record's content."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": record.code,
                "diagnostics": f"{where}: {record.reason}; not exported",
            }
        ],
    }
