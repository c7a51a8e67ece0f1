"""`_type`: keep only the resource types the client asked for."""

from __future__ import annotations

from typing import Iterable, Iterator

import apache_beam as beam

from transforms.records import ResourceBatch


class FilterTypes(beam.PTransform):
    """Keeps resources whose type is in `types`; an empty `types` keeps all."""

    def __init__(self, types: Iterable[str]):
        super().__init__()
        self._types = frozenset(types)

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> beam.PCollection[ResourceBatch]:
        if not self._types:
            return batches
        return batches | beam.ParDo(_FilterTypesFn(self._types)).with_output_types(ResourceBatch)


class _FilterTypesFn(beam.DoFn):
    def __init__(self, types: frozenset[str]):
        self._types = types

    def process(self, batch: ResourceBatch) -> Iterator[ResourceBatch]:
        kept = [r for r in batch.resources if r.type in self._types]
        if kept:
            yield batch.replace(kept)
