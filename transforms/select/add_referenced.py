"""Supporting resources: the Organizations, Practitioners, Devices, ... beside a Patient- or Group-level export.

Patient- and Group-level exports cover the Patient compartment, so the
Practitioner an Encounter names, or the Device whose `patient` is a covered
patient, is in no patient's compartment. For the supporting types an export
asks for (`_type` naming types outside the compartment, else the server's
`--include-referenced`), a second read of the source keeps the resources of
those types that either
- an exported resource references (as the SMART reference server does): the
  references are gathered as `Type/id` keys (metadata only) into a side input
  (`CollectReferences`); or
- reference a covered patient, through any reference (`PatientReferrers`):
  with the covered patients as a side input each resource is judged where it is;
  with them as a PCollection only `(patient id, Type/id)` metadata is joined
  with them. Either way the result is a side input of `Type/id` keys.
No resource body is shuffled: `FilterReferenced` keeps, where they are, the
resources whose key is in either set, so each is kept once.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Union

import apache_beam as beam

from transforms.fhir.compartment import PatientSet
from transforms.fhir.instant import InvalidInstant
from transforms.fhir.patient_guard import patient_names
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


class PatientReferrers(beam.PTransform):
    """The set of `Type/id` keys of the resources that name a covered patient in any reference, as one element.

    `patients`: the covered patients, a `PatientSet` side input or a PCollection of `(patient id, whole)`.
    A resource counts when the full `window` (`_since` too) admits it, or when a patient it names is
    `whole` (a Group member added after `_since`), as for the compartment's resources; `_until` and
    `transactionTime` are left to `FilterReferenced`, which reports what they exclude.
    """

    def __init__(self, patients: Union[beam.pvalue.AsSideInput, beam.PCollection], window: LastUpdatedWindow):
        super().__init__()
        self._patients = patients
        self._window = window

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> beam.PCollection[frozenset]:
        window = self._window
        if not isinstance(self._patients, beam.PCollection):
            keys = batches | "Named" >> beam.FlatMap(_batch_referrers, window, self._patients)
        else:
            asks = batches | "Asks" >> beam.FlatMap(_batch_asks, window)
            keys = (
                {"asks": asks, "members": self._patients}
                | "ByPatient" >> beam.CoGroupByKey()
                | "Named" >> beam.FlatMap(_joined_referrers)
            )
        return keys | "Set" >> beam.CombineGlobally(_union).without_defaults()


def _named(resource: Resource, window: LastUpdatedWindow) -> tuple[Optional[str], frozenset[str], bool]:
    """(`Type/id`, the ids its references may name as a patient, whether `_since` admits it)."""
    body = resource.body
    if type(body) is not dict or type(body.get("id")) is not str:
        return None, frozenset(), False
    ids = frozenset(patient_names(resource.type, body).ids() - {""})
    if not ids:
        return None, ids, False
    try:
        recent = window.classify(body, resource.last_updated) is not False  # late: FilterReferenced says so
    except InvalidInstant:
        recent = True  # FilterReferenced reports it
    return f"{resource.type}/{body['id']}", ids, recent


def _batch_referrers(batch: ResourceBatch, window: LastUpdatedWindow, patients: PatientSet
                     ) -> Iterator[frozenset[str]]:
    found: set[str] = set()
    for resource in batch.resources:
        key, ids, recent = _named(resource, window)
        if key is not None and not ids.isdisjoint(patients.ids if recent else patients.whole):
            found.add(key)
    if found:
        yield frozenset(found)


def _batch_asks(batch: ResourceBatch, window: LastUpdatedWindow) -> Iterator[tuple[str, tuple[str, bool]]]:
    for resource in batch.resources:
        key, ids, recent = _named(resource, window)
        for patient in ids:
            yield patient, (key, recent)


def _joined_referrers(joined: tuple) -> Iterator[frozenset[str]]:
    _, grouped = joined
    members = list(grouped["members"])
    if not members:
        return
    whole = any(members)
    found = frozenset(key for key, recent in grouped["asks"] if recent or whole)
    if found:
        yield found


class FilterReferenced(beam.PTransform):
    """Keeps resources whose `Type/id` is in the `keys` side input (from `CollectReferences`) or in the
    `referrers` one (from `PatientReferrers`).

    They follow `window`'s `_until` and `transactionTime` but not its `_since`:
    a new resource may reference an old Practitioner the client has never received
    (`PatientReferrers` has applied `_since` to the referrers already).
    """

    def __init__(self, keys: beam.pvalue.AsSideInput, window: LastUpdatedWindow,
                 referrers: Optional[beam.pvalue.AsSideInput] = None):
        super().__init__()
        self._keys = keys
        self._referrers = referrers
        self._window = window.without_since()

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        extra = () if self._referrers is None else (self._referrers,)
        return batches | ResourceStep("referenced resources", _ReferencedFn(self._window), self._keys, *extra)


class _ReferencedFn(beam.DoFn):
    def __init__(self, window: LastUpdatedWindow):
        self._window = window

    def process(self, batch: ResourceBatch, keys: frozenset[str], referrers: frozenset[str] = frozenset()
                ) -> Iterator:
        admits = self._window.admits_or_late  # one updated after transactionTime is reported, not dropped

        def keep(resource: Resource) -> Optional[Resource]:
            key = f"{resource.type}/{resource.body.get('id')}"
            if key not in keys and key not in referrers:
                return None
            return resource if admits(resource.body, resource.last_updated) else None

        return each_resource(batch, keep, InvalidInstant, LAST_UPDATED)
