"""Parsing one `_typeFilter` value, `Type?name[:modifier]=value&...`, into parameters."""

from __future__ import annotations

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

    def refuse(self, reason: str, parameter: Optional[str] = None) -> TypeFilterRefused:
        """The refusal for this filter (and parameter), naming both."""
        where = f" parameter {parameter!r}:" if parameter else ""
        return TypeFilterRefused(f"_typeFilter {self.text!r}:{where} {reason}")


def parse_type_filter(text: str) -> ParsedFilter:
    """Splits `Type?query` on `?`, `&`, `=`, `:` and unescaped commas, then unquotes.

    A value keeps its backslash escapes: what they escape depends on the parameter's type.
    """
    return parse_query(*split_type_filter(text))


def split_type_filter(text: str) -> tuple[str, str]:
    """`Type?query` as its type and its query, refused unless it has both a type and a `?`."""
    resource_type, question, query = text.partition("?")
    if not question:
        raise ParsedFilter(text, resource_type, ()).refuse(_SHAPE)
    return resource_type, query


def parse_query(resource_type: str, query: str) -> ParsedFilter:
    """One filter given as its type and its query: its ANDed parameters."""
    shell = ParsedFilter(f"{resource_type}?{query}", resource_type, ())  # the text refusals name
    if not resource_type:
        raise shell.refuse(_SHAPE)
    parameters = []
    for part in query.split("&"):
        if not part:
            continue
        name, equals, value = part.partition("=")
        name, _, modifier = unquote(name).partition(":")
        if not equals or not value:
            raise shell.refuse("has no value", name or part)
        values = tuple(unquote(v) for v in split_escaped(value, ","))
        parameters.append(QueryParameter(name, modifier or None, values))
    if not parameters:
        raise shell.refuse("the query is empty")
    return shell._replace(parameters=tuple(parameters))
