"""The last guard of a Patient- or Group-level export: no written resource names a patient it does not cover.

A resource may name a Patient outside the covered set only where the Patient
compartment definition makes that reference part of the record: at one of its
type's compartment paths (`Observation.performer`, `Patient.link.other`, ...),
and only when the resource is also in a covered patient's compartment (a
resource shared between two patients' records belongs to both). Anywhere else
(`Observation.focus`, an extension, a contained resource, any reference of a
type outside the compartment, such as an `--include-referenced` Organization),
a reference naming a patient the export does not cover withholds the resource.

A patient is named by a typed reference: `Patient/X`, `Patient/X/_history/N`
or an absolute URL ending so. An untyped `urn:uuid:X` names a patient only when
X is a covered id (as for the compartment): without an index of every Patient
of the source it cannot be told from a reference to an Encounter or a Claim.
See `docs/conformance.md`.
"""

from __future__ import annotations

import re
from typing import Container, NamedTuple, Optional

from transforms.fhir.compartment import COMPARTMENT_PATHS, PATIENT, patient_reference_id

_URN_UUID = "urn:uuid:"
_PATH_SETS: dict[str, frozenset[tuple[str, ...]]] = {t: frozenset(p) for t, p in COMPARTMENT_PATHS.items()}
# An element name, as FHIR spells them; any other JSON key is reported as `?`, never copied.
_ELEMENT = re.compile(r"_?[A-Za-z][A-Za-z0-9]{0,63}\Z")


class PatientNames(NamedTuple):
    """The patients one resource names, by where it names them."""

    record: frozenset[str]  # ids at its compartment paths, typed or `urn:uuid:` (its own id for a Patient)
    typed_record: tuple[tuple[str, str], ...]  # (id, element path) of the typed ones among them
    elsewhere: tuple[tuple[str, str], ...]  # (id, element path) of typed patient references at any other path


def patient_names(resource_type: str, body: dict) -> PatientNames:
    """Walks `body` once and sorts every patient reference it holds by where it is."""
    paths = _PATH_SETS.get(resource_type, frozenset())
    record: set[str] = set()
    typed_record: list[tuple[str, str]] = []
    elsewhere: list[tuple[str, str]] = []
    for trail, text in _references(body):
        patient = patient_reference_id(text)
        if patient is None:
            continue
        typed = not text.startswith(_URN_UUID)
        if _keys(trail) in paths:
            record.add(patient)
            if typed:
                typed_record.append((patient, _path(resource_type, trail)))
        elif typed:
            elsewhere.append((patient, _path(resource_type, trail)))
    if resource_type == PATIENT and type(body.get("id")) is str:
        record.add(body["id"])
        typed_record.append((body["id"], f"{PATIENT}.id"))
    return PatientNames(frozenset(record), tuple(typed_record), tuple(elsewhere))


def breach(names: PatientNames, covered: Container[str]) -> Optional[str]:
    """Why a resource naming `names` may not be written for `covered`, or None when it may.

    The reason names the element path, never a value."""
    for patient, where in names.elsewhere:
        if patient not in names.record and patient not in covered:
            return f"names a Patient outside the export at {where}"
    if names.typed_record and not any(p in covered for p in names.record):
        return f"is in the record of a Patient outside the export only ({names.typed_record[0][1]})"
    return None


def _references(body: dict) -> list[tuple[tuple, str]]:
    """(trail of keys and list indices from the root, reference text) of each reference in `body`."""
    found: list[tuple[tuple, str]] = []
    trail: list = []  # one stack for the walk, copied only at a reference

    def walk(node: object) -> None:
        if type(node) is dict:
            text = node.get("reference")
            if type(text) is str:
                found.append((tuple(trail), text))
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
