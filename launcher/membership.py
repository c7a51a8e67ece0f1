"""Kickoff-time resolution of the patients a Patient- or Group-level export covers.

It runs before a job exists, so a missing Group, a Group that lists no
patients, or a `patient` that is not in the source (or not a member) is refused
as a `KickoffRefused` with nothing recorded or written.
"""

from __future__ import annotations

from typing import Optional

from launcher.kickoff import KickoffRefused
from pipelines.models import ExportLevel, ExportRequest
from transforms.fhir.compartment import PatientSet
from transforms.fhir.group import GroupRefused, Membership, resolve_group
from transforms.read.lookup import index_source


def resolve_patients(
    request: ExportRequest, source: str, source_format: str, transaction_time: str
) -> Optional[Membership]:
    """The patients `request` covers, or None for a system-level export (which covers everything)."""
    if request.level is ExportLevel.SYSTEM:
        return None
    index = index_source(source, source_format)
    if request.level is ExportLevel.PATIENT:
        membership = Membership(PatientSet.of(index.patient_ids), [])
        scope = "in the source"
    else:
        try:
            membership = resolve_group(
                request.group_id, index.groups, index.patient_ids, transaction_time, request.since,
                index.ambiguous_groups,
            )
        except GroupRefused as exc:
            raise KickoffRefused("group", str(exc)) from None
        scope = f"a member of Group/{request.group_id}"
    if request.patients:
        membership = _narrowed(membership, request.patients, scope)
    return membership


def _narrowed(membership: Membership, wanted: tuple[str, ...], scope: str) -> Membership:
    """Keeps only the `patient` parameter's patients, refusing any that is not covered."""
    patients = membership.patients
    missing = [p for p in wanted if p not in patients.ids]
    if missing:
        listed = ", ".join(f"Patient/{p}" for p in missing)
        raise KickoffRefused(
            "patient",
            f"{listed} {'is' if len(missing) == 1 else 'are'} not {scope} "
            "(OperationOutcome: error, not-found)",
        )
    return Membership(PatientSet.of(wanted, patients.whole.intersection(wanted)), [])
