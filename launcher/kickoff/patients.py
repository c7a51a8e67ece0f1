"""Kickoff-time resolution of the patients a Patient- or Group-level export covers, where it is cheap.

A source of at most `scan_limit()` bytes (64 MiB by default; the environment
variable `BULK_EXPORT_KICKOFF_SCAN_BYTES` sets another limit, 0 for never) is
scanned before a job exists, so a missing Group, a Group that lists no
patients, or a `patient` that is not in the source (or not a member) is
refused as a `KickoffRefused` with nothing recorded or written. A larger
source is never scanned by the launcher: the pipeline resolves the patients
itself (`transforms.select.covered_patients.ResolvePatients`), by the same
rule (`transforms.fhir.membership`), and a Group or `patient` that cannot be
exported ends the job in `error` with the same message.
"""

from __future__ import annotations

import os
from typing import Optional

from launcher.core.names import source_bytes
from launcher.kickoff.parser import KickoffRefused
from pipelines.models import ExportLevel, ExportRequest
from transforms.errors import Refused
from transforms.fhir.group import Membership
from transforms.fhir.membership import MembershipRefused, membership_of
from transforms.storage.pg_source import is_postgres
from transforms.storage.source_files import match_source

SCAN_LIMIT_ENV = "BULK_EXPORT_KICKOFF_SCAN_BYTES"
DEFAULT_SCAN_LIMIT = 64 << 20


def scan_limit() -> int:
    """The largest source the launcher scans at kickoff, in bytes."""
    text = os.environ.get(SCAN_LIMIT_ENV, "")
    if not text:
        return DEFAULT_SCAN_LIMIT
    if not text.isdigit():
        raise Refused(f"{SCAN_LIMIT_ENV} must be a number of bytes, not {text!r}")
    return int(text)


def resolve_patients(
    request: ExportRequest, source: str, source_format: str, transaction_time: str
) -> Optional[Membership]:
    """The patients `request` covers, resolved here; None for a system-level export (which covers
    everything) and for a PostgreSQL source or a source too large to scan here (the pipeline resolves them)."""
    if request.level is ExportLevel.SYSTEM or is_postgres(source) or source_bytes(match_source(source)) > scan_limit():
        return None
    from transforms.read.lookup import index_source  # reads the source with Beam's readers: only for a scan

    index = index_source(source, source_format)
    try:
        return membership_of(request.level.value, request.group_id, request.patients, index, transaction_time,
                             request.since)
    except MembershipRefused as exc:
        raise KickoffRefused(exc.parameter, exc.reason) from None
