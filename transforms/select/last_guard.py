"""The patient guard: the last step before a Patient- or Group-level export writes, withholding any
resource that names a patient the export does not cover (`transforms.fhir.patient_guard`).

Each withheld resource is reported in `error[]` as a `security` issue located by
its source line, type, id and the element path at fault, with no value copied.

The covered patients come as the compartment step has them: the `PatientSet`
side input (`AsSingleton`), or, for sets too large for one worker's memory, the
PCollection of `(patient id, whole)`. The source's Patients the export does not
cover (`outside`: ids only, which judge an untyped `urn:uuid:` reference) come
the same way: a side input holding one frozenset, or a PCollection of ids; the
plan joins them whenever it joins the covered ones. With both as side inputs
each resource is judged where it is. Otherwise its references are walked once
where it is, and only metadata is shuffled: `(patient id, resource key)` to meet
the covered and outside ids, and each questioned resource's `PatientNames` under
its key to meet what was found. The verdicts (the withheld resources' keys and
reasons; few) come back to the resources as a side input, so no resource body is
shuffled.
"""

from __future__ import annotations

from typing import Iterator, Optional, Union

import apache_beam as beam

from transforms.fhir.compartment import PatientSet
from transforms.fhir.patient_guard import PatientNames, breach, patient_names
from transforms.records import Resource, ResourceBatch
from transforms.steps.resource_step import ResourceStep, StepOutputs, each_resource

_NOBODY: frozenset[str] = frozenset()
Ids = Union[beam.pvalue.AsSideInput, beam.PCollection]


class _Everyone:
    """Holds every id: what a join asks about before it knows which ids are a source Patient's."""

    def __contains__(self, _: object) -> bool:
        return True


class Withheld(Exception):
    """A resource the guard does not let through; `rule` says why, with no value in it."""

    code = "security"

    def __init__(self, rule: str):
        super().__init__(rule)
        self.rule = rule


class GuardPatients(beam.PTransform):
    """Withholds the resources naming a patient the export does not cover; returns `StepOutputs`.

    `patients`: the covered patients; `outside`: the source's Patient ids not covered (None: none can
    be, as at Patient level without `patient`), a side input only when `patients` is one."""

    def __init__(self, patients: Ids, outside: Optional[Ids] = None):
        super().__init__()
        self._patients = patients
        self._outside = outside

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        patients, outside = self._patients, self._outside
        if not isinstance(patients, beam.PCollection) and not isinstance(outside, beam.PCollection):
            extra = () if outside is None else (outside,)
            return batches | "Guard" >> ResourceStep("patient guard", _GuardFn(), patients, *extra)
        if not isinstance(patients, beam.PCollection):  # a small covered set, a large outside one
            patients = patients.pvalue | "Members" >> beam.FlatMap(_members)
        asked = batches | "Ask" >> beam.ParDo(_AskFn()).with_outputs("names", main="asks")
        facts = {"asks": asked.asks, "members": patients}
        if outside is not None:
            facts["outside"] = outside | "OutsideKeys" >> beam.Map(lambda patient: (patient, None))
        found = facts | "ByPatient" >> beam.CoGroupByKey() | "Found" >> beam.FlatMap(_found)
        withheld = (
            {"names": asked.names, "found": found}
            | "ByResource" >> beam.CoGroupByKey()
            | "Verdicts" >> beam.FlatMap(_verdict)
        )
        return batches | "Guard" >> ResourceStep("patient guard", _WithheldFn(), beam.pvalue.AsDict(withheld))


def _members(patients: PatientSet) -> Iterator[tuple[str, bool]]:
    return ((patient, patient in patients.whole) for patient in patients.ids)


def _key(batch: ResourceBatch, resource: Resource) -> tuple:
    """Where a resource was read; a Bundle on an NDJSON line holds several, told apart by `entry`."""
    return batch.origin.path, batch.origin.offset, resource.index, resource.entry


def _names(resource: Resource) -> PatientNames | None:
    return patient_names(resource.type, resource.body) if type(resource.body) is dict else None


class _GuardFn(beam.DoFn):
    def process(self, batch: ResourceBatch, patients: PatientSet, outside: frozenset[str] = _NOBODY) -> Iterator:
        def keep(resource: Resource) -> Resource:
            names = _names(resource)
            reason = breach(names, patients.ids, outside) if names is not None else None
            if reason is not None:
                raise Withheld(reason)
            return resource

        return each_resource(batch, keep, Withheld, "withheld")


class _AskFn(beam.DoFn):
    """For each resource that would be withheld if no patient were covered and every id were a
    source Patient's: its names under its key, and its key under each id it names."""

    def process(self, batch: ResourceBatch) -> Iterator:
        for resource in batch.resources:
            names = _names(resource)
            if names is None or breach(names, _NOBODY, _Everyone()) is None:
                continue
            key = _key(batch, resource)
            yield beam.pvalue.TaggedOutput("names", (key, names))
            for patient in names.ids():
                yield patient, key


def _found(joined: tuple) -> Iterator[tuple]:
    """`(resource key, (id, covered))` for each asked id that is covered or an outside Patient's."""
    patient, grouped = joined
    if any(True for _ in grouped["members"]):
        covered = True
    elif any(True for _ in grouped.get("outside", ())):
        covered = False
    else:
        return
    for key in grouped["asks"]:
        yield key, (patient, covered)


def _verdict(joined: tuple) -> Iterator[tuple]:
    key, grouped = joined
    found = list(grouped["found"])
    covered = frozenset(p for p, is_covered in found if is_covered)
    outside = frozenset(p for p, is_covered in found if not is_covered)
    for names in grouped["names"]:
        reason = breach(names, covered, outside)
        if reason is not None:
            yield key, reason
            return


class _WithheldFn(beam.DoFn):
    def process(self, batch: ResourceBatch, withheld: dict) -> Iterator:
        if not withheld:
            yield batch
            return

        def keep(resource: Resource) -> Resource:
            reason = withheld.get(_key(batch, resource))
            if reason is not None:
                raise Withheld(reason)
            return resource

        yield from each_resource(batch, keep, Withheld, "withheld")
