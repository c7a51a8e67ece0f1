"""FHIR R4 definitions used to validate resource type names (e.g. ``_type``).

The data in this package (``resource_types.json``) is derived from the
official ``hl7.fhir.r4.core`` 4.0.1 package by ``scripts/derive_r4.py``.
Never edit the JSON by hand; re-run the script instead.
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["RESOURCE_TYPES", "is_resource_type", "load_definition"]


def load_definition(name: str):
    """Parses one derived JSON file of this package, e.g. ``patient_compartment.json``."""
    return json.loads(resources.files(__name__).joinpath(name).read_text("utf-8"))


RESOURCE_TYPES: frozenset[str] = frozenset(
    load_definition("resource_types.json")["resourceTypes"]
)


def is_resource_type(name: str) -> bool:
    """True if ``name`` is a concrete FHIR R4 resource type (e.g. ``Patient``)."""
    return name in RESOURCE_TYPES
