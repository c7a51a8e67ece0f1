"""Reference search: `Type/id`, a bare `id`, an absolute URL, the `:Type` modifier.

Both sides are reduced to `(base, type, id)`. They match when the ids are equal,
the types are equal or one is unknown, and the bases are equal or one is
relative. `urn:uuid:X` (and `urn:oid:X`) in data is id `X`, of the reference's
`type` element when present and else of any type; real exports and Bundles
refer to entries that way. An absolute URL that is not `.../Type/id` (a
canonical such as `http://loinc.org/vs/LL1`) matches only as text. A canonical
in the data matches the same URL, and a search without `|version` matches any
version of it. A resource inline in the data (`Bundle.entry[0].resource`)
matches its own type and id.
"""

from __future__ import annotations

from typing import Optional

from transforms.fhir.r4 import is_resource_type
from transforms.fhir.references import Target, split_reference
from transforms.fhir.search.common import InvalidSearchValue, MalformedData


def reference_type(element: object) -> Optional[str]:
    """The resource type a Reference element points at, or None when unknown."""
    if type(element) is not dict:
        return None
    text = element.get("reference")
    if type(text) is not str:
        return element.get("type")
    return split_reference(text, element.get("type")).type


class ReferenceMatch:
    """Matches one reference search value against Reference (or canonical) elements."""

    __slots__ = ("raw", "target")

    def __init__(self, raw: str, modifier_type: Optional[str], targets: tuple[str, ...]):
        if not raw:
            raise InvalidSearchValue("a reference value cannot be empty")
        target: Optional[Target] = split_reference(raw, modifier_type)
        if not target.id:
            raise InvalidSearchValue(f"{raw!r} names no resource id")
        if modifier_type and target.type != modifier_type:
            raise InvalidSearchValue(f"{raw!r} does not name a {modifier_type}")
        if target.type is not None and not is_resource_type(target.type):
            if target.base is None:
                raise InvalidSearchValue(f"{target.type!r} in {raw!r} is not an R4 resource type")
            target = None  # an absolute URL of another shape: compared as text only
        if target is not None and target.type is not None:
            if "Resource" not in targets and target.type not in targets:
                listed = ", ".join(targets)
                raise InvalidSearchValue(f"{target.type} is not a target (targets: {listed})")
        self.raw = raw
        self.target = target

    def __call__(self, element: object) -> bool:
        if type(element) is str:  # a canonical, `url` or `url|version`
            raw = self.raw
            return element == raw or ("|" not in raw and element.partition("|")[0] == raw)
        if type(element) is not dict:
            raise MalformedData(f"a reference is {type(element).__name__}, not an object")
        want = self.target
        if "resourceType" in element:  # a resource itself, not a reference to one
            found = Target(None, element["resourceType"], element.get("id"))
            return want is not None and found.id == want.id and want.type in (None, found.type)
        text = element.get("reference")
        if text is None:
            return False
        if type(text) is not str:
            raise MalformedData("Reference.reference is not a string")
        if text == self.raw:
            return True
        if want is None:
            return False
        found = split_reference(text, element.get("type"))
        return (
            found.id == want.id
            and (want.type is None or found.type is None or found.type == want.type)
            and (want.base is None or found.base is None or found.base == want.base)
        )
