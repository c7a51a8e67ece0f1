"""Compiling `_typeFilter` values into `TypeFilters`, and applying them.

Filters for one type are ORed, the parameters of one filter ANDed, and the
comma-separated values of one parameter ORed. Everything is compiled once; a
resource is then only walked as a dict. Whatever cannot be applied exactly
(result parameters, chaining, `_has`, composites, unknown modifiers, bad
values) is refused with `TypeFilterRefused`, because ignoring it would export
more than was asked for.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Iterable, Optional, Sequence

from transforms.fhir.r4 import is_resource_type
from transforms.fhir.search.common import InvalidSearchValue, MalformedData, unescape
from transforms.fhir.search.dates import DateMatch
from transforms.fhir.search.expressions import UnsupportedExpression, compile_expression
from transforms.fhir.search.numbers import NumberMatch, QuantityMatch
from transforms.fhir.search.query import ParsedFilter, QueryParameter, parse_query, parse_type_filter
from transforms.fhir.search.reference_match import ReferenceMatch
from transforms.fhir.search.registry import SearchParameter, search_parameters
from transforms.fhir.search.text import StringMatch, UriMatch
from transforms.fhir.search.tokens import TokenMatch

RESULT_PARAMETERS = frozenset(
    ("_include", "_revinclude", "_sort", "_count", "_elements", "_summary", "_total",
     "_contained", "_containedType", "_format", "_pretty", "_maxresults", "_graph")
)
NOT_SUPPORTED = frozenset(("_text", "_content", "_query", "_filter", "_list", "_type"))
MODIFIERS = {
    "token": {"not", "text"},
    "string": {"exact", "contains"},
    "uri": {"below", "above"},
    "date": set(),
    "number": set(),
    "quantity": set(),
    "reference": set(),  # plus `:Type`, checked against the parameter's targets
}

# Criterion modes
_ANY, _NONE, _MISSING, _PRESENT = range(4)


class _Criterion:
    """One parameter of one filter: an extractor and its ORed value matchers."""

    __slots__ = ("label", "extract", "matchers", "mode")

    def __init__(self, label: str, extract: Callable, matchers: tuple, mode: int):
        self.label, self.extract, self.matchers, self.mode = label, extract, matchers, mode

    def __call__(self, body: dict) -> bool:
        """Raises `MalformedData` only when no readable value decides the outcome."""
        values = self.extract(body)
        mode = self.mode
        if mode >= _MISSING:
            return not values if mode == _MISSING else bool(values)
        unreadable = None
        for value in values:
            for match in self.matchers:
                try:
                    if match(value):
                        return mode == _ANY
                except MalformedData as exc:
                    unreadable = unreadable or exc
        if unreadable is not None:
            raise MalformedData(f"{self.label}: {unreadable}")
        return mode == _NONE


class TypeFilters:
    """Compiled `_typeFilter`s by resource type; picklable, for a Beam DoFn."""

    def __init__(self, by_type: dict[str, tuple[tuple[_Criterion, ...], ...]]):
        self._by_type = by_type

    @property
    def types(self) -> frozenset[str]:
        """The resource types that have at least one filter."""
        return frozenset(self._by_type)

    def matches(self, resource_type: str, body: dict) -> bool:
        """True when a filter of the type admits `body` (always, for types without filters).

        Raises `MalformedData` when no filter admits `body` and one could not read
        a value it needed, whatever the order of the filters and their parameters.
        """
        filters = self._by_type.get(resource_type)
        if filters is None:
            return True
        unreadable = None
        for criteria in filters:
            pending = None
            for criterion in criteria:
                try:
                    if not criterion(body):
                        break
                except MalformedData as exc:
                    pending = pending or exc
            else:
                if pending is None:
                    return True
                unreadable = unreadable or pending
        if unreadable is not None:
            raise unreadable
        return False

    def __repr__(self) -> str:
        return f"TypeFilters({sorted(self._by_type)})"


def compile_type_filters(
    values: Iterable[str], types: Sequence[str] = (), now: Optional[str] = None
) -> TypeFilters:
    """Compiles raw `Type?query` values; raises `TypeFilterRefused` naming what it refuses.

    `types` is the kickoff's `_type` (a filter on another type is refused when
    it is not empty); `now` is the instant `ap` dates are relative to.
    """
    return compile_parsed((parse_type_filter(text) for text in values), types, now)


def compile_parsed(
    filters: Iterable[ParsedFilter], types: Sequence[str] = (), now: Optional[str] = None
) -> TypeFilters:
    """Compiles parsed filters, in order (see `compile_type_filters`)."""
    by_type: dict[str, list] = {}
    for parsed in filters:
        if not is_resource_type(parsed.type):
            raise parsed.refuse(f"{parsed.type!r} is not an R4 resource type",
                                notice="its type is not an R4 resource type", known_type=False)
        if types and parsed.type not in types:
            raise parsed.refuse(f"{parsed.type} is not in _type ({', '.join(types)})")
        known = search_parameters(parsed.type)
        criteria = tuple(_compile_parameter(parsed, p, known, now) for p in parsed.parameters)
        by_type.setdefault(parsed.type, []).append(criteria)
    return TypeFilters({t: tuple(f) for t, f in by_type.items()})


def _compile_parameter(
    parsed: ParsedFilter,
    param: QueryParameter,
    known: dict[str, SearchParameter],
    now: Optional[str],
) -> _Criterion:
    name, modifier = param.name, param.modifier
    try:
        definition, extract = _runnable(parsed.type, name, known)
    except _CannotRun as exc:
        raise parsed.refuse(str(exc), name) from None
    label = f"{parsed.type}?{name}"
    if modifier == "missing":
        if param.values not in (("true",), ("false",)):
            raise parsed.refuse(":missing takes true or false", name)
        return _Criterion(label, extract, (), _MISSING if param.values[0] == "true" else _PRESENT)
    _check_modifier(parsed, name, modifier, definition)
    try:
        matchers = tuple(_matcher(definition, modifier, v, now) for v in param.values)
    except InvalidSearchValue as exc:
        notice = f"a value is not valid for this {definition.type} parameter"
        raise parsed.refuse(str(exc), name, notice=notice) from None
    return _Criterion(label, extract, matchers, _NONE if modifier == "not" else _ANY)


class _CannotRun(Exception):
    """A search parameter `_typeFilter` cannot use; the message says why."""


def _runnable(resource_type: str, name: str, known: dict[str, SearchParameter]) -> tuple[SearchParameter, Callable]:
    """The definition of parameter `name` of `resource_type` and its compiled value extractor, or
    `_CannotRun`: the one rule of which parameters `_typeFilter` runs (`runnable_parameters` lists them)."""
    if name in RESULT_PARAMETERS:
        raise _CannotRun("result parameters cannot be used inside _typeFilter")
    if name == "_has" or name.startswith("_has:"):
        raise _CannotRun("_has (reverse chaining) is not supported")
    if "." in name:
        raise _CannotRun("chained parameters are not supported")
    if name in NOT_SUPPORTED:
        raise _CannotRun(f"{name} is not supported in _typeFilter")
    definition = known.get(name)
    if definition is None:
        raise _CannotRun(f"not a search parameter of {resource_type}")
    if definition.type in ("composite", "special"):
        raise _CannotRun(f"{definition.type} parameters are not supported")
    try:
        skip = ("String",) if definition.type == "date" else ()
        return definition, compile_expression(definition.expression, resource_type, skip)
    except UnsupportedExpression as exc:
        raise _CannotRun(str(exc)) from None


@lru_cache(maxsize=None)
def runnable_parameters(resource_type: str) -> tuple[tuple[str, str], ...]:
    """Every search parameter of `resource_type` a `_typeFilter` can use, as (name, type) by name, by the
    rule the compiler applies (the CapabilityStatement's `searchParam` lists them)."""
    known = search_parameters(resource_type)
    runnable = []
    for name in sorted(known):
        try:
            definition, _ = _runnable(resource_type, name, known)
        except _CannotRun:
            continue
        runnable.append((name, definition.type))
    return tuple(runnable)


def _check_modifier(parsed: ParsedFilter, name: str, modifier: Optional[str], definition) -> None:
    if modifier is None or modifier in MODIFIERS[definition.type]:
        return
    if definition.type == "reference" and is_resource_type(modifier):
        targets = definition.target or ()
        if "Resource" in targets or modifier in targets:
            return
        raise parsed.refuse(f":{modifier} is not a target of {name} ({', '.join(targets)})", name)
    reason = f"modifier :{modifier} is not supported on a {definition.type} parameter"
    raise parsed.refuse(reason, name)


def _matcher(definition: SearchParameter, modifier: Optional[str], value: str, now: Optional[str]):
    kind = definition.type
    if kind == "token":  # token and quantity values split at `|` before unescaping
        return TokenMatch(value, text=modifier == "text")
    if kind == "quantity":
        return QuantityMatch(value)
    value = unescape(value)
    if kind == "string":
        return StringMatch(value, modifier)
    if kind == "uri":
        return UriMatch(value, modifier)
    if kind == "date":
        return DateMatch(value, now)
    if kind == "number":
        return NumberMatch(value)
    return ReferenceMatch(value, modifier, definition.target or ())


def compile_filters(filters: Iterable, types: Sequence[str] = (), now: Optional[str] = None
                    ) -> TypeFilters:
    """`_typeFilter` values (each with `resource_type` and `query`, as `pipelines.models.TypeFilter`)
    compiled, in order, with `now` as the `ap` prefix's "now"; raises `TypeFilterRefused`.

    The one compiler entry: the kickoff parser validates filters with it, and the plan compiles them."""
    return compile_parsed((parse_query(f.resource_type, f.query) for f in filters), types, now)
