"""`_typeFilter`: keep only the resources of a filtered type that one of its filters admits.

The filters are FHIR R4 searches (`Observation?code=http://loinc.org|8302-2`),
compiled once by `compile_type_filters` from the official SearchParameters (see
`transforms/fhir/search/`). Types without a filter pass untouched. A resource
whose data the filter cannot read (e.g. a date that is not a date) is not
exported and is reported as a bad record, unless its other values or the other
filters decide without it.
"""

from __future__ import annotations

from typing import Iterator

import apache_beam as beam

from transforms.fhir.search.common import MalformedData, TypeFilterRefused
from transforms.fhir.search.compiler import TypeFilters, compile_type_filters
from transforms.records import ResourceBatch
from transforms.steps.resource_step import ResourceStep, StepOutputs, each_resource

__all__ = ["FilterTypeFilter", "TypeFilterRefused", "TypeFilters", "compile_type_filters"]


class FilterTypeFilter(beam.PTransform):
    """Applies compiled `TypeFilters`; resources with unreadable values go to `errors`."""

    def __init__(self, filters: TypeFilters):
        super().__init__()
        self._filters = filters

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        return batches | ResourceStep("_typeFilter", _TypeFilterFn(self._filters))


class _TypeFilterFn(beam.DoFn):
    def __init__(self, filters: TypeFilters):
        self._filters = filters

    def process(self, batch: ResourceBatch) -> Iterator:
        matches = self._filters.matches
        return each_resource(batch, lambda r: r if matches(r.type, r.body) else None, MalformedData, "_typeFilter")
