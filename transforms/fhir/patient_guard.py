"""The last guard of a Patient- or Group-level export: no written resource names a patient it does not cover.

A resource may name a Patient outside the covered set only where the Patient
compartment definition makes that reference part of the record: at one of its
type's compartment paths (`Observation.performer`, `Patient.link.other`, ...),
and only when the resource is also in a covered patient's compartment (a
resource shared between two patients' records belongs to both). Anywhere else
(`Observation.focus`, an extension, a contained resource, any reference of a
type outside the compartment, such as a supporting Organization or Device),
a reference naming a patient the export does not cover withholds the resource.

A reference names a patient by its `reference` text, read as the compartment
reads it: typed (`Patient/X`, `Patient/X/_history/N`, an absolute URL ending so,
or any form with `Reference.type` Patient) it names Patient X; untyped
(`urn:uuid:X`, a bare `X`) it names Patient X when X is the id of one of the
source's Patients (the `outside` ids: the source's Patients the export does not
cover). A `Reference` with `type` Patient but only an `identifier` names a
patient no id can place, so outside the compartment paths it withholds too.
See `docs/conformance.md`.
"""

from __future__ import annotations

import re
from typing import Container, NamedTuple, Optional

from transforms.fhir.compartment import COMPARTMENT_PATHS, PATIENT
from transforms.fhir.references import split_reference

_URN_UUID = "urn:uuid:"
_PATIENT_SLASH = PATIENT + "/"
_PATH_SETS: dict[str, frozenset[tuple[str, ...]]] = {t: frozenset(p) for t, p in COMPARTMENT_PATHS.items()}
# An element name, as FHIR spells them; any other JSON key is reported as `?`, never copied.
_ELEMENT = re.compile(r"_?[A-Za-z][A-Za-z0-9]{0,63}\Z")
_NOBODY: frozenset[str] = frozenset()
UNPLACED = ""  # the id of a patient named by `identifier` only: never covered


class PatientNames(NamedTuple):
    """The patients one resource may name, by where it names them; `typed` False: only if a source Patient's id."""

    record: frozenset[str]  # ids at its compartment paths, typed or not (its own id for a Patient)
    placed: tuple[tuple[str, str, bool], ...]  # (id, element path, typed) at its compartment paths
    elsewhere: tuple[tuple[str, str, bool], ...]  # (id, element path, typed) at any other path

    def ids(self) -> set[str]:
        """Every id it may name (what a keyed join asks about)."""
        return set(self.record) | {p for p, _, _ in self.elsewhere if p != UNPLACED}


def patient_names(resource_type: str, body: dict) -> PatientNames:
    """Walks `body` once and sorts every reference that may name a patient by where it is."""
    paths = _PATH_SETS.get(resource_type, frozenset())
    record: set[str] = set()
    placed: list[tuple[str, str, bool]] = []
    elsewhere: list[tuple[str, str, bool]] = []
    for trail, node in _references(body):
        named = _named(node)
        if named is None:
            continue
        patient, typed = named
        if _keys(trail) in paths:
            if patient != UNPLACED:  # an identifier places no one in the compartment either
                record.add(patient)
                placed.append((patient, _path(resource_type, trail), typed))
        else:
            elsewhere.append((patient, _path(resource_type, trail), typed))
    if resource_type == PATIENT and type(body.get("id")) is str:
        record.add(body["id"])
        placed.append((body["id"], f"{PATIENT}.id", True))
    return PatientNames(frozenset(record), tuple(placed), tuple(elsewhere))


def breach(names: PatientNames, covered: Container[str], outside: Container[str] = _NOBODY) -> Optional[str]:
    """Why a resource naming `names` may not be written for `covered`, or None when it may; `outside`:
    the ids of the source's Patients that are not covered (what an untyped reference is judged by).

    The reason names the element path, never a value."""
    for patient, where, typed in names.elsewhere:
        if patient not in names.record and patient not in covered and (typed or patient in outside):
            return f"names a Patient outside the export at {where}"
    if not any(p in covered for p in names.record):
        for patient, where, typed in names.placed:
            if typed or patient in outside:
                return f"is in the record of a Patient outside the export only ({where})"
    return None


def _named(node: dict) -> Optional[tuple[str, bool]]:
    """(id, typed) of the patient a Reference may name, or None when it names no patient."""
    text, kind = node.get("reference"), node.get("type")
    if type(kind) is not str:
        kind = None
    elif kind != PATIENT:
        return None  # `Reference.type` says it is another type's resource
    if type(text) is not str:
        return (UNPLACED, True) if kind is not None else None  # a logical reference to a Patient
    if text.startswith(_PATIENT_SLASH) and text.find("/", 8) < 0:
        return (text[8:], True) if len(text) > 8 else None
    if text.startswith(_URN_UUID):
        return (text[len(_URN_UUID):], kind is not None) if len(text) > len(_URN_UUID) else None
    target = split_reference(text, kind)
    if not target.id:
        return None
    if target.type == PATIENT:
        return target.id, True
    return (target.id, False) if target.type is None else None


def _references(body: dict) -> list[tuple[tuple, dict]]:
    """(trail of keys and list indices from the root, node) of each Reference in `body`: an object with a
    string `reference`, or, below the root, one with `type` and `identifier` but no `reference`."""
    found: list[tuple[tuple, dict]] = []
    trail: list = []  # one stack for the walk, copied only at a reference

    def walk(node: object) -> None:
        if type(node) is dict:
            text = node.get("reference")
            if type(text) is str or (text is None and trail and type(node.get("type")) is str
                                     and type(node.get("identifier")) is dict):
                found.append((tuple(trail), node))
            for key, value in node.items():
                if type(value) is dict or type(value) is list:
                    trail.append(key)
                    walk(value)
                    trail.pop()
        else:
            for n, item in enumerate(node):
                if type(item) is dict or type(item) is list:
                    trail.append(n)
                    walk(item)
                    trail.pop()

    walk(body)
    return found


def _keys(trail: tuple) -> tuple[str, ...]:
    return tuple(step for step in trail if type(step) is str)


def _path(resource_type: str, trail: tuple) -> str:
    """`Type.element[n].element`: the element path, with any key that is no element name as `?`."""
    where = resource_type
    for step in trail:
        where += f"[{step}]" if type(step) is int else "." + (step if _ELEMENT.match(step) else "?")
    return where
