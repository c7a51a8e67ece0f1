"""FHIR `instant` values: strict parsing and exact, offset-aware ordering.

An instant is reduced to a sort key ``(epoch_seconds, fraction_digits)`` where
the fraction keeps every digit the text carried (trailing zeros stripped), so
``2020-01-01T00:00:00.1+01:00`` and ``2019-12-31T23:00:00.100Z`` compare equal
and no precision is lost to float or microsecond rounding.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import re
from typing import NamedTuple

# The regex of the FHIR R4 `instant` primitive, anchored.
_INSTANT = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9]|60)(?:\.([0-9]+))?"
    r"(Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))\Z"
)


class InstantKey(NamedTuple):
    """Total order over instants: seconds since the epoch, then fraction digits."""

    seconds: int
    fraction: str


class InvalidInstant(ValueError):
    """Raised for text that is not a FHIR instant."""


def instant_key(text: object) -> InstantKey:
    """Returns the sort key of a FHIR instant, or raises `InvalidInstant`."""
    match = _INSTANT.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidInstant(
            f"{text!r} is not a FHIR instant (YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm))"
        )
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    year, month, day = int(year), int(month), int(day)
    if year == 0 or day > calendar.monthrange(year, month)[1]:
        raise InvalidInstant(f"{text!r} is not a calendar date")
    seconds = calendar.timegm(
        (year, month, day, int(hour), int(minute), int(second), 0, 0, 0)
    )
    if zone != "Z":
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        seconds -= offset if zone[0] == "+" else -offset
    return InstantKey(seconds, (fraction or "").rstrip("0"))


def is_instant(text: object) -> bool:
    """True when `text` is a valid FHIR instant."""
    try:
        instant_key(text)
    except InvalidInstant:
        return False
    return True


def now_instant() -> str:
    """The current time as a FHIR instant in UTC with millisecond precision."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
