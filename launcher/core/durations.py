"""Durations and sizes as people write them on a command line: `90s`, `24h`, `7d`; `500MB`, `2GB`."""

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


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)\Z")


def parse_size(text: str, name: str = "size") -> int:
    """Bytes in `text` (a positive number and a unit: B, kB, MB, GB, TB, or KiB, MiB, GiB, TiB), or `Refused`."""
    match = _SIZE.match(text.strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS or float(match.group(1)) <= 0:
        raise Refused(f"{name} {text!r} must be a positive size such as 500MB, 2GB or 1GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])
