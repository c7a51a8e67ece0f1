"""Which patients a Patient- or Group-level export covers, from the source's Patients and Groups.

Beam-free, so that the same rule runs where the source is small enough to be
looked at before a job exists (the launcher) and, otherwise, inside the
pipeline: a `SourceIndex` is built from every Patient id and Group of the
source (`IndexBuilder`, mergeable), then `membership_of` resolves the
kick-off's Group and `patient` parameter against it, or raises
`MembershipRefused` naming the parameter and the reason.

Two Groups with one id but different content make a Group export ambiguous;
identical copies (the same Group in two Bundles) are one Group.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

from transforms.errors import Refused
from transforms.fhir.compartment import PATIENT, PatientSet
from transforms.fhir.group import GROUP, GroupRefused, Membership, resolve_group


class MembershipRefused(Refused):
    """The covered patients cannot be resolved as asked; `parameter` names the kick-off parameter."""

    def __init__(self, parameter: str, reason: str):
        super().__init__(f"{parameter}: {reason}")
        self.parameter, self.reason = parameter, reason


class SourceIndex(NamedTuple):
    """What a Patient or Group export needs to know about a source's patients and groups."""

    patient_ids: frozenset[str]
    groups: dict[str, dict]  # the first copy of each Group id
    # Group ids with copies that differ -> how many copies the source holds.
    ambiguous_groups: dict[str, int] = {}


class IndexBuilder:
    """Collects Patient ids and Groups, one resource at a time; builders of parts of a source merge."""

    def __init__(self) -> None:
        self.patient_ids: set[str] = set()
        self.groups: dict[str, dict] = {}
        self.copies: dict[str, list[dict]] = {}  # Group id -> every copy seen, once there are two

    def add(self, resource_type: str, body: dict) -> "IndexBuilder":
        resource_id = body.get("id")
        if type(resource_id) is not str:
            return self
        if resource_type == PATIENT:
            self.patient_ids.add(resource_id)
        elif resource_type == GROUP:
            if resource_id in self.groups:
                self.copies.setdefault(resource_id, [self.groups[resource_id]]).append(body)
            else:
                self.groups[resource_id] = body
        return self

    def merge(self, other: "IndexBuilder") -> "IndexBuilder":
        self.patient_ids |= other.patient_ids
        for group_id, body in other.groups.items():
            for copy in other.copies.get(group_id, [body]):
                self.add(GROUP, copy)
        return self

    def build(self) -> SourceIndex:
        ambiguous = {group_id: len(bodies) for group_id, bodies in self.copies.items()
                     if any(b != bodies[0] for b in bodies[1:])}
        return SourceIndex(frozenset(self.patient_ids), self.groups, ambiguous)


def membership_of(level: str, group_id: Optional[str], patients: Iterable[str], index: SourceIndex,
                  transaction_time: str, since: Optional[str] = None) -> Membership:
    """The patients a `level` ("patient" or "group") export covers, narrowed to the `patient` parameter's
    `patients` if any, with the source's other Patient ids as `outside`; raises `MembershipRefused` when
    the Group or a patient cannot be exported."""
    if level == "patient":
        membership = Membership(PatientSet.of(index.patient_ids), [])
        scope = "in the source"
    else:
        try:
            membership = resolve_group(group_id, index.groups, index.patient_ids, transaction_time, since,
                                       index.ambiguous_groups)
        except GroupRefused as exc:
            raise MembershipRefused("group", str(exc)) from None
        scope = f"a member of Group/{group_id}"
    wanted = tuple(patients)
    covered = _narrowed(membership, wanted, scope) if wanted else membership
    return covered._replace(outside=index.patient_ids - covered.patients.ids)


def _narrowed(membership: Membership, wanted: tuple[str, ...], scope: str) -> Membership:
    """Keeps only the `patient` parameter's patients, refusing any that is not covered."""
    covered = membership.patients
    missing = [p for p in wanted if p not in covered.ids]
    if missing:
        listed = ", ".join(f"Patient/{p}" for p in missing)
        raise MembershipRefused(
            "patient",
            f"{listed} {'is' if len(missing) == 1 else 'are'} not {scope} (OperationOutcome: error, not-found)",
        )
    return Membership(PatientSet.of(wanted, covered.whole.intersection(wanted)), [])
