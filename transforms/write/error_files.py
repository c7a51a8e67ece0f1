"""Bad source records as FHIR OperationOutcomes, one per record, naming file and line.

Error files go to the client, so an OperationOutcome names the element, the
rule and the place (the file relative to the source's root, the line, Bundle
entry or record, and the resource's id when it is a valid FHIR id), never a
value from the source nor the server's own paths.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

from transforms.fhir.references import FHIR_ID
from transforms.read.chunks import count_newlines_before, relative_path
from transforms.records import BadRecord


def locate(records: Iterable[BadRecord], root: Optional[str] = None) -> list[tuple[BadRecord, str]]:
    """Pairs each bad record with a human location: `path line N` (from 1), `path Bundle.entry[N]`
    (from 0, as in FHIRPath; `path line N Bundle.entry[M]` for a Bundle on an NDJSON line) or,
    for Avro and Parquet, `path record N` (the row number, from 0), then ` (Type/id)` when the
    resource's id is known and a valid FHIR id.

    With `root` (a `transforms.read.chunks.source_root`), `path` is relative to it. Line
    numbers of chunks that start mid-file are found by counting newlines before the chunk,
    once per file and only here, on the error path.
    """
    records = sorted(records, key=lambda r: (r.origin.path, r.origin.offset, r.index, r.entry or 0))
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
        name = relative_path(path, root) if root is not None else path
        if record.origin.is_records:
            where = f"{name} record {record.index}" if record.index >= 0 else name
        elif offset < 0:
            where = f"{name} Bundle.entry[{record.index}]" if record.index >= 0 else name
        else:
            lines_before = before[path][offset] if offset else 0
            where = f"{name} line {lines_before + record.index + 1}"
            if record.entry is not None:
                where += f" Bundle.entry[{record.entry}]"
        if record.resource_id is not None and record.resource_type and FHIR_ID.match(record.resource_id):
            where += f" ({record.resource_type}/{record.resource_id})"
        located.append((record, where))
    return located


def operation_outcome(record: BadRecord, where: str) -> dict:
    """The OperationOutcome reporting one bad record. It never copies the record's content.

    Its diagnostics end `; not exported`, except for a `warning`, which reports a resource
    that is exported."""
    outcome = "" if record.severity == "warning" else "; not exported"
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
