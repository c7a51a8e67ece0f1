"""Date search: FHIR precision ranges compared with the R4 prefixes.

Both sides are half-open ranges of nanoseconds since the epoch: `2020` is
[2020-01-01T00:00Z, 2021-01-01T00:00Z), `2020-03-04T10:00:00Z` is one second,
a Period runs from its start's range to its end's (an open end is unbounded),
and a Timing is each of its `event`s and its `repeat.boundsPeriod`. A value
without a zone (a date, or a time without an offset) is taken in UTC.
`ap` widens the search range by 10% of its distance to the time the filter
was compiled, as the spec suggests.
"""

from __future__ import annotations

import calendar
import re
from typing import Optional

from transforms.fhir.instant import InvalidInstant, instant_key, now_instant
from transforms.fhir.search.common import InvalidSearchValue, MalformedData, split_prefix

_NS = 1_000_000_000
_UNBOUNDED = 1 << 80  # far beyond any year 9999 in nanoseconds
_DATE = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?\Z"
)


def date_range(text: object) -> tuple[int, int]:
    """The half-open nanosecond range a FHIR date, dateTime or instant spans."""
    match = _DATE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError("not a FHIR date or dateTime")  # never the text: it may be a resource's
    try:
        return _range(*match.groups())
    except InvalidInstant:
        raise ValueError("not a calendar date and time") from None


def _range(year, month, day, hour, minute, second, fraction, zone) -> tuple[int, int]:
    if hour is None:
        start = _nanos(f"{year}-{month or '01'}-{day or '01'}T00:00:00Z")
        # The end is counted in days, not read as the next period's start: year 9999 has no next.
        if day:
            days = 1
        elif month:
            days = calendar.monthrange(int(year), int(month))[1]
        else:
            days = 366 if calendar.isleap(int(year)) else 365
        return start, start + days * 86400 * _NS
    fraction = (fraction or "")[:9]
    time = f"{hour}:{minute}:{second or '00'}" + (f".{fraction}" if fraction else "")
    start = _nanos(f"{year}-{month}-{day}T{time}{zone or 'Z'}")
    if second is None:
        return start, start + 60 * _NS
    return start, start + 10 ** (9 - len(fraction))


def _nanos(text: str) -> int:
    key = instant_key(text)
    return key.seconds * _NS + int(key.fraction[:9].ljust(9, "0"))


def element_ranges(element: object) -> list[tuple[int, int]]:
    """The ranges of a date-like element: a string, a Period or a Timing."""
    try:
        if type(element) is str:
            return [date_range(element)]
        if type(element) is dict:
            if "start" in element or "end" in element:
                return [_period(element)]
            ranges = [date_range(e) for e in _as_list(element.get("event"))]
            repeat = element.get("repeat")
            bounds = repeat.get("boundsPeriod") if type(repeat) is dict else None
            if type(bounds) is dict:
                ranges.append(_period(bounds))
            return ranges
    except ValueError as exc:
        raise MalformedData(f"a date value is {exc}") from None
    raise MalformedData(f"a date value is {type(element).__name__}, not a date, Period or Timing")


def _period(period: dict) -> tuple[int, int]:
    start, end = period.get("start"), period.get("end")
    low = date_range(start)[0] if start is not None else -_UNBOUNDED
    high = date_range(end)[1] if end is not None else _UNBOUNDED
    return low, high


def _as_list(value: object) -> list:
    return value if type(value) is list else [] if value is None else [value]


class DateMatch:
    """One prefixed date search value, e.g. `ge2020-03`."""

    __slots__ = ("prefix", "low", "high")

    def __init__(self, value: str, now: Optional[str] = None):
        self.prefix, text = split_prefix(value)
        try:
            self.low, self.high = date_range(text)
        except ValueError:
            raise InvalidSearchValue(
                f"{text!r} is not a date (YYYY[-MM[-DD[Thh:mm[:ss][zone]]]])"
            ) from None
        if self.prefix == "ap":
            gap = abs(_nanos(now or now_instant()) - self.low) // 10
            self.low, self.high = self.low - gap, self.high + gap

    def __call__(self, element: object) -> bool:
        return any(self._compare(low, high) for low, high in element_ranges(element))

    def _compare(self, low: int, high: int) -> bool:
        prefix, s_low, s_high = self.prefix, self.low, self.high
        contained = s_low <= low and high <= s_high
        if prefix == "eq":
            return contained
        if prefix == "ne":
            return not contained
        if prefix == "gt":
            return high > s_high
        if prefix == "lt":
            return low < s_low
        if prefix == "ge":
            return high > s_high or contained
        if prefix == "le":
            return low < s_low or contained
        if prefix == "sa":
            return low >= s_high
        if prefix == "eb":
            return high <= s_low
        return low < s_high and s_low < high  # ap: overlaps the widened range
