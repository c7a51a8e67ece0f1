"""`_elements`: subset resources to the root elements the client asked for.

An entry is `Type.element` (that type only) or a bare `element` (every type);
only root elements are allowed (Bulk Data IG v3). A subsetted resource keeps
the listed elements plus `resourceType`, `id`, `meta` and every element its R4
StructureDefinition makes mandatory (`min >= 1` or `isModifier`, e.g.
`Observation.status`, `implicitRules`, `modifierExtension`). A choice is named
without its type (`value` keeps `valueQuantity`, `valueString`, ...), and a
primitive's `_element` extension sibling goes with it.

A subsetted resource gets one `SUBSETTED` `meta.tag` and is re-serialised; a
resource that already has only allowed elements is left as it was read.

A type that no entry names keeps only its mandatory elements: IG v3 says "the
server SHOULD omit unlisted, non-mandatory elements from the resources
returned", and the SMART reference server reads it so too. Use `_type` to
leave such types out instead.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import orjson
from pydantic import BaseModel, ConfigDict

from transforms.errors import Refused
from transforms.fhir.r4 import load_definition

SUBSETTED_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
SUBSETTED_TAG = {"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}
ALWAYS_KEPT = frozenset({"resourceType", "id", "meta"})
_CHOICE = "[x]"


class ElementsRefused(Refused):
    """An `_elements` value the engine will not apply; `reason` names the bad entry.

    `malformed`: the value cannot be read as a list of elements at all (an empty entry), which even
    lenient handling refuses; otherwise it names an element this engine cannot select."""

    def __init__(self, reason: str, malformed: bool = False):
        super().__init__(f"_elements: {reason}")
        self.parameter = "_elements"
        self.reason = reason
        self.malformed = malformed


class InvalidMeta(ValueError):
    """A resource's `meta` or `meta.tag` has the wrong JSON type, so it cannot be tagged."""


class TypeElements(BaseModel):
    """One type's entry in `elements.json` (derived by `scripts/derive_r4.py`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    elements: tuple[str, ...]
    mandatory: tuple[str, ...]
    choices: dict[str, tuple[str, ...]]

    def json_keys(self) -> dict[str, frozenset[str]]:
        """Each element's names in `_elements` (`value` and `value[x]`), to the JSON keys it covers."""
        keys = {}
        for element in self.elements:
            if element in self.choices:
                stem = element.removesuffix(_CHOICE)
                props = [stem + code[0].upper() + code[1:] for code in self.choices[element]]
                keys[stem] = frozenset(props + ["_" + p for p in props])
            else:
                keys[element] = frozenset((element, "_" + element))
        for choice in self.choices:
            keys[choice] = keys[choice.removesuffix(_CHOICE)]
        return keys


@functools.cache
def _definitions() -> dict[str, TypeElements]:
    raw = load_definition("elements.json")["resourceTypes"]
    return {name: TypeElements.model_validate(entry) for name, entry in raw.items()}


@functools.cache
def _keys(resource_type: str) -> dict[str, frozenset[str]]:
    return _definitions()[resource_type].json_keys()


@functools.cache
def _mandatory_keys(resource_type: str) -> frozenset[str]:
    keys = _keys(resource_type)
    return ALWAYS_KEPT.union(*(keys[e] for e in _definitions()[resource_type].mandatory))


