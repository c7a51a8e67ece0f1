"""`_type`, and at system level the time window, applied while a chunk is read.

Most of an export's input is usually left out by type or by time, and the
test needs nothing but the parsed resource. Applying it inside the read loop
(a pushdown, like a Parquet reader's row filter) frees a left-out resource's
parsed body at once instead of carrying it through a batch to a later step,
and when nothing after the read looks at bodies, a kept resource carries
only its original bytes. Resources with a bad `meta.lastUpdated` become
`BadRecord`s exactly as a window step would report them.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

from transforms.fhir.instant import InvalidInstant
from transforms.fhir.window import LAST_UPDATED, LastUpdatedWindow
from transforms.records import BadRecord, Resource, ResourceBatch


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

    def admits(self, resource_type: str, body: dict, last_updated: Optional[str] = None) -> bool:
        """True when the resource is selected; raises `InvalidInstant` on a bad `meta.lastUpdated`."""
        if self.types is not None and resource_type not in self.types:
            return False
        return self.window is None or self.window.admits(body, last_updated)

    def select(self, batch: ResourceBatch) -> tuple[ResourceBatch, list[BadRecord]]:
        """The batch's selected resources (the batch keeps its `source_bytes`) and its bad ones."""
        kept: list[Resource] = []
        bad: list[BadRecord] = []
        for resource in batch.resources:
            try:
                if not self.admits(resource.type, resource.body, resource.last_updated):
                    continue
            except InvalidInstant as exc:
                bad.append(window_error(batch.origin, resource.index, exc, resource.type))
                continue
            kept.append(resource if self.keep_bodies else resource._replace(body=None))
        return batch.replace(kept), bad


def window_error(origin, index: int, exc: InvalidInstant, resource_type: str) -> BadRecord:
    """The bad record for a resource whose `meta.lastUpdated` cannot be placed in the window."""
    return BadRecord(origin, index, f"{LAST_UPDATED}: {exc}", resource_type)
