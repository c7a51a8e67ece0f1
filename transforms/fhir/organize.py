"""`organizeOutputBy` (Bulk Data IG v3, "Output File Organization"): resource blocks by instances of a type.

Output files hold blocks: a header `Parameters` resource with one parameter
`header` whose `valueReference` is `<Type>/<id>`, then that resource (when
exported), then the exported resources that belong with it:

- **Patient**: every exported resource in the patient's compartment (the IG
  asks for the Patient Compartment Definition). At Patient and Group level only
  covered patients have blocks. A Group (a roster, not a patient's data) is in
  no block.
- **Group, Organization, Practitioner**: every exported resource that
  references the instance (the IG: "resources that reference the resource
  referenced in the header"), through any `Reference` in it: `Type/id`, an
  absolute URL ending so, or a `urn:uuid:`/`urn:oid:` id that is one of the
  source's instances of the type. Only the source's instances have blocks, so a
  dangling reference makes none. A resource that references two instances is in
  both blocks; an instance that references another (`Organization.partOf`) is in
  its own block and the other's.

A resource in no block is not exported: the IG lets a server omit it ("MAY be
omitted from the export"), and repeating it in every block would multiply the
export. It is reported as an `information` notice instead (`no_block`).
Beam-free: `transforms.write.organized` groups and writes the blocks.
"""

from __future__ import annotations

from typing import Iterable, Optional

import orjson

from transforms.fhir.compartment import COMPARTMENT_TYPES, PATIENT, compartment_patients
from transforms.fhir.group import GROUP
from transforms.fhir.references import references

# The organizeOutputBy values this engine supports: Patient by compartment; the others by reference,
# with the source's instances' ids (few, for these types) held as a side input.
ORGANIZE_TYPES = (PATIENT, GROUP, "Organization", "Practitioner")


def no_block(by: str) -> str:
    """The notice for an exported resource in no block of an organizeOutputBy=`by` export."""
    if by == PATIENT:
        return "in no Patient's compartment, so in no block of an organizeOutputBy=Patient export"
    return f"references no {by} of the source, so in no block of an organizeOutputBy={by} export"


def block_ids(by: str, resource_type: str, body: dict, known: Optional[frozenset[str]] = None) -> tuple[str, ...]:
    """The ids of the instances of `by` whose blocks hold this resource (sorted).

    For Patient, its compartment patients, limited to `known` (the covered ones) when given. For
    another type, the instances it references among `known` (the source's instances), and itself.
    """
    if by == PATIENT:
        return block_patients(resource_type, body, known)
    known = known or frozenset()
    found: set[str] = set()
    references(body, frozenset((by,)), found, lambda rid: by if rid in known else None)
    skip = len(by) + 1
    ids = {key[skip:] for key in found if key[skip:] in known}
    own = body.get("id")
    if resource_type == by and type(own) is str:
        ids.add(own)
    return tuple(sorted(ids))


def block_patients(resource_type: str, body: dict, covered: Optional[frozenset[str]] = None) -> tuple[str, ...]:
    """The patients whose blocks hold this resource (sorted), limited to `covered` when given."""
    if resource_type not in COMPARTMENT_TYPES or resource_type == GROUP:
        return ()
    found = compartment_patients(resource_type, body)
    if covered is not None:
        found &= covered
    return tuple(sorted(found))


def header_line(by: str, instance_id: str) -> bytes:
    """A block's header: a `Parameters` resource whose `header` parameter references the instance."""
    return orjson.dumps({"resourceType": "Parameters", "parameter": [
        {"name": "header", "valueReference": {"reference": f"{by}/{instance_id}"}}]})


def block_lines(by: str, instance_id: str, resources: Iterable[tuple[str, bytes, bool]]) -> list[bytes]:
    """One instance's block from `(type, bytes, is the instance)`: the header, the instance, then the
    other resources by type, then bytes (a stable order, so the same export gives the same files)."""
    members = sorted(resources, key=lambda item: (not item[2], item[0] != by, item[0], item[1]))
    return [header_line(by, instance_id), *(raw for _, raw, _ in members)]
