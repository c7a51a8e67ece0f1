"""Durations as people write them on a command line: `90s`, `90m`, `24h`, `7d`."""

from __future__ import annotations

import re

from transforms.errors import Refused

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])\Z")


def parse_duration(text: str, name: str = "duration") -> float:
    """Seconds in `text` (a positive number and a unit s, m, h or d), or a ValueError naming `name`."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise Refused(f"{name} {text!r} must be a positive number with a unit s, m, h or d, e.g. 24h, 90m, 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]
