"""`_type`, and at system level the time window, applied while a chunk is read.

Most of an export's input is usually left out by type or by time, and the
test needs nothing but the parsed resource. Applying it inside the read loop
(a pushdown, like a Parquet reader's row filter) frees a left-out resource's
parsed body at once instead of carrying it through a batch to a later step,
and when nothing after the read looks at bodies, a kept resource carries
only its original bytes. Resources with a bad `meta.lastUpdated` become
`BadRecord`s exactly as a window step would report them; those updated after
`transactionTime` become `information` notices, so none vanishes silently.
"""

from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional

from transforms.fhir.instant import InvalidInstant
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.window import LAST_UPDATED, LATE, LastUpdatedWindow, UpdatedAfterTransaction
from transforms.records import BadRecord, Resource, ResourceBatch

SCREEN_MAX_TYPES = 8
# How a line written by a FHIR server starts: its type, as its first member, unescaped.
LEAD = b'{"resourceType":"'
# Every R4 type but Bundle (a Bundle line may hold any type).
TYPE_NAMES = frozenset(name.encode() for name in RESOURCE_TYPES if name != "Bundle")
_LONGEST_NAME = max(map(len, TYPE_NAMES))


def lead_name(text: bytes, at: int = 0) -> Optional[bytes]:
    """The type named by a line of `text` starting at `at` that opens with `LEAD`, or None."""
    if not text.startswith(LEAD, at):
        return None
    start = at + len(LEAD)
    end = text.find(b'"', start, start + _LONGEST_NAME + 1)
    return text[start:end] if end > 0 else None


class ReadSelection(NamedTuple):
    """What the read keeps: resources of `types` (None: all) inside `window` (None: any time).

    `keep_bodies=False` drops each kept resource's parsed body (`Resource.body`
    is None), for exports whose later steps and part format need only the bytes.
    """

    types: Optional[frozenset[str]] = None
    window: Optional[LastUpdatedWindow] = None
    keep_bodies: bool = True

    @classmethod
    def of(cls, types: Iterable[str] = (), window: Optional[LastUpdatedWindow] = None,
           keep_bodies: bool = True) -> "ReadSelection":
        """A selection from a `_type` list (empty: every type)."""
        return cls(frozenset(types) or None, window, keep_bodies)

    def screen(self) -> Optional[Callable[[bytes], bool]]:
        """A byte test that a line may hold a selected resource (None: every line may).

        A line whose first member is `"resourceType":"<T>"`, `T` an R4 type other than Bundle
        and not selected, is a resource of type `T`: it is skipped unparsed, whatever it holds
        further on (contained resources included). Any other line in which no selected type's
        name appears as a JSON string (`"Patient"`), and which holds no `\\u` escape (that could
        spell one), cannot be of a selected type either, nor a Bundle holding one. So a broken
        line of a type nobody asked for is not reported; a broken line of a selected type still
        is. Above `SCREEN_MAX_TYPES` types only the first test is made: most lines are
        selected anyway, and testing for every name would cost more than it saves.
        """
        if self.types is None:
            return None
        selected = frozenset(name.encode() for name in self.types)
        others = TYPE_NAMES - selected
        markers, escape = self.markers(), b"\\u"

        def may_hold(line: bytes) -> bool:
            name = lead_name(line)
            if name in selected:
                return True
            if name in others:
                return False
            if markers is None:
                return True
            # `in` is a fast substring search (a regex here was slower than parsing). A selected
            # line names its type near its start, so it is found at once; only a line about to be
            # skipped is searched to its end.
            for marker in markers:
                if marker in line:
                    return True
            return escape in line

        return may_hold

    def markers(self) -> Optional[tuple[bytes, ...]]:
        """The selected types' names as JSON strings (`"Patient"`), which `screen` looks for in a line
        that does not open with its type; None for every type, or above `SCREEN_MAX_TYPES` types."""
        if self.types is None or len(self.types) > SCREEN_MAX_TYPES:
            return None
        return tuple(b'"%s"' % name.encode() for name in sorted(self.types))

    def admits(self, resource_type: str, body: dict, last_updated: Optional[str] = None) -> bool:
        """True when the resource is selected; raises `InvalidInstant` on a bad `meta.lastUpdated`."""
        if self.types is not None and resource_type not in self.types:
            return False
        return self.window is None or self.window.admits(body, last_updated)

    def select(self, batch: ResourceBatch, windowed: bool = False) -> tuple[ResourceBatch, list[BadRecord]]:
        """The batch's selected resources (the batch keeps its `source_bytes`) and its bad ones.

        Besides bad `meta.lastUpdated` values, a selected resource without an `id` is a bad
        record, and one updated after `transactionTime` an `information` notice. `windowed`:
        the source applied the window already to every resource with a `last_updated`
        (a PostgreSQL query's predicates), so only the others are placed here.
        """
        kept: list[Resource] = []
        bad: list[BadRecord] = []
        types, window, origin = self.types, self.window, batch.origin
        for resource in batch.resources:
            if types is not None and resource.type not in types:
                continue
            body = resource.body
            if window is not None and not (windowed and resource.last_updated is not None):
                try:
                    verdict = window.classify(body, resource.last_updated)
                except InvalidInstant as exc:
                    bad.append(window_error(origin, resource.index, exc, resource.type, body.get("id")))
                    continue
                if verdict is not True:
                    if verdict is LATE:
                        bad.append(late_record(origin, resource.index, resource.type, body.get("id")))
                    continue
            rid = body.get("id")
            if type(rid) is not str or not rid:
                bad.append(no_id_record(origin, resource.index, resource.type))
                continue
            kept.append(resource if self.keep_bodies else resource._replace(body=None))
        return batch.replace(kept), bad


def read_types(selection: Optional[ReadSelection], deletions: Optional[ReadSelection]) -> Optional[frozenset[str]]:
    """The types a read must look at: the selection's (no selection: every type) and, when deletions are
    read, theirs; None for every type."""
    live = selection.types if selection is not None else None
    gone = deletions.types if deletions is not None else frozenset()
    return None if live is None or gone is None else live | gone


def union(selection: Optional[ReadSelection], also: ReadSelection) -> Optional[ReadSelection]:
    """What a read for both selections looks at: either's types, at any time (None: every type)."""
    types = read_types(selection, also)
    return None if types is None else ReadSelection(types)


def _id(value: object) -> Optional[str]:
    return value if type(value) is str else None


def window_error(origin, index: int, exc: InvalidInstant, resource_type: str, resource_id: object = None) -> BadRecord:
    """The bad record for a resource whose `meta.lastUpdated` cannot be placed in the window.

    It states the rule broken (`exc.rule`), never the value."""
    return BadRecord(origin, index, f"{LAST_UPDATED}: {exc.rule}", resource_type, resource_id=_id(resource_id))


def late_record(origin, index: int, resource_type: str, resource_id: object = None) -> BadRecord:
    """The notice for a resource updated after `transactionTime`: not exported, and said so."""
    return BadRecord(
        origin, index, f"{LAST_UPDATED}: {LATE}", resource_type, code=UpdatedAfterTransaction.code,
        resource_id=_id(resource_id), severity=UpdatedAfterTransaction.severity,
    )


NO_ID = "has no id"


def no_id_record(origin, index: int, resource_type: str) -> BadRecord:
    """The bad record for a resource without a string `id`: it cannot be exported."""
    return BadRecord(origin, index, NO_ID, resource_type)
