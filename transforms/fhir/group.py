"""Group membership: the patients a `Group/[id]/$export` covers, resolved from Group resources.

A member counts when it is active at the export's `transactionTime`: members
with `inactive=true`, a `period.end` before `transactionTime` or a
`period.start` after it are left out. `member.entity` may reference a Patient
(`Patient/X`, an absolute URL, or the `urn:uuid:X` / bare `X` forms real data
carries when X is a known Patient id) or another Group, which is resolved
recursively with a guard against cycles. A member that resolves to nothing is
not dropped silently: it is reported as a `MemberIssue`, which the export lists
in its manifest's `error[]`.

With `_since`, a patient whose membership started after `_since` (on every
path by which it is a member) is `whole`: its whole compartment is exported,
not only what changed in the window, since the client has never received it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Iterable, NamedTuple, Optional

from transforms.errors import Refused
from transforms.fhir.compartment import PATIENT, PatientSet
from transforms.fhir.elements import _tagged  # the one SUBSETTED tagging rule, shared with `_elements`
from transforms.fhir.instant import InvalidInstant, datetime_bounds, instant_key
from transforms.fhir.references import split_reference

GROUP = "Group"


class GroupRefused(Refused):
    """The Group cannot be exported as asked; `str()` says why."""


class MemberIssue(NamedTuple):
    """A member entry that resolved to no patient, and why."""

    group_id: str
    index: int  # position in Group.member, from 0
    reason: str


class Membership(NamedTuple):
    """The resolved patients and the member entries that could not be resolved."""

    patients: PatientSet
    issues: list[MemberIssue]
    outside: frozenset[str] = frozenset()  # the source's Patient ids not covered (for the last guard)


def resolve_group(
    group_id: str,
    groups: dict[str, dict],
    patient_ids: Iterable[str],
    transaction_time: str,
    since: Optional[str] = None,
    ambiguous: Mapping[str, int] = MappingProxyType({}),
) -> Membership:
    """Resolves `Group/group_id` against the source's Groups and Patient ids.

    `ambiguous` maps the ids of Groups the source holds several different copies
    of to their number of copies; reaching one of them is refused, since which
    copy's members to export cannot be told.
    """
    root = groups.get(group_id)
    if root is None:
        raise GroupRefused(f"Group/{group_id} is not in the source")
    _check_unambiguous(group_id, ambiguous)
    _check_exportable(group_id, root)
    resolver = _Resolver(groups, frozenset(patient_ids), instant_key(transaction_time), since, ambiguous)
    resolver.visit(group_id, root, new=False, path=(group_id,))
    new_on_every_path = {p for p, flags in resolver.found.items() if all(flags)}
    return Membership(PatientSet.of(resolver.found, new_on_every_path), resolver.issues)


def _check_unambiguous(group_id: str, ambiguous: Mapping[str, int], via: str = "") -> None:
    if group_id in ambiguous:
        raise GroupRefused(
            f"Group/{group_id}{via} is ambiguous: the source holds {ambiguous[group_id]} different "
            "Groups with this id, so which members to export cannot be told"
        )


def _check_exportable(group_id: str, group: dict) -> None:
    if group.get("actual") is False:
        raise GroupRefused(
            f"Group/{group_id} has actual=false: it describes a kind of patient, not a list of patients"
        )
    if not group.get("member") and group.get("characteristic"):
        raise GroupRefused(
            f"Group/{group_id} defines its members only by characteristic, which this engine does not evaluate"
        )


class _Resolver:
    def __init__(self, groups: dict[str, dict], patients: frozenset[str], tx, since: Optional[str],
                 ambiguous: Mapping[str, int]):
        self._groups = groups
        self._ambiguous = ambiguous
        self._patients = patients
        self._tx = tx
        self._since = instant_key(since) if since else None
        self.found: dict[str, list[bool]] = {}
        self.issues: list[MemberIssue] = []

    def visit(self, group_id: str, group: dict, new: bool, path: tuple[str, ...]) -> None:
        members = group.get("member") or []
        if type(members) is not list:
            self.issues.append(MemberIssue(group_id, -1, "Group.member is not a list"))
            return
        for index, member in enumerate(members):
            try:
                self._member(group_id, index, member, new, path)
            except InvalidInstant as exc:
                self.issues.append(MemberIssue(group_id, index, f"member.period: {exc.rule}"))

    def _member(self, group_id: str, index: int, member: object, new: bool, path: tuple[str, ...]) -> None:
        def issue(reason: str) -> None:
            self.issues.append(MemberIssue(group_id, index, reason))

        if type(member) is not dict:
            return issue("member is not a JSON object")
        if member.get("inactive") is True or not self._in_period(member.get("period")):
            return
        new = new or self._joined_after_since(member.get("period"))
        entity = member.get("entity")
        reference = entity.get("reference") if type(entity) is dict else None
        if type(reference) is not str or not reference:
            return issue("member.entity has no reference to a Patient or Group")
        kind, target = self._target(reference)
        if kind == PATIENT:
            self.found.setdefault(target, []).append(new)
        elif kind == GROUP:
            if target in path:
                return issue(f"member.entity makes a cycle of Groups: {' -> '.join(path + (target,))}")
            nested = self._groups.get(target)
            if nested is None:
                return issue(f"member.entity: Group/{target} is not in the source")
            _check_unambiguous(target, self._ambiguous, f" (a member of Group/{group_id})")
            if nested.get("actual") is False:
                return issue(f"member.entity: Group/{target} has actual=false")
            self.visit(target, nested, new, path + (target,))
        else:
            issue("member.entity is not a Patient or Group in the source")

    def _target(self, reference: str) -> tuple[Optional[str], Optional[str]]:
        target = split_reference(reference)
        if target.type == GROUP:
            return GROUP, target.id
        if target.type == PATIENT:
            return (PATIENT, target.id) if target.id in self._patients else (None, None)
        if target.type is not None or target.base is not None or ":" in reference.removeprefix("urn:uuid:"):
            return None, None
        # `urn:uuid:X` and bare `X`, as real data carries, may name a Patient or a Group.
        if target.id in self._patients:
            return PATIENT, target.id
        return (GROUP, target.id) if target.id in self._groups else (None, None)

    def _in_period(self, period: object) -> bool:
        """False when the membership ended before, or starts after, `transactionTime`."""
        if type(period) is not dict:
            return True
        start, end = period.get("start"), period.get("end")
        if start is not None and datetime_bounds(start)[0] > self._tx:
            return False
        return end is None or not _wholly_before(end, self._tx)

    def _joined_after_since(self, period: object) -> bool:
        if self._since is None or type(period) is not dict or period.get("start") is None:
            return False
        return datetime_bounds(period["start"])[1] > self._since


def _wholly_before(text: str, moment) -> bool:
    """True when every instant a `dateTime` spans is before `moment`."""
    start, end = datetime_bounds(text)
    return start < moment if start == end else end <= moment


def member_patient_ids(group: dict) -> set[str]:
    """The ids every `member.entity` of `group` may name as a patient (nested Groups excluded)."""
    members = group.get("member")
    if type(members) is not list:
        return set()
    return {p for p in map(_member_patient, members) if p is not None}


def _member_patient(member: object) -> Optional[str]:
    """The patient id a member entry names (`Patient/X`, an absolute URL, `urn:uuid:X`, bare `X`)."""
    entity = member.get("entity") if type(member) is dict else None
    reference = entity.get("reference") if type(entity) is dict else None
    if type(reference) is not str or not reference or reference.startswith("#"):
        return None
    target = split_reference(reference)
    if not target.id:
        return None
    if target.type == PATIENT:
        return target.id
    if target.type is None and target.base is None and ":" not in reference.removeprefix("urn:uuid:"):
        return target.id  # `urn:uuid:X` or bare `X`: a patient only when X is a covered patient id
    return None


def covered_roster(group: dict, covered: Iterable[str]) -> Optional[dict]:
    """`group` cut to what names no patient but its `covered` members, tagged SUBSETTED.

    `member` keeps the entries naming a `covered` patient; members naming anyone
    else, and nested Groups (whose own members may reach beyond the export), are
    dropped. If anything is cut, the Group loses `text` (its narrative may list
    the removed members), `contained`, `quantity` (it counts the whole roster) and
    every Reference that cannot be shown to name a kept member or another type's
    resource (`_kept_reference`), with the smallest list entry holding it (an
    extension, a characteristic; an element outside any list). Returns None when
    nothing is cut (the Group is exported as it was read). Raises
    `transforms.fhir.elements.InvalidMeta` when `meta` cannot be tagged.
    """
    covered = frozenset(covered)
    members = group.get("member")
    if members is not None:
        kept = [m for m in members if _member_patient(m) in covered] if type(members) is list else []
        cut = type(members) is not list or len(kept) != len(members)
        body = {k: v for k, v in group.items() if k != "member"}
        if kept:
            body = {k: (kept if k == "member" else v) for k, v in group.items()}
    else:
        body, cut = group, False
    scrubbed = {}
    for key, value in body.items():
        value = _scrub(value, covered, key)
        if value is not _DROP:
            scrubbed[key] = value
    if not cut and scrubbed == group:
        return None
    return _tagged({k: v for k, v in scrubbed.items() if k not in _LEFT_OUT_WHEN_CUT})


_LEFT_OUT_WHEN_CUT = frozenset({"text", "contained", "quantity", "_quantity"})
# Reference elements a Group may hold whose name does not end in `Reference` (a display-only one has no
# `reference` key to tell it by): Group.managingEntity, Group.member.entity, Identifier.assigner.
_REFERENCE_ELEMENTS = frozenset({"managingEntity", "entity", "assigner"})
_DROP = object()


def _scrub(node: object, covered: frozenset[str], key: str) -> object:
    """`node` without the References `_kept_reference` refuses; `_DROP` when `node` must go whole."""
    if type(node) is dict:
        if ("reference" in node or key.endswith("Reference") or key in _REFERENCE_ELEMENTS) and not _kept_reference(
                node, covered):
            return _DROP
        out = {}
        for child_key, child in node.items():
            child = _scrub(child, covered, child_key)
            if child is _DROP:
                return _DROP
            out[child_key] = child
        return out
    if type(node) is list:
        out = [item for item in (_scrub(item, covered, key) for item in node) if item is not _DROP]
        return _DROP if node and not out else out  # a list emptied so goes with what holds it
    return node


def _kept_reference(reference: dict, covered: frozenset[str]) -> bool:
    """True when `reference` names a covered patient, or a resource of another type than Patient.

    A display- or identifier-only Reference, a contained (`#x`) one and an untyped
    one (`urn:uuid:X`, bare `X`) naming no covered patient cannot be shown to name
    no removed member: they are not kept."""
    text = reference.get("reference")
    if type(text) is not str or text.startswith("#"):
        return False
    target = split_reference(text)
    if not target.id:
        return False
    if target.type is None or target.type == PATIENT:
        return target.id in covered
    return True
