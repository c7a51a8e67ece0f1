"""The `_elements` step: subsets each resource with a parsed `ElementsSpec` (`transforms.fhir.elements`)."""

from __future__ import annotations

from typing import Iterator

import apache_beam as beam

from transforms.fhir.elements import ElementsSpec, InvalidMeta
from transforms.records import Resource, ResourceBatch
from transforms.steps.resource_step import ResourceStep, StepOutputs, each_resource


class SubsetElements(beam.PTransform):
    """Applies an `ElementsSpec`; a resource whose `meta` cannot be tagged goes to `errors`."""

    def __init__(self, spec: ElementsSpec):
        super().__init__()
        self._spec = spec

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        return batches | ResourceStep("_elements", _SubsetFn(self._spec))


class _SubsetFn(beam.DoFn):
    def __init__(self, spec: ElementsSpec):
        self._spec = spec

    def process(self, batch: ResourceBatch) -> Iterator:
        return each_resource(batch, self._subset, InvalidMeta, "_elements")

    def _subset(self, resource: Resource) -> Resource:
        changed = self._spec.subset(resource.type, resource.body)
        return resource if changed is None else resource._replace(raw=changed[0], body=changed[1])
