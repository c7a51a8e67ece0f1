"""Token search: `code`, `system|code`, `|code` and `system|`, plus `:text`.

A token element is read by its shape: a CodeableConcept (its codings), a
Coding (`system`, `code`), an Identifier or ContactPoint (`system`, `value`),
a code or string (no system), or a boolean (`true`/`false`). Codes compare
case-sensitively. A plain code carries no system, so it matches `code` and
`|code` but never `system|code`. `:text` matches CodeableConcept.text and
Coding.display (and a plain string) like a string search: starts with,
ignoring case and accents.
"""

from __future__ import annotations

from typing import Optional

from transforms.fhir.search.common import InvalidSearchValue, MalformedData, split_escaped, unescape
from transforms.fhir.search.text import normalize


def split_token(value: str) -> tuple[bool, Optional[str], Optional[str]]:
    """-> (any system?, system, code) of `a|b`, `|b` (no system), `a|` (any code), `b`.

    `value` still has its escapes: `a\\|b` is the code `a|b`.
    """
    parts = [unescape(part) for part in split_escaped(value, "|", 1)]
    if len(parts) == 1:
        if not parts[0]:
            raise InvalidSearchValue("a token value cannot be empty")
        return True, None, parts[0]
    system, code = parts
    if not system and not code:
        raise InvalidSearchValue("a token value cannot be just '|'")
    return False, system or None, code or None


def codes(element: object) -> list[tuple[Optional[str], object]]:
    """The (system, code) pairs of one token element."""
    kind = type(element)
    if kind is dict:
        if "coding" in element:
            codings = element["coding"]
            if type(codings) is not list:
                raise MalformedData("CodeableConcept.coding is not a list")
            return [c for coding in codings for c in codes(coding)]
        if "code" in element:
            return [(element.get("system"), element["code"])]
        if "value" in element:
            return [(element.get("system"), element["value"])]
        return []
    if kind is str:
        return [(None, element)]
    if kind is bool:
        return [(None, "true" if element else "false")]
    raise MalformedData(f"a token value is {kind.__name__}, not a code or an object")


class TokenMatch:
    """One token search value; for `:text` the value is text, not a code."""

    __slots__ = ("any_system", "system", "code", "text")

    def __init__(self, value: str, text: bool = False):
        if text:
            if not value:
                raise InvalidSearchValue("a :text value cannot be empty")
            self.any_system, self.system, self.code = True, None, None
            self.text = normalize(unescape(value))
        else:
            self.any_system, self.system, self.code = split_token(value)
            self.text = None

    def __call__(self, element: object) -> bool:
        if self.text is not None:
            return any(normalize(t).startswith(self.text) for t in _texts(element))
        system, code = self.system, self.code
        for found_system, found_code in codes(element):
            if code is not None and found_code != code:
                continue
            if self.any_system or found_system == system:
                return True
        return False


def _texts(element: object) -> list[str]:
    if type(element) is str:
        return [element]
    if type(element) is not dict:
        return []
    texts = [element.get("text"), element.get("display")]
    codings = element.get("coding")
    if type(codings) is list:
        texts += [c.get("display") for c in codings if type(c) is dict]
    return [t for t in texts if type(t) is str]
