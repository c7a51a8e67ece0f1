"""FHIRPath expressions of search parameters, compiled to dict-walking extractors.

R4 expressions are mostly plain paths, `|` unions, casts (`(X as T)`,
`.as(T)`, `.ofType(T)`), `.where(resolve() is T)`, `.where(field='literal')`
and `.extension('url')`. Those are compiled to small picklable steps that walk
the parsed JSON, flattening lists; a choice element (`Observation.effective`)
reads each of its typed keys (`effectiveDateTime`, `effectivePeriod`, ...).
`.extension('url')` yields the matching extensions' `value[x]`, as servers
index them. Anything else goes to `fhirpathpy`, compiled once per expression.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from transforms.fhir.search.reference_match import reference_type
from transforms.fhir.search.registry import choice_types

Extractor = Callable[[dict], list]


class UnsupportedExpression(ValueError):
    """A FHIRPath expression no extractor here can evaluate faithfully."""


class _Field:
    __slots__ = ("keys",)

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys

    def __call__(self, values: list) -> list:
        out = []
        for value in values:
            if type(value) is not dict:
                continue
            for key in self.keys:
                found = value.get(key)
                if found is None:
                    continue
                if type(found) is list:
                    out.extend(found)
                else:
                    out.append(found)
        return out


class _WhereEquals:
    __slots__ = ("field", "literal")

    def __init__(self, field: str, literal: str):
        self.field, self.literal = field, literal

    def __call__(self, values: list) -> list:
        return [v for v in values if type(v) is dict and v.get(self.field) == self.literal]


class _ResolveIs:
    """`.where(resolve() is T)`: references to a T, or of a type the data does not say."""

    __slots__ = ("type",)

    def __init__(self, resource_type: str):
        self.type = resource_type

    def __call__(self, values: list) -> list:
        return [v for v in values if reference_type(v) in (self.type, None)]


class _ExtensionValue:
    __slots__ = ()

    def __call__(self, values: list) -> list:
        return [
            found
            for v in values
            if type(v) is dict
            for key, found in v.items()
            if key.startswith("value") and key[5:6].isupper()
        ]


class _Path:
    __slots__ = ("steps",)

    def __init__(self, steps: tuple):
        self.steps = steps

    def __call__(self, body: dict) -> list:
        values = [body]
        for step in self.steps:
            values = step(values)
            if not values:
                break
        return values


class _Union:
    __slots__ = ("parts",)

    def __init__(self, parts: tuple):
        self.parts = parts

    def __call__(self, body: dict) -> list:
        out = []
        for part in self.parts:
            out.extend(part(body))
        return out


class _FhirPath:
    """Any other expression, through `fhirpathpy`, compiled on first use (it cannot be pickled)."""

    def __init__(self, expression: str):
        self.expression = expression
        self._fn = None

    def __getstate__(self):
        return self.expression

    def __setstate__(self, expression):
        self.expression, self._fn = expression, None

    def __call__(self, body: dict) -> list:
        if self._fn is None:
            import fhirpathpy
            from fhirpathpy.models import models

            self._fn = fhirpathpy.compile(self.expression, models["r4"])
        return self._fn(body)


_CAST = re.compile(r"\((.+) as (\w+)\)(.*)\Z")
_SEGMENT = re.compile(r"(\w+)(?:\((.*)\))?\Z")
_WHERE_RESOLVE = re.compile(r"resolve\(\) is (\w+)\Z")
_WHERE_EQUALS = re.compile(r"(\w+)\s*=\s*'([^'\\]*)'\Z")
_QUOTED = re.compile(r"'([^'\\]*)'\Z")


def compile_expression(
    expression: str, resource_type: str, skip: tuple[str, ...] = ()
) -> Extractor:
    """An extractor for a search parameter's expression as it applies to `resource_type`.

    `skip` names choice types the parameter's type cannot search, e.g. `String`
    for a date: `Immunization.occurrenceString` is text, not a bad date.
    """
    branches = [b.strip() for b in expression.split(" | ")]
    parts = tuple(_compile_branch(b, resource_type, skip) for b in branches)
    return parts[0] if len(parts) == 1 else _Union(parts)


def _compile_branch(branch: str, resource_type: str, skip: tuple[str, ...]) -> Extractor:
    steps = _fast_steps(branch, resource_type, skip)
    if steps is not None:
        return _Path(steps)
    # fhirpathpy 2.2.4 has no resolve() and misreads Resource.meta: never send those.
    if "resolve()" in branch or branch.startswith(("Resource.", "DomainResource.")):
        raise UnsupportedExpression(f"cannot evaluate {branch!r}")
    return _FhirPath(branch)


def _fast_steps(branch: str, resource_type: str, skip: tuple[str, ...]) -> Optional[tuple]:
    cast = _CAST.match(branch)
    if cast:
        branch = f"{cast.group(1)}.as({cast.group(2)}){cast.group(3)}"
    segments = _split_segments(branch)
    if segments[0] not in (resource_type, "Resource", "DomainResource"):
        return None
    steps: list = []
    path = resource_type
    pending: Optional[str] = None  # a choice element's name, until a cast picks a type
    for segment in segments[1:]:
        match = _SEGMENT.match(segment)
        if match is None:
            return None
        name, argument = match.groups()
        if pending is not None and name in ("as", "ofType") and argument:
            steps.append(_Field((pending + argument[0].upper() + argument[1:],)))
            pending = None
            continue
        if pending is not None:
            steps.append(_choice(pending, path, skip))
            pending = None
        if argument is None:
            path = f"{path}.{name}"
            if choice_types(path):
                pending = name
            else:
                steps.append(_Field((name,)))
        elif name == "where" and _WHERE_RESOLVE.match(argument):
            steps.append(_ResolveIs(_WHERE_RESOLVE.match(argument).group(1)))
        elif name == "where" and _WHERE_EQUALS.match(argument):
            steps.append(_WhereEquals(*_WHERE_EQUALS.match(argument).groups()))
        elif name == "extension" and _QUOTED.match(argument):
            url = _QUOTED.match(argument).group(1)
            steps += [_Field(("extension",)), _WhereEquals("url", url), _ExtensionValue()]
        else:
            return None
    if pending is not None:
        steps.append(_choice(pending, path, skip))
    return tuple(steps)


def _choice(name: str, path: str, skip: tuple[str, ...]) -> _Field:
    return _Field(tuple(name + t for t in choice_types(path) if t not in skip))


def _split_segments(branch: str) -> list[str]:
    """Splits at the dots outside parentheses and quotes."""
    segments, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(branch):
        if char == "'":
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == ".":
            segments.append(branch[start:i])
            start = i + 1
    segments.append(branch[start:])
    return segments
