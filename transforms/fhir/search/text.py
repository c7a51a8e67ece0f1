"""String and uri search.

A string search matches, by default, values that start with it, ignoring case
and accents (NFKD, combining marks dropped, casefolded); `:exact` compares the
text as is and `:contains` looks anywhere. A HumanName is searched in its
family, given, prefix, suffix and text; an Address in its line, city, district,
state, postalCode, country and text. A uri search is exact, `:below` matches
values under it and `:above` values it is under.
"""

from __future__ import annotations

import unicodedata

from transforms.fhir.search.common import InvalidSearchValue, MalformedData

_NAME_AND_ADDRESS_PARTS = (
    "text", "family", "given", "prefix", "suffix",
    "line", "city", "district", "state", "postalCode", "country",
)


def normalize(text: str) -> str:
    """Case- and accent-insensitive form: NFKD without combining marks, casefolded."""
    if text.isascii():
        return text.casefold()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def string_parts(element: object) -> list[str]:
    """The strings a string search looks at in one element."""
    if type(element) is str:
        return [element]
    if type(element) is dict:
        parts = []
        for key in _NAME_AND_ADDRESS_PARTS:
            value = element.get(key)
            if type(value) is str:
                parts.append(value)
            elif type(value) is list:
                parts.extend(v for v in value if type(v) is str)
        return parts
    raise MalformedData(f"a string value is {type(element).__name__}, not text")


class StringMatch:
    """One string search value with its modifier (`None`, `exact` or `contains`)."""

    __slots__ = ("modifier", "value")

    def __init__(self, value: str, modifier: str | None):
        if not value:
            raise InvalidSearchValue("a string value cannot be empty")
        self.modifier = modifier
        self.value = value if modifier == "exact" else normalize(value)

    def __call__(self, element: object) -> bool:
        parts = string_parts(element)
        if self.modifier == "exact":
            return self.value in parts
        if self.modifier == "contains":
            return any(self.value in normalize(p) for p in parts)
        return any(normalize(p).startswith(self.value) for p in parts)


class UriMatch:
    """One uri search value: exact, `below` (a prefix of the data) or `above`."""

    __slots__ = ("modifier", "value")

    def __init__(self, value: str, modifier: str | None):
        if not value:
            raise InvalidSearchValue("a uri value cannot be empty")
        self.modifier, self.value = modifier, value

    def __call__(self, element: object) -> bool:
        if type(element) is not str:
            raise MalformedData(f"a uri value is {type(element).__name__}, not a string")
        if self.modifier == "below":
            return _under(element, self.value)
        if self.modifier == "above":
            return _under(self.value, element)
        return element == self.value


def _under(uri: str, base: str) -> bool:
    """True when `uri` is `base` or lies under it, path segment-wise."""
    base = base.rstrip("/")
    return uri == base or uri.startswith(base + "/") or uri.startswith(base + "|")
