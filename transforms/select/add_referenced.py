"""Referenced resources: the Organizations, Practitioners, ... that exported compartment resources point at.

Patient- and Group-level exports cover the Patient compartment only, so the
Practitioner an Encounter names is not exported. A user may ask for chosen
types outside the compartment to be added, limited to the resources that an
exported resource references (as the SMART reference server does). The
references are gathered as `Type/id` keys (metadata only) into a side input;
a second read of the source keeps the resources of those types whose key is
in it.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import apache_beam as beam

from transforms.fhir.instant import InvalidInstant
from transforms.fhir.references import references
from transforms.fhir.window import LAST_UPDATED, LastUpdatedWindow
from transforms.records import Resource, ResourceBatch
from transforms.steps.resource_step import ResourceStep, StepOutputs, each_resource


class CollectReferences(beam.PTransform):
    """The set of `Type/id` keys the batches reference among `types`, as one element."""

    def __init__(self, types: Iterable[str]):
        super().__init__()
        self._types = frozenset(types)

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> beam.PCollection[frozenset]:
        return (
            batches
            | "Keys" >> beam.FlatMap(_batch_references, self._types)
            | "Set" >> beam.CombineGlobally(_union).without_defaults()
        )


def _batch_references(batch: ResourceBatch, types: frozenset[str]) -> Iterator[frozenset[str]]:
    found: set[str] = set()
    for resource in batch.resources:
        references(resource.body, types, found)
    if found:
        yield frozenset(found)


def _union(sets: Iterable[frozenset[str]]) -> frozenset[str]:
    return frozenset().union(*sets)


class FilterReferenced(beam.PTransform):
    """Keeps resources whose `Type/id` is in the `keys` side input (from `CollectReferences`).

    They follow `window`'s `_until` and `transactionTime` but not its `_since`:
    a new resource may reference an old Practitioner the client has never received.
    """

    def __init__(self, keys: beam.pvalue.AsSideInput, window: LastUpdatedWindow):
        super().__init__()
        self._keys = keys
        self._window = window.without_since()

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        return batches | ResourceStep("referenced resources", _ReferencedFn(self._window), self._keys)


class _ReferencedFn(beam.DoFn):
    def __init__(self, window: LastUpdatedWindow):
        self._window = window

    def process(self, batch: ResourceBatch, keys: frozenset[str]) -> Iterator:
        admits = self._window.admits_or_late  # one updated after transactionTime is reported, not dropped

        def keep(resource: Resource) -> Optional[Resource]:
            if f"{resource.type}/{resource.body.get('id')}" not in keys:
                return None
            return resource if admits(resource.body, resource.last_updated) else None

        return each_resource(batch, keep, InvalidInstant, LAST_UPDATED)
