"""What every search module shares: the errors, the comparison prefixes and `\\` escapes."""

from __future__ import annotations

import re
from typing import Optional

from transforms.errors import Refused


class TypeFilterRefused(Refused):
    """A `_typeFilter` value this server cannot apply exactly; the message names it.

    `unreadable`: the value cannot be read as a query at all (no `Type?`, a bad percent-encoding),
    which even lenient handling refuses. `resource_type`, `parameter` and `notice` say what lenient
    handling dropped and why, naming no value of the filter (a value may hold patient data).
    """

    def __init__(self, message: str, *, resource_type: Optional[str] = None, parameter: Optional[str] = None,
                 notice: str = "", unreadable: bool = False):
        super().__init__(message)
        self.resource_type, self.parameter, self.notice, self.unreadable = (
            resource_type, parameter, notice, unreadable)


class InvalidSearchValue(ValueError):
    """A parameter value that is malformed for its type (turned into a refusal)."""


class MalformedData(ValueError):
    """A resource value the matcher cannot read (e.g. a date that is not a date)."""


_PREFIXED = re.compile(r"(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.*)\Z", re.S)


def split_escaped(text: str, separator: str, limit: int = -1) -> list[str]:
    r"""Splits `text` at the `separator`s no backslash escapes (at most `limit` times); keeps escapes.

    FHIR escapes `,`, `$`, `|` and the backslash itself with a backslash, so `a\\,b`
    is `a\\` then `b`, while `a\,b` is one value.
    """
    parts, start, i = [], 0, 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == separator and limit != 0:
            parts.append(text[start:i])
            start, limit = i + 1, limit - 1
        i += 1
    parts.append(text[start:])
    return parts


_ESCAPE = re.compile(r"\\(.?)", re.S)


def unescape(text: str) -> str:
    r"""`\,`, `\$`, `\|` and `\\` become the character; any other backslash is refused."""
    if "\\" not in text:
        return text

    def escaped(match: re.Match) -> str:
        if match.group(1) not in (",", "$", "|", "\\"):
            reason = "has a backslash that escapes nothing (write \\\\ for one)"
            raise InvalidSearchValue(f"{text!r} {reason}")
        return match.group(1)

    return _ESCAPE.sub(escaped, text)


def split_prefix(value: str) -> tuple[str, str]:
    """`ge2020` -> (`ge`, `2020`); no prefix means `eq`."""
    prefix, rest = _PREFIXED.match(value).groups()
    if not rest:
        raise InvalidSearchValue(f"{value!r} has no value after its prefix")
    return prefix or "eq", rest
