"""FHIR references as data carries them: `Type/id`, history, absolute URLs, `urn:uuid:`.

One parser serves every reader of references: the Patient compartment, the
referenced-types option and `_typeFilter`'s reference parameters.
"""

from __future__ import annotations

from typing import NamedTuple, Optional


class Target(NamedTuple):
    """What a reference names: its base URL (None when relative), resource type and id."""

    base: Optional[str]
    type: Optional[str]
    id: Optional[str]


_NOWHERE = Target(None, None, None)


def split_reference(text: str, element_type: Optional[str] = None) -> Target:
    """`http://x/fhir/Patient/1/_history/2` -> (`http://x/fhir`, `Patient`, `1`)."""
    for scheme in ("urn:uuid:", "urn:oid:"):
        if text.startswith(scheme):
            return Target(None, element_type, text[len(scheme) :])
    if text.startswith("#"):
        return _NOWHERE  # a contained resource: no id a search could name
    history = text.find("/_history/")
    if history >= 0:
        text = text[:history]
    parts = text.rsplit("/", 2)
    if len(parts) == 1:
        return Target(None, element_type, text)
    base = parts[0] if len(parts) == 3 else None
    return Target(base, parts[-2], parts[-1])
