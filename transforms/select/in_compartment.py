"""The compartment step: keeps the resources in the compartment of a covered patient.

The rule itself is Beam-free (`transforms.fhir.compartment`); this module
applies it per batch with the patients as a side input (`FilterCompartment`),
or, for patient sets too large for one worker's memory, as a keyed join
(`JoinCompartment`).
"""

from __future__ import annotations

from typing import Iterator, Optional

import apache_beam as beam

from transforms.fhir.compartment import COMPARTMENT_TYPES, CompartmentRule, PatientSet, compartment_patients
from transforms.fhir.instant import InvalidInstant
from transforms.fhir.window import LAST_UPDATED, LastUpdatedWindow
from transforms.records import ResourceBatch
from transforms.steps.resource_step import ResourceStep, StepOutputs, each_resource


class FilterCompartment(beam.PTransform):
    """Keeps resources in the compartment of a patient of the `PatientSet` side input.

    With `window`, it also applies the `_since`/`_until`/`transactionTime`
    window, except that resources in the compartment of a `whole` patient (a
    Group member added after `_since`) are kept whatever `_since` says.
    """

    def __init__(self, patients: beam.pvalue.AsSideInput, window: Optional[LastUpdatedWindow] = None):
        super().__init__()
        self._patients = patients
        self._window = window

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        fn = _CompartmentFn(self._window)
        return batches | ResourceStep("patient compartment", fn, self._patients)


class _CompartmentFn(beam.DoFn):
    def __init__(self, window: Optional[LastUpdatedWindow]):
        self._window = window
        self._unbounded = window.without_since() if window is not None else None

    def process(self, batch: ResourceBatch, patients: PatientSet) -> Iterator:
        rule = CompartmentRule(patients, self._window, self._unbounded)
        return each_resource(batch, rule, InvalidInstant, LAST_UPDATED)


class JoinCompartment(beam.PTransform):
    """`FilterCompartment` for patient sets too large for one worker's memory: a keyed join.

    `patients` is a PCollection of `(patient_id, whole)`. Resources are joined
    to members by the patient ids of their compartments in two steps: first
    only `(patient id, resource key)` metadata is shuffled to find the chosen
    resources, then each candidate resource is shuffled once, under its own
    key, to meet its verdict. No worker ever holds the whole patient set.
    """

    def __init__(self, patients: beam.PCollection, window: Optional[LastUpdatedWindow] = None):
        super().__init__()
        self._patients = patients
        self._window = window

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        keyed = batches | "Candidates" >> beam.ParDo(_CandidatesFn()).with_outputs("by_patient", main="by_key")
        verdicts = (
            {"resources": keyed.by_patient, "members": self._patients}
            | "ByPatient" >> beam.CoGroupByKey()
            | "Verdicts" >> beam.FlatMap(_verdicts)
        )
        out = (
            {"resource": keyed.by_key, "verdict": verdicts}
            | "ByResource" >> beam.CoGroupByKey()
            | "Choose" >> beam.ParDo(_ChooseFn(self._window)).with_outputs("errors", main="batches")
        )
        return StepOutputs(out.batches, out.errors)


class _CandidatesFn(beam.DoFn):
    """Keys every compartment resource by itself, and its key by each of its patients."""

    def process(self, batch: ResourceBatch) -> Iterator:
        origin = batch.origin
        for resource in batch.resources:
            if resource.type not in COMPARTMENT_TYPES:
                continue
            found = compartment_patients(resource.type, resource.body)
            if not found:
                continue
            # A Bundle on an NDJSON line holds several resources on one line: `entry` tells them apart.
            key = (origin.path, origin.offset, resource.index, resource.entry)
            yield key, (origin, resource)
            for patient in found:
                yield beam.pvalue.TaggedOutput("by_patient", (patient, key))


def _verdicts(joined: tuple) -> Iterator[tuple]:
    _, grouped = joined
    members = list(grouped["members"])
    if members:
        whole = any(members)
        for key in grouped["resources"]:
            yield key, whole


class _ChooseFn(beam.DoFn):
    def __init__(self, window: Optional[LastUpdatedWindow]):
        self._window = window
        self._unbounded = window.without_since() if window is not None else None

    def process(self, joined: tuple) -> Iterator:
        _, grouped = joined
        verdicts = list(grouped["verdict"])
        if not verdicts:
            return
        window = self._unbounded if any(verdicts) else self._window
        for origin, resource in grouped["resource"]:
            yield from each_resource(ResourceBatch(origin, [resource]), self._admitted(window), InvalidInstant, LAST_UPDATED)

    @staticmethod
    def _admitted(window: Optional[LastUpdatedWindow]):
        def admitted(resource):
            # One updated after transactionTime is reported as a notice, as `CompartmentRule` does.
            return resource if window is None or window.admits_or_late(resource.body, resource.last_updated) else None

        return admitted
