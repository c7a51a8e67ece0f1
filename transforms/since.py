"""`_since` / `_until` and the kickoff's `transactionTime`, on `meta.lastUpdated`.

Bounds follow the Bulk Data IG v3 exactly: `_since` keeps resources updated
*after* it and `_until` those updated *before* it (both exclusive), and nothing
updated after `transactionTime` is exported while everything up to and
including it is. One run's `transactionTime` can therefore be the next run's
`_since` with no gap and no overlap. Instants are compared as instants, across
offsets and precisions, never as strings.

A resource without `meta.lastUpdated` cannot be placed in time. The IG lets a
server include it whatever `_since` says; that is the default here, and
`include_missing=False` drops such resources when `_since` or `_until` is set.
"""

from __future__ import annotations

from typing import Iterator, Optional

import apache_beam as beam

from transforms.fhir.instant import InstantKey, InvalidInstant, instant_key
from transforms.records import BadRecord, ResourceBatch
from transforms.steps import ResourceStep, StepOutputs


class LastUpdatedWindow:
    """The half-open time window `(since, min(until, tx]]` a resource must fall in."""

    def __init__(
        self,
        transaction_time: str,
        since: Optional[str] = None,
        until: Optional[str] = None,
        include_missing: bool = True,
    ):
        self._since = instant_key(since) if since else None
        self._until = instant_key(until) if until else None
        self._tx = instant_key(transaction_time)
        self._keep_missing = include_missing or not (since or until)

    def admits(self, body: dict) -> bool:
        """True when the resource is in the window; raises `InvalidInstant` on bad data."""
        meta = body.get("meta")
        if meta is None:
            return self._keep_missing
        if type(meta) is not dict:
            raise InvalidInstant("meta is not a JSON object")
        text = meta.get("lastUpdated")
        if text is None:
            return self._keep_missing
        key: InstantKey = instant_key(text)
        if key > self._tx:
            return False
        if self._since is not None and not key > self._since:
            return False
        return self._until is None or key < self._until


class FilterLastUpdated(beam.PTransform):
    """Applies a `LastUpdatedWindow`; resources with a bad `meta.lastUpdated` go to `errors`."""

    def __init__(self, window: LastUpdatedWindow):
        super().__init__()
        self._window = window

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        return batches | ResourceStep("_since/_until", _WindowFn(self._window))


class _WindowFn(beam.DoFn):
    def __init__(self, window: LastUpdatedWindow):
        self._window = window

    def process(self, batch: ResourceBatch) -> Iterator:
        kept = []
        admits = self._window.admits
        for resource in batch.resources:
            try:
                if admits(resource.body):
                    kept.append(resource)
            except InvalidInstant as exc:
                yield beam.pvalue.TaggedOutput(
                    "errors",
                    BadRecord(batch.origin, resource.index, f"meta.lastUpdated: {exc}", resource.type),
                )
        if kept:
            yield batch.replace(kept)
