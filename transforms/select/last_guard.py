"""The patient guard: the last step before a Patient- or Group-level export writes, withholding any
resource that names a patient the export does not cover (`transforms.fhir.patient_guard`).

Each withheld resource is reported in `error[]` as a `security` issue located by
its source line, type, id and the element path at fault, with no value copied.

The covered patients come as the compartment step has them: the `PatientSet`
side input (`AsSingleton`), or, for sets too large for one worker's memory, the
PCollection of `(patient id, whole)`. Then each resource's references are walked
once where it is; only metadata is shuffled: `(patient id, resource key)` to meet
the covered patients, and each questioned resource's `PatientNames` under its
key to meet the covered ones it names. The verdicts (the withheld resources'
keys and reasons; few) come back to the resources as a side input, so no
resource body is shuffled.
"""

from __future__ import annotations

from typing import Iterator, Union

import apache_beam as beam

from transforms.fhir.compartment import PatientSet
from transforms.fhir.patient_guard import PatientNames, breach, patient_names
from transforms.records import Resource, ResourceBatch
from transforms.steps.resource_step import ResourceStep, StepOutputs, each_resource

_NOBODY: frozenset[str] = frozenset()


class Withheld(Exception):
    """A resource the guard does not let through; `rule` says why, with no value in it."""

    code = "security"

    def __init__(self, rule: str):
        super().__init__(rule)
        self.rule = rule


class GuardPatients(beam.PTransform):
    """Withholds the resources naming a patient the export does not cover; returns `StepOutputs`."""

    def __init__(self, patients: Union[beam.pvalue.AsSideInput, beam.PCollection]):
        super().__init__()
        self._patients = patients

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        if not isinstance(self._patients, beam.PCollection):
            return batches | "Guard" >> ResourceStep("patient guard", _GuardFn(), self._patients)
        asked = batches | "Ask" >> beam.ParDo(_AskFn()).with_outputs("names", main="asks")
        covered = (
            {"asks": asked.asks, "members": self._patients}
            | "ByPatient" >> beam.CoGroupByKey()
            | "Covered" >> beam.FlatMap(_covered)
        )
        withheld = (
            {"names": asked.names, "covered": covered}
            | "ByResource" >> beam.CoGroupByKey()
            | "Verdicts" >> beam.FlatMap(_verdict)
        )
        return batches | "Guard" >> ResourceStep("patient guard", _WithheldFn(), beam.pvalue.AsDict(withheld))


def _key(batch: ResourceBatch, resource: Resource) -> tuple:
    """Where a resource was read; a Bundle on an NDJSON line holds several, told apart by `entry`."""
    return batch.origin.path, batch.origin.offset, resource.index, resource.entry


def _names(resource: Resource) -> PatientNames | None:
    return patient_names(resource.type, resource.body) if type(resource.body) is dict else None


class _GuardFn(beam.DoFn):
    def process(self, batch: ResourceBatch, patients: PatientSet) -> Iterator:
        def keep(resource: Resource) -> Resource:
            names = _names(resource)
            reason = breach(names, patients.ids) if names is not None else None
            if reason is not None:
                raise Withheld(reason)
            return resource

        return each_resource(batch, keep, Withheld, "withheld")


class _AskFn(beam.DoFn):
    """For each resource that would be withheld if no patient were covered: its names under its key,
    and its key under each patient it names."""

    def process(self, batch: ResourceBatch) -> Iterator:
        for resource in batch.resources:
            names = _names(resource)
            if names is None or breach(names, _NOBODY) is None:
                continue
            key = _key(batch, resource)
            yield beam.pvalue.TaggedOutput("names", (key, names))
            for patient in names.record | {p for p, _ in names.elsewhere}:
                yield patient, key


def _covered(joined: tuple) -> Iterator[tuple]:
    patient, grouped = joined
    if any(True for _ in grouped["members"]):
        for key in grouped["asks"]:
            yield key, patient


def _verdict(joined: tuple) -> Iterator[tuple]:
    key, grouped = joined
    covered = frozenset(grouped["covered"])
    for names in grouped["names"]:
        reason = breach(names, covered)
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
