"""FHIR references as data carries them: `Type/id`, history, absolute URLs, `urn:uuid:`.

One parser serves every reader of references: the Patient compartment, the
referenced-types option, `_typeFilter`'s reference parameters and organizeOutputBy's blocks.
"""

from __future__ import annotations

import re
from typing import Callable, NamedTuple, Optional

# A FHIR `id` (R4 `id` datatype): what a reference's last segment must be to name a resource.
ID_PATTERN = r"[A-Za-z0-9\-.]{1,64}"
FHIR_ID = re.compile(ID_PATTERN + r"\Z")


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


def references(node: object, types: frozenset[str], found: set[str],
               untyped: Optional[Callable[[str], Optional[str]]] = None) -> None:
    """Adds to `found` the `Type/id` of every reference in `node` to one of `types`.

    `Type/id`, `Type/id/_history/n` and absolute URLs ending so are recognised.
    A `urn:uuid:X` or `urn:oid:X` reference names no type: it counts as `T/X`
    when `untyped(X)` (the type of an id known to be one, e.g. the source's) is T.
    """
    if type(node) is dict:
        for key, value in node.items():
            if key == "reference" and type(value) is str:
                target = split_reference(value)
                resource_type = target.type
                if resource_type is None and untyped is not None and value.startswith("urn:"):
                    resource_type = untyped(target.id)
                if resource_type in types and target.id:
                    found.add(f"{resource_type}/{target.id}")
            elif type(value) in (dict, list):
                references(value, types, found, untyped)
    elif type(node) is list:
        for item in node:
            references(item, types, found, untyped)