class ElementsSpec:
    """A parsed `_elements` value: which JSON keys each resource type keeps. Picklable."""

    def __init__(self, typed: Mapping[str, frozenset[str]], bare: frozenset[str], entries: tuple[str, ...]):
        self.typed = dict(typed)  # type -> element names given as `Type.element`
        self.bare = bare  # element names given without a type
        self.entries = entries  # the entries as given, stripped, in order
        self._allowed: dict[str, Optional[frozenset[str]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_allowed": {}}

    def __repr__(self) -> str:
        return f"ElementsSpec({','.join(self.entries)!r})"

    def allowed_keys(self, resource_type: str) -> Optional[frozenset[str]]:
        """The top-level keys a resource of this type keeps, or None when it is kept whole."""
        try:
            return self._allowed[resource_type]
        except KeyError:
            pass
        allowed = None
        # IG v3: the server omits *unlisted*, non-mandatory elements, so a type no entry
        # names keeps only its mandatory elements (as the SMART reference server does).
        if resource_type in _definitions():
            keys = _keys(resource_type)
            names = self.typed.get(resource_type, frozenset()) | self.bare
            allowed = _mandatory_keys(resource_type).union(*(keys[n] for n in names if n in keys))
        self._allowed[resource_type] = allowed
        return allowed

    def subset(self, resource_type: str, body: dict[str, Any]) -> Optional[tuple[bytes, dict[str, Any]]]:
        """The subsetted resource's bytes and body, or None when it is unchanged.

        Raises `InvalidMeta` when the resource must be tagged but its `meta` is not
        an object or its `meta.tag` not an array. `body` is never modified.
        """
        allowed = self.allowed_keys(resource_type)
        if allowed is None or body.keys() <= allowed:
            return None
        kept = _tagged({k: v for k, v in body.items() if k in allowed})
        return orjson.dumps(kept), kept


def _tagged(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with the SUBSETTED tag in `meta.tag` (added once), `meta` placed after `id` if new."""
    meta = body.get("meta")
    if meta is None:
        out = {}
        for key, value in body.items():
            if key != "meta":  # a JSON null
                out[key] = value
            if key == "id":
                out["meta"] = {"tag": [dict(SUBSETTED_TAG)]}
        out.setdefault("meta", {"tag": [dict(SUBSETTED_TAG)]})
        return out
    if type(meta) is not dict:
        raise InvalidMeta("meta is not a JSON object")
    tags = meta.get("tag", [])
    if type(tags) is not list:
        raise InvalidMeta("meta.tag is not a JSON array")
    if not any(_is_subsetted(tag) for tag in tags):
        body["meta"] = {**meta, "tag": [*tags, dict(SUBSETTED_TAG)]}
    return body


def _is_subsetted(tag: Any) -> bool:
    return type(tag) is dict and tag.get("system") == SUBSETTED_SYSTEM and tag.get("code") == "SUBSETTED"


def parse_elements(value: str | Iterable[str], types: Sequence[str] = ()) -> ElementsSpec:
    """Parses `_elements` (one comma-separated string, or several) against R4.

    `types` is the kickoff's `_type`: a bare element must exist on one of them
    (on any R4 type when `types` is empty). Raises `ElementsRefused` naming the
    first bad entry.
    """
    texts = [value] if isinstance(value, str) else list(value)
    definitions = _definitions()
    scope = [t for t in types if t in definitions] or list(definitions)
    typed: dict[str, set[str]] = {}
    bare: set[str] = set()
    entries: list[str] = []
    for text in texts:
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                raise ElementsRefused(f"empty entry in {text!r}", malformed=True)
            entries.append(entry)
            head, dot, rest = entry.partition(".")
            if not dot:
                if not any(entry in _keys(t) for t in scope):
                    where = "any of " + ",".join(types) if types else "any R4 resource type"
                    raise ElementsRefused(f"{entry!r} is not a root element of {where}")
                bare.add(entry)
                continue
            if not head or not rest:
                raise ElementsRefused(f"{entry!r} is not of the form Type.element or element", malformed=True)
            if "." in rest or not head[0].isupper():
                raise ElementsRefused(f"{entry!r} is a nested path; only root elements are allowed")
            if head not in definitions:
                raise ElementsRefused(f"{entry!r}: {head!r} is not an R4 resource type")
            if rest not in _keys(head):
                hint = _choice_hint(rest, _keys(head))
                raise ElementsRefused(f"{entry!r}: {head} has no root element {rest!r}{hint}")
            typed.setdefault(head, set()).add(rest)
    if not entries:
        raise ElementsRefused("no elements given", malformed=True)
    return ElementsSpec({t: frozenset(n) for t, n in typed.items()}, frozenset(bare), tuple(entries))


def _choice_hint(name: str, keys: Mapping[str, frozenset[str]]) -> str:
    """For `valueQuantity`, a hint to name the choice element `value` instead."""
    stems = [n for n, covered in keys.items() if n + _CHOICE in keys and name in covered]
    return f" (name the choice element {stems[0]!r})" if stems else ""
