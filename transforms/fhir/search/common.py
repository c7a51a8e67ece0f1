"""What every search module shares: the two errors and the comparison prefixes."""

from __future__ import annotations

import re


class TypeFilterRefused(ValueError):
    """A `_typeFilter` value this server cannot apply exactly; the message names it."""


class InvalidSearchValue(ValueError):
    """A parameter value that is malformed for its type (turned into a refusal)."""


class MalformedData(ValueError):
    """A resource value the matcher cannot read (e.g. a date that is not a date)."""


PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_PREFIXED = re.compile(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.*)\Z", re.S)


def split_prefix(value: str) -> tuple[str, str]:
    """`ge2020` -> (`ge`, `2020`); no prefix means `eq`."""
    prefix, rest = _PREFIXED.match(value).groups()
    if not rest:
        raise InvalidSearchValue(f"{value!r} has no value after its prefix")
    return prefix or "eq", rest
