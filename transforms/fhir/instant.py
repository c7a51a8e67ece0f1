"""FHIR `instant` values: strict parsing and exact, offset-aware ordering.

An instant is reduced to a sort key ``(epoch_seconds, fraction_digits)`` where
the fraction keeps every digit the text carried (trailing zeros stripped), so
``2020-01-01T00:00:00.1+01:00`` and ``2019-12-31T23:00:00.100Z`` compare equal
and no precision is lost to float or microsecond rounding.
"""

from __future__ import annotations

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
    """Raised for text that is not a FHIR instant.

    The message quotes the text (for a kick-off refusal, the client's own input);
    `rule` says what is wrong without it, for error files about source data.
    """

    def __init__(self, message: str, rule: str | None = None):
        super().__init__(message)
        self.rule = rule if rule is not None else message


def _kind(text: object) -> str:
    """What a non-string value is, by type only (`a number`, `an object`), never the value."""
    return {int: "a number", float: "a number", bool: "a boolean", dict: "an object", list: "a list",
            type(None): "null"}.get(type(text), "text")


def instant_key(text: object) -> InstantKey:
    """Returns the sort key of a FHIR instant, or raises `InvalidInstant`."""
    match = _INSTANT.match(text) if isinstance(text, str) else None
    if match is None:
        form = "not a FHIR instant (YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm))"
        rule = form if isinstance(text, str) else f"{_kind(text)}, {form}"
        raise InvalidInstant(f"{text!r} is {form}", rule)
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    year, month, day = int(year), int(month), int(day)
    if year == 0 or day > _days_in_month(year, month):
        raise InvalidInstant(f"{text!r} is not a calendar date", "not a calendar date")
    seconds = _days_from_civil(year, month, day) * 86400 + (
        int(hour) * 3600 + int(minute) * 60 + int(second)
    )
    if zone != "Z":
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        seconds -= offset if zone[0] == "+" else -offset
    return InstantKey(seconds, fraction.rstrip("0") if fraction else "")


_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_in_month(year: int, month: int) -> int:
    if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0):
        return 29
    return _MONTH_DAYS[month]


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


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


# The FHIR R4 `dateTime` primitive: a year, year-month, date, or a full time with a zone.
_DATETIME = re.compile(
    r"([0-9]{4})(?:-(0[1-9]|1[0-2])(?:-(0[1-9]|[12][0-9]|3[01])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?"
    r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?\Z"
)


def datetime_bounds(text: object) -> tuple[InstantKey, InstantKey]:
    """The instants a FHIR `dateTime` of any precision spans: `[start, end)`.

    `2020` spans the year, `2020-03` the month, `2020-03-04` the day (taken in
    UTC, since a date carries no zone). A full dateTime is one instant, for
    which `start == end`.
    """
    match = _DATETIME.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidInstant(f"{text!r} is not a FHIR dateTime", "not a FHIR dateTime")
    year, month, day, time = match.group(1, 2, 3, 4)
    if time:
        key = instant_key(text)
        return key, key
    year = int(year)
    if day:
        start = instant_key(f"{text}T00:00:00Z")
        return start, InstantKey(start.seconds + 86400, "")
    if month:
        month = int(month)
        start = instant_key(f"{year:04d}-{month:02d}-01T00:00:00Z")
        return start, InstantKey(start.seconds + _days_in_month(year, month) * 86400, "")
    start = instant_key(f"{year:04d}-01-01T00:00:00Z")
    return start, instant_key(f"{year + 1:04d}-01-01T00:00:00Z")


# The common form of `meta.lastUpdated`: UTC written with `Z` and seconds below 60. Such
# texts order exactly as their date-time text, then their fraction digits without trailing
# zeros (as decimal fractions do), so comparing them needs no arithmetic.
_UTC_INSTANT = re.compile(
    r"([0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01]))"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.([0-9]+))?Z\Z"
)
_CALENDAR_DATES: dict[str, bool] = {}


class TextKey(NamedTuple):
    """The sort key of an instant in UTC as text: `YYYY-MM-DDThh:mm:ss`, then fraction digits."""

    date_time: str
    fraction: str


def utc_text_key(text: object) -> TextKey | None:
    """The `TextKey` of a valid instant written in UTC (`...Z`), or None for any other text.

    Among such instants it orders exactly as `instant_key`; other forms (offsets, a
    leap second, anything invalid) give None, and `instant_key` must decide them.
    """
    match = _UTC_INSTANT.match(text) if type(text) is str else None
    if match is None:
        return None
    date, fraction = match.groups()
    valid = _CALENDAR_DATES.get(date)
    if valid is None:
        if len(_CALENDAR_DATES) > 100_000:  # bounded, whatever the data holds
            _CALENDAR_DATES.clear()
        year, month, day = int(date[:4]), int(date[5:7]), int(date[8:10])
        valid = _CALENDAR_DATES[date] = year != 0 and day <= _days_in_month(year, month)
    if not valid:
        return None
    return TextKey(text[:19], fraction.rstrip("0") if fraction else "")


def text_key_of(key: InstantKey) -> TextKey:
    """The `TextKey` of an instant, so a bound can be compared with `utc_text_key` results."""
    moment = _dt.datetime(1970, 1, 1) + _dt.timedelta(seconds=key.seconds)
    return TextKey(
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}",
        key.fraction,
    )
