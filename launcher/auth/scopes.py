"""SMART system scopes for Bulk Data: what a client may ask for, what it may ever have, what it was granted.

Only read access to resources is ever granted, at system level: SMART v1
`system/<Type>.read` and v2 `system/<Type>.rs`, where `<Type>` is an R4
resource type or `*`. A v1 wildcard action (`system/*.*`) is granted as
`.read`. Everything else is `invalid_scope`: an empty scope, `launch`,
`openid`, `patient/` and `user/` scopes, unknown types or actions, any
write (`.write`, or a v2 `c`, `u` or `d`), a v2 `.r` or `.s` alone (an
export both reads and searches), and v2 search-parameter narrowing (`?...`).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Optional

from transforms.errors import Refused
from transforms.fhir.r4 import RESOURCE_TYPES

ANY_TYPE = "*"
V1_READ, V2_READ = "read", "rs"
_V2_PERMISSIONS = re.compile(r"c?r?u?d?s?")
_SHOWN = 80  # how much of a refused scope an error repeats


class ScopeRefused(Refused):
    """A scope that is malformed, not a system read scope, or not registered (`invalid_scope`)."""


@dataclasses.dataclass(frozen=True, order=True)
class Scope:
    """One system read scope: a resource type (or `*`) and the action as the client spelled it."""

    type: str
    action: str  # "read" (v1) or "rs" (v2)

    def __str__(self) -> str:
        return f"system/{self.type}.{self.action}"

    def covers(self, resource_type: str) -> bool:
        return self.type in (ANY_TYPE, resource_type)


def parse_scope(text: str) -> Scope:
    """One scope token; raises `ScopeRefused` naming what is wrong with it."""
    shown = text[:_SHOWN]
    context, _, rest = text.partition("/")
    if context != "system" or not rest:
        raise ScopeRefused(f"{shown}: only system/ scopes are granted (Backend Services)")
    if "?" in rest:
        raise ScopeRefused(f"{shown}: scopes narrowed by search parameters are not supported")
    resource_type, dot, action = rest.partition(".")
    if not dot:
        raise ScopeRefused(f"{shown}: a scope is system/<Type>.<action>")
    if resource_type != ANY_TYPE and resource_type not in RESOURCE_TYPES:
        raise ScopeRefused(f"{shown}: {resource_type[:40]!r} is not an R4 resource type")
    if action in (V1_READ, "*"):  # the v1 wildcard, granted read-only
        return Scope(resource_type, V1_READ)
    if action == "write":
        raise ScopeRefused(f"{shown}: only read access is granted")
    if not action or not _V2_PERMISSIONS.fullmatch(action):
        raise ScopeRefused(f"{shown}: {action[:20]!r} is not a SMART action (v1 read, v2 rs)")
    if set(action) & set("cud"):
        raise ScopeRefused(f"{shown}: only read access is granted (no c, u or d)")
    if action != V2_READ:
        raise ScopeRefused(f"{shown}: an export reads and searches: ask for .rs")
    return Scope(resource_type, V2_READ)


def parse_scopes(text: str) -> tuple[Scope, ...]:
    """A space-separated scope string, in order, without repeats; raises `ScopeRefused` if empty."""
    scopes = tuple(dict.fromkeys(parse_scope(token) for token in text.split()))
    if not scopes:
        raise ScopeRefused("the scope is empty: ask for e.g. system/*.read")
    return scopes


@dataclasses.dataclass(frozen=True)
class Grant:
    """The scopes an access token carries, and the resource types they cover."""

    scopes: tuple[Scope, ...]

    def __str__(self) -> str:
        return " ".join(str(scope) for scope in self.scopes)

    @property
    def all_types(self) -> bool:
        return any(scope.type == ANY_TYPE for scope in self.scopes)

    def covers(self, resource_type: str) -> bool:
        return any(scope.covers(resource_type) for scope in self.scopes)

    def covered(self, types: Iterable[str]) -> tuple[str, ...]:
        """Those of `types` this grant covers, in order."""
        return tuple(t for t in types if self.covers(t))

    @classmethod
    def parse(cls, text: str) -> "Grant":
        return cls(parse_scopes(text))


EVERYTHING = Grant((Scope(ANY_TYPE, V1_READ),))  # an unauthenticated server's caller


def grant(requested: str, registered: Iterable[Scope]) -> Grant:
    """What a client asking for `requested` gets, capped by its `registered` scopes.

    A scope inside a registered one is granted as asked; a wildcard asked by a
    client registered for some types is narrowed to those types; a scope for a
    type the client is not registered for is left out (RFC 6749 3.3: the
    response's `scope` names what was granted). Nothing left is `invalid_scope`.
    """
    registered = tuple(registered)
    granted: list[Scope] = []
    for scope in parse_scopes(requested):
        if any(mine.type in (ANY_TYPE, scope.type) for mine in registered):
            granted.append(scope)
        elif scope.type == ANY_TYPE:
            granted.extend(Scope(mine.type, scope.action) for mine in registered)
    if not granted:
        raise ScopeRefused("none of the scopes asked for is registered for this client")
    return Grant(tuple(dict.fromkeys(granted)))


def uncovered(grant_: Grant, types: Iterable[str]) -> Optional[tuple[str, ...]]:
    """The types of `types` that `grant_` does not cover, or None when it covers them all."""
    missing = tuple(t for t in dict.fromkeys(types) if not grant_.covers(t))
    return missing or None
