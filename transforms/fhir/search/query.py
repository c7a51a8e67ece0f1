"""Parsing one `_typeFilter` value, `Type?name[:modifier]=value&...`, into parameters.

The query is a FHIR REST query (IG v3): it is split at `&` and `=`, each name and value is
percent-decoded once, and only then is a value split at its unescaped commas, so `%2C` separates
values as `,` does, and `\\,` (or `%5C%2C`) is a literal comma. A query that cannot be read so
(no `Type?`, no value, a `%` that encodes no byte) is refused as unreadable.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional
from urllib.parse import unquote

from transforms.fhir.search.common import TypeFilterRefused, split_escaped

_SHAPE = "expected Type?query, e.g. Observation?code=1234-5"


class QueryParameter(NamedTuple):
    """One `name[:modifier]=v1,v2` of a filter; the values are ORed and keep their `\\` escapes."""

    name: str
    modifier: Optional[str]
    values: tuple[str, ...]


class ParsedFilter(NamedTuple):
    """One `_typeFilter` value: its text, its type and its ANDed parameters."""

    text: str
    type: str
    parameters: tuple[QueryParameter, ...]

    def refuse(self, reason: str, parameter: Optional[str] = None, *, notice: Optional[str] = None,
               unreadable: bool = False, known_type: bool = True) -> TypeFilterRefused:
        """The refusal for this filter (and parameter), naming both.

        `notice` is `reason` without the filter's values, for a reason that quotes one;
        `known_type=False` when the type is not one the notice may name."""
        where = f" parameter {parameter!r}:" if parameter else ""
        return TypeFilterRefused(
            f"_typeFilter {self.text!r}:{where} {reason}", resource_type=self.type if known_type else None,
            parameter=parameter, notice=reason if notice is None else notice, unreadable=unreadable)


def parse_type_filter(text: str) -> ParsedFilter:
    """Splits `Type?query` on `?`, `&`, `=` and `:`, percent-decodes, then splits values on unescaped commas.

    A value keeps its backslash escapes: what they escape depends on the parameter's type.
    """
    return parse_query(*split_type_filter(text))


def split_type_filter(text: str) -> tuple[str, str]:
    """`Type?query` as its type and its query, refused unless it has both a type and a `?`."""
    resource_type, question, query = text.partition("?")
    if not question:
        raise ParsedFilter(text, resource_type, ()).refuse(_SHAPE, unreadable=True, known_type=False)
    return resource_type, query


def parse_query(resource_type: str, query: str) -> ParsedFilter:
    """One filter given as its type and its query: its ANDed parameters."""
    shell = ParsedFilter(f"{resource_type}?{query}", resource_type, ())  # the text refusals name
    if not resource_type:
        raise shell.refuse(_SHAPE, unreadable=True, known_type=False)
    parameters = []
    for part in query.split("&"):
        if not part:
            continue
        name, equals, value = part.partition("=")
        name, _, modifier = _decode(shell, name, None).partition(":")
        if not equals or not value:
            raise shell.refuse("has no value", name or part, unreadable=True)
        values = tuple(split_escaped(_decode(shell, value, name), ","))
        parameters.append(QueryParameter(name, modifier or None, values))
    if not parameters:
        raise shell.refuse("the query is empty", unreadable=True)
    return shell._replace(parameters=tuple(parameters))


_NOT_AN_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _decode(shell: ParsedFilter, text: str, parameter: Optional[str]) -> str:
    """`text` percent-decoded once; refused as unreadable when a `%` encodes no byte or the bytes
    are not UTF-8 (decoding them otherwise would give a value that silently matches nothing)."""
    if _NOT_AN_ESCAPE.search(text):
        raise shell.refuse("has a '%' that is not a percent-encoded byte (write %25 for '%')", parameter,
                           unreadable=True)
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise shell.refuse("is not UTF-8 once percent-decoded", parameter, unreadable=True) from None
