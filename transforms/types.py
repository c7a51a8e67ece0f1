"""`_type`: keep only the resource types the client asked for."""

from __future__ import annotations

from typing import Iterable, Iterator

import apache_beam as beam

from transforms.records import ResourceBatch
from transforms.steps import ResourceStep, StepOutputs


class FilterTypes(beam.PTransform):
    """Keeps resources whose type is in `types` (which must not be empty)."""

    def __init__(self, types: Iterable[str]):
        super().__init__()
        self._types = frozenset(types)
        if not self._types:
            raise ValueError("FilterTypes needs at least one type; without _type, skip the step")

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        return batches | ResourceStep("_type", _FilterTypesFn(self._types))


class _FilterTypesFn(beam.DoFn):
    def __init__(self, types: frozenset[str]):
        self._types = types

    def process(self, batch: ResourceBatch) -> Iterator[ResourceBatch]:
        kept = [r for r in batch.resources if r.type in self._types]
        if kept:
            yield batch.replace(kept)
