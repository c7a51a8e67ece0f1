"""`organizeOutputBy=Patient` (Bulk Data IG v3, "Output File Organization"): resource blocks by patient.

Output files hold blocks: a header `Parameters` resource with one parameter
`header` whose `valueReference` is `Patient/<id>`, then that Patient (when
exported), then every exported resource in its Patient compartment. A resource
in several patients' compartments is in each of their blocks; at Patient and
Group level only covered patients have blocks. A resource in no patient's
compartment (an Organization, a Practitioner, a Medication), or a Group (a roster,
not a patient's data), is not exported:
the IG lets a server omit it, and repeating it in every block would multiply
the export. It is reported as an `information` notice instead. Beam-free:
`transforms.write.organized` groups and writes the blocks.
"""

from __future__ import annotations

from typing import Iterable, Optional

import orjson

from transforms.fhir.compartment import COMPARTMENT_TYPES, PATIENT, compartment_patients
from transforms.fhir.group import GROUP

ORGANIZE_TYPES = (PATIENT,)  # the organizeOutputBy values this engine supports
NO_BLOCK = "in no Patient's compartment, so in no block of an organizeOutputBy=Patient export"


def block_patients(resource_type: str, body: dict, covered: Optional[frozenset[str]] = None) -> tuple[str, ...]:
    """The patients whose blocks hold this resource (sorted), limited to `covered` when given."""
    if resource_type not in COMPARTMENT_TYPES or resource_type == GROUP:
        return ()
    found = compartment_patients(resource_type, body)
    if covered is not None:
        found &= covered
    return tuple(sorted(found))


def header_line(patient_id: str) -> bytes:
    """A block's header: a `Parameters` resource whose `header` parameter references the patient."""
    return orjson.dumps({"resourceType": "Parameters", "parameter": [
        {"name": "header", "valueReference": {"reference": f"{PATIENT}/{patient_id}"}}]})


def block_lines(patient_id: str, resources: Iterable[tuple[str, bytes]]) -> list[bytes]:
    """One patient's block: the header, the Patient, then the other resources by type, then bytes
    (a stable order, so the same export gives the same files)."""
    members = sorted(resources, key=lambda item: (item[0] != PATIENT, item[0], item[1]))
    return [header_line(patient_id), *(raw for _, raw in members)]
