"""The kick-off's narrowing parameters, `_typeFilter` and `_elements`, checked as the plan applies them.

Under strict handling whatever the engine cannot apply is refused. Under lenient handling it is
dropped so that the export is never narrowed by less than was asked (IG v3: the server "MAY process
the request instead of returning an error"), and named in `ignored`:
- a `_typeFilter` query the engine cannot run is dropped, and so is every other query of its type:
  the queries of one type are ORed, so keeping the others would export less than was asked;
- an `_elements` naming what cannot be selected is ignored whole: dropping only that entry would cut
  the resources it names to less than was asked.
A value that cannot be read at all (no `Type?`, a bad percent-encoding, an empty `_elements` entry)
is refused even then. The errors raised are `TypeFilterRefused` and `ElementsRefused`; the parser
names the parameter.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator, Sequence, Union

from pipelines.models import IgnoredParameter, TypeFilter
from transforms.fhir.elements import ElementsRefused, parse_elements
from transforms.fhir.search.common import TypeFilterRefused
from transforms.fhir.search.compiler import compile_filters
from transforms.fhir.search.query import split_type_filter

# IG v1/v2 comma-joined several `_typeFilter` queries in one value; each starts with `Type?`.
_NEXT_QUERY = re.compile(r",(?=[A-Z][A-Za-z]*\?)")
_UNSELECTABLE = "an entry names no element this engine can select, only root elements of the types exported; " \
                "every resource is exported whole"


def split_type_filters(values: list[str]) -> Iterator[TypeFilter]:
    """The `_typeFilter` queries of the values, each split into its type and query as it is reached."""
    for query in (query for value in values for query in _NEXT_QUERY.split(value)):
        resource_type, rest = split_type_filter(query)
        yield TypeFilter(resource_type=resource_type, query=rest)


def type_filters(filters: Iterable[TypeFilter], types: tuple[str, ...], strict: bool,
                 ignored: list[IgnoredParameter]) -> tuple[TypeFilter, ...]:
    """Every `_typeFilter` the export applies, each compiled here as the plan compiles it, so that a
    filter is never stored unapplied; under lenient handling what is dropped is named in `ignored`."""
    checked: list[TypeFilter] = []
    unfiltered: set[str] = set()
    for type_filter in filters:
        try:
            compile_filters((type_filter,), types)
        except TypeFilterRefused as exc:
            if strict or exc.unreadable:
                raise
            ignored.append(IgnoredParameter(parameter="_typeFilter", reason=_dropped(exc)))
            unfiltered.add(exc.resource_type or "")
            continue
        checked.append(type_filter)
    for type_filter in checked:
        name = type_filter.resource_type
        if name in unfiltered:
            reason = f"a query on {name} was not applied: another query on {name} cannot be, and the queries " \
                     f"of one type are ORed; no _typeFilter applies to {name}"
            ignored.append(IgnoredParameter(parameter="_typeFilter", reason=reason))
    return tuple(f for f in checked if f.resource_type not in unfiltered)


def _dropped(refused: TypeFilterRefused) -> str:
    """Why a query was dropped, naming its type and search parameter but none of its values."""
    if refused.resource_type is None:
        return f"a query cannot be run: {refused.notice}"
    where = f"search parameter {refused.parameter!r}: " if refused.parameter else ""
    name = refused.resource_type
    return f"a query on {name} cannot be run: {where}{refused.notice}; no _typeFilter applies to {name}"


def elements(value: Union[str, Sequence[str], None], types: tuple[str, ...], strict: bool,
             ignored: list[IgnoredParameter]) -> tuple[str, ...]:
    """`_elements` (one comma-separated string, or its entries) parsed as the plan parses it, held to
    `_type`; under lenient handling, ignored whole (and named) when an entry cannot be selected."""
    if value is None:
        return ()
    try:
        return _checked_elements(value, types)
    except ElementsRefused as exc:
        if strict or exc.malformed:
            raise
    ignored.append(IgnoredParameter(parameter="_elements", reason=_UNSELECTABLE))
    return ()


def _checked_elements(value: Union[str, Sequence[str]], types: tuple[str, ...]) -> tuple[str, ...]:
    spec = parse_elements(value, types)
    if types:
        # `Device.status` with `_type=Patient` would apply to nothing, while every Patient
        # would be cut to its mandatory elements: a client's mistake, refused.
        for entry in spec.entries:
            head, dot, _ = entry.partition(".")
            if dot and head not in types:
                listed = ",".join(types)
                raise ElementsRefused(f"{entry!r} names {head}, which _type ({listed}) does not list")
    return tuple(spec.entries)
