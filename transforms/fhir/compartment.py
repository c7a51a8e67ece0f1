"""The Patient compartment: which patients a resource belongs to, and the rule that keeps members'.

A resource is in patient X's compartment when one of the reference paths that
`CompartmentDefinition/patient` lists for its type points at X (the paths are
derived from the official R4 package into `patient_compartment.json`). Patient X
itself is in its own compartment. Types the definition leaves out (Organization,
Practitioner, Medication, ...) are in no patient's compartment.

The export keeps a resource when its compartment patients meet the job's
`PatientSet`, so a resource shared by several members is written once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, NamedTuple, Optional

from transforms.fhir.r4 import load_definition
from transforms.fhir.references import split_reference
from transforms.fhir.window import LastUpdatedWindow

if TYPE_CHECKING:
    from transforms.records import Resource

PATIENT = "Patient"
_URN_UUID = "urn:uuid:"


def _load_paths() -> dict[str, tuple[tuple[str, ...], ...]]:
    definition = load_definition("patient_compartment.json")["resourceTypes"]
    return {
        resource_type: tuple(
            dict.fromkeys(tuple(path.split(".")) for paths in params.values() for path in paths)
        )
        for resource_type, params in definition.items()
    }


# Resource type -> the element paths whose references place it in a compartment.
COMPARTMENT_PATHS: dict[str, tuple[tuple[str, ...], ...]] = _load_paths()
COMPARTMENT_TYPES: frozenset[str] = frozenset(COMPARTMENT_PATHS) | {PATIENT}
_PATIENT_SLASH = PATIENT + "/"


def split_types(types: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """`_type`'s names in the Patient compartment, and the others: at Patient and Group level the
    types whose supporting resources come beside the compartment's (`docs/conformance.md`)."""
    names = tuple(types)
    return (tuple(t for t in names if t in COMPARTMENT_TYPES),
            tuple(t for t in names if t not in COMPARTMENT_TYPES))


def patient_reference_id(reference: object) -> Optional[str]:
    """The patient id a `Reference.reference` may point at, or None when it cannot be a patient.

    Accepts `Patient/X`, `Patient/X/_history/N`, absolute URLs ending so, and
    the `urn:uuid:X` form of transaction Bundles (a candidate that only matches
    when X is a known patient id). Contained (`#x`) and other types' references
    are not patients.
    """
    if type(reference) is not str:
        return None
    # The two common forms, without a full parse.
    if reference.startswith(_PATIENT_SLASH) and reference.find("/", 8) < 0:
        return reference[8:] or None
    if reference.startswith(_URN_UUID):
        return reference[len(_URN_UUID):] or None
    target = split_reference(reference)
    if not target.id:
        return None
    if target.type == PATIENT or (target.type is None and reference.startswith(_URN_UUID)):
        return target.id
    return None


def _walk(node: object, path: tuple[str, ...], depth: int, found: set[str]) -> None:
    if type(node) is list:
        for item in node:
            _walk(item, path, depth, found)
        return
    if type(node) is not dict:
        return
    if depth == len(path):
        patient = patient_reference_id(node.get("reference"))
        if patient is not None:
            found.add(patient)
        return
    child = node.get(path[depth])
    if child is not None:
        _walk(child, path, depth + 1, found)


def compartment_patients(resource_type: str, body: dict) -> set[str]:
    """The ids of the patients whose compartment holds this resource (candidates for `urn:uuid:`)."""
    found: set[str] = set()
    for path in COMPARTMENT_PATHS.get(resource_type, ()):
        _walk(body, path, 0, found)
    if resource_type == PATIENT:
        own = body.get("id")
        if type(own) is str:
            found.add(own)
    return found


class PatientSet(NamedTuple):
    """The patients an export covers, and those of them whose whole compartment skips `_since`."""

    ids: frozenset[str]
    whole: frozenset[str] = frozenset()

    @classmethod
    def of(cls, ids: Iterable[str], whole: Iterable[str] = ()) -> "PatientSet":
        return cls(frozenset(ids), frozenset(whole))


class CompartmentRule:
    """The compartment-and-window test for one `PatientSet`, as a plain function of a resource.

    Called with a `Resource`, it returns it when kept and None otherwise, and
    raises `InvalidInstant` on a bad `meta.lastUpdated` (see `each_resource`), or its
    subclass `UpdatedAfterTransaction` for a member's resource updated after
    `transactionTime`, which is reported as a notice rather than dropped silently.
    """

    def __init__(self, patients: PatientSet, window: Optional[LastUpdatedWindow], unbounded=None):
        self._ids, self._whole = patients.ids, patients.whole
        self._window = window
        self._unbounded = unbounded or (window.without_since() if window is not None else None)

    def __call__(self, resource: Resource) -> Optional[Resource]:
        if resource.type not in COMPARTMENT_TYPES:
            return None
        found = compartment_patients(resource.type, resource.body)
        if found.isdisjoint(self._ids):
            return None
        window = self._window
        if window is None:
            return resource
        if window.admits_or_late(resource.body, resource.last_updated):  # late: reported, not dropped
            return resource
        if self._whole and not found.isdisjoint(self._whole):
            return resource if self._unbounded.admits(resource.body, resource.last_updated) else None
        return None
