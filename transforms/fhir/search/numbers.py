"""Number and quantity search with prefixes.

`eq` (and `ne`) use the precision of the search value, as the spec says: `100`
is [99.5, 100.5) and `100.0` is [99.95, 100.05). The other prefixes compare
with the value itself; `sa`/`eb` on a single value act as `gt`/`lt`, and `ap`
is within 10% of the value. A Range in the data is [low, high] (an end absent
or without a value is unbounded). A quantity value `value|system|code` also
needs that system and code; `value||code` accepts the code or the unit, and
`value|system|` any code of that system. Units are not converted.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Optional

from transforms.fhir.search.common import (
    InvalidSearchValue,
    MalformedData,
    split_escaped,
    split_prefix,
    unescape,
)

_INFINITY = Decimal("Infinity")


def _decimal(text: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise InvalidSearchValue(f"{text!r} is not a number")
    return number


def _number(value: object) -> Decimal:
    if type(value) is int:
        return Decimal(value)
    if type(value) is float:
        return Decimal(repr(value))
    raise MalformedData(f"a numeric value is {type(value).__name__}, not a number")


class NumberMatch:
    """One prefixed number search value, e.g. `gt5.4`, over decimals, integers and Ranges."""

    __slots__ = ("prefix", "value", "low", "high")

    def __init__(self, value: str):
        self.prefix, text = split_prefix(value)
        self.value = _decimal(text)
        if self.prefix == "ap":
            margin = abs(self.value) / 10
        else:
            margin = Decimal(5).scaleb(self.value.as_tuple().exponent - 1)
        self.low, self.high = self.value - margin, self.value + margin

    def __call__(self, element: object) -> bool:
        low, high = self._bounds(element)
        return low is not None and self.compare(low, high)

    def _bounds(self, element: object) -> tuple[Optional[Decimal], Optional[Decimal]]:
        if type(element) is dict:  # a Range
            low, high = _range_end(element.get("low")), _range_end(element.get("high"))
            if low is None and high is None:
                return None, None
            return (-_INFINITY if low is None else low, _INFINITY if high is None else high)
        number = _number(element)
        return number, number

    def compare(self, low: Decimal, high: Decimal) -> bool:
        """Applies the prefix to a data range [low, high] (a single number is low == high)."""
        prefix, value = self.prefix, self.value
        if prefix in ("eq", "ne"):
            inside = self.low <= low and high < self.high
            return inside if prefix == "eq" else not inside
        if prefix in ("gt", "sa"):
            return (low if prefix == "sa" else high) > value
        if prefix in ("lt", "eb"):
            return (high if prefix == "eb" else low) < value
        if prefix == "ge":
            return high >= value
        if prefix == "le":
            return low <= value
        return low <= self.high and self.low <= high  # ap


def _quantity_number(quantity: object) -> Decimal:
    if type(quantity) is not dict:
        raise MalformedData("a Quantity is not an object")
    return _number(quantity.get("value"))


def _range_end(quantity: object) -> Optional[Decimal]:
    """A Range's `low` or `high` as a number; None when it is absent or has no value."""
    if quantity is None or (type(quantity) is dict and quantity.get("value") is None):
        return None
    return _quantity_number(quantity)


class QuantityMatch(NumberMatch):
    """`[prefix]value[|system|code]` over Quantity (and Range) elements."""

    __slots__ = ("system", "code")

    def __init__(self, value: str):
        number, *unit = [unescape(part) for part in split_escaped(value, "|")]
        if len(unit) not in (0, 2):
            raise InvalidSearchValue(f"{value!r} is not value, value|system|code or value||code")
        super().__init__(number)
        self.system, self.code = (unit[0] or None, unit[1] or None) if unit else (None, None)

    def __call__(self, element: object) -> bool:
        if type(element) is not dict:
            raise MalformedData(f"a quantity value is {type(element).__name__}, not an object")
        if "low" in element or "high" in element:
            ends = [e for e in (element.get("low"), element.get("high")) if e is not None]
            if not all(self._same_unit(e) for e in ends):
                return False
            return super().__call__(element)
        if "value" not in element or not self._same_unit(element):
            return False
        number = _quantity_number(element)
        return self.compare(number, number)

    def _same_unit(self, quantity: object) -> bool:
        if self.code is None and self.system is None:
            return True
        if type(quantity) is not dict:
            raise MalformedData("a Quantity is not an object")
        if self.system is None:
            return self.code in (quantity.get("code"), quantity.get("unit"))
        return quantity.get("system") == self.system and self.code in (None, quantity.get("code"))
