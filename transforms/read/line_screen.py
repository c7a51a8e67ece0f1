"""The lines of an NDJSON text that the read must parse, found a text at a time.

`ReadSelection.screen` says of one line whether it may hold a selected resource.
Most of a narrow export's source is lines that cannot, and splitting a text into
lines costs more than searching it, so the rule is applied to whole texts (whole
lines, each ending in a newline: `transforms.read.ndjson.span_texts`) first:

- a text whose every line opens with `{"resourceType":"T"`, one type T, is skipped
  whole when T is not selected, and split without a test when it is;
- otherwise, with at most `SCREEN_MAX_TYPES` types, only the lines holding a selected
  type's name as a JSON string or a `\\u` escape are cut out and given the line test,
  which no other line passes; a text holding neither is skipped whole;
- above that many types, every line is tested.

A skipped line costs its share of a newline count (numpy's), which keeps every line's index.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np

from transforms.read.pushdown import LEAD, TYPE_NAMES, ReadSelection, lead_name

Found = tuple[int, Iterable[tuple[int, bytes]]]
"""A text's number of lines, and the (index, line) of those that may hold a selected resource."""

_ESCAPE = b"\\u"
_NEWLINE = ord("\n")


def newlines(text: bytes) -> int:
    """How many newlines `text` holds: numpy's vectorised count, 3x `bytes.count` on a block."""
    return int(np.count_nonzero(np.frombuffer(text, np.uint8) == _NEWLINE))


def split_lines(text: bytes) -> list[bytes]:
    """The lines of a text of whole lines (each ending in a newline), without their newlines."""
    lines = text.split(b"\n")
    lines.pop()
    return lines


def every_line(text: bytes, first: int) -> Found:
    """Every line of `text`, the first numbered `first`."""
    lines = split_lines(text)
    return len(lines), enumerate(lines, first)


def line_finder(selection: Optional[ReadSelection]) -> Callable[[bytes, int], Found]:
    """`(text, first) -> Found` for a read with this selection (None: every line)."""
    if selection is None or selection.types is None:
        return every_line
    return _Finder(selection).find


class _Finder:
    """The block rules above, for one selection."""

    def __init__(self, selection: ReadSelection):
        self._may_hold = selection.screen()
        self._selected = frozenset(name.encode() for name in selection.types)
        markers = selection.markers()
        self._patterns = None if markers is None else (*markers, _ESCAPE)

    def find(self, text: bytes, first: int) -> Found:
        name, count = _uniform(text)
        if name is not None:
            return (count, ()) if name not in self._selected else every_line(text, first)
        if self._patterns is None:
            lines, may_hold = split_lines(text), self._may_hold
            return len(lines), [(index, line) for index, line in enumerate(lines, first) if may_hold(line)]
        return newlines(text), self._hits(text, first)

    def _hits(self, text: bytes, first: int) -> list[tuple[int, bytes]]:
        """The lines holding a pattern that pass the line test; the others cannot."""
        patterns, may_hold = self._patterns, self._may_hold
        ahead = [_find(text, pattern, 0) for pattern in patterns]  # each pattern's next place
        kept = []
        index, start = first, 0  # the line starting at `start` has index `index`
        while True:
            at = min((place for place in ahead if place >= 0), default=-1)
            if at < 0:
                return kept
            newline = text.rfind(b"\n", start, at)
            if newline >= 0:
                index += text.count(b"\n", start, newline + 1)
                start = newline + 1
            end = text.index(b"\n", at)
            line = text[start:end]
            if may_hold(line):
                kept.append((index, line))
            index, start = index + 1, end + 1
            for i, place in enumerate(ahead):
                if 0 <= place < start:
                    ahead[i] = _find(text, patterns[i], start)


def _find(text: bytes, pattern: bytes, start: int) -> int:
    """Where `pattern` next appears in `text` from `start` (-1: nowhere). A backslash is found at
    memchr speed, much faster than a search for the two bytes of `\\u`."""
    if pattern is not _ESCAPE:
        return text.find(pattern, start)
    at = text.find(b"\\", start)
    while at >= 0 and text[at + 1 : at + 2] != b"u":
        at = text.find(b"\\", at + 1)
    return at


def _uniform(text: bytes) -> tuple[Optional[bytes], int]:
    """The R4 type (not Bundle) that every line of `text` opens with, and the number of lines;
    (None, 0) when there is none."""
    name = lead_name(text)
    if name not in TYPE_NAMES:
        return None, 0
    opening = LEAD + name + b'"'
    last = text.rfind(b"\n", 0, len(text) - 1) + 1
    if not text.startswith(opening, last):  # the last line differs: not worth counting
        return None, 0
    count = newlines(text)
    # A line opening with it follows a newline, so the count says whether every line does.
    if text.count(b"\n" + opening) != count - 1:
        return None, 0
    return name, count
