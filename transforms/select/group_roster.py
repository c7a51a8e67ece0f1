"""Group resources in a Group-level export: only the kicked-off Group, its roster cut to the export.

A Group's `member` list names patients, so every Group that lists one covered
patient is in that patient's compartment, and exporting it would name every
other patient it lists. When a Group-level kickoff names `Group` in `_type`,
`GroupRoster` takes Group resources away from the compartment step: every
Group but the kicked-off one is dropped, and that one keeps only the member
entries naming covered patients (nested Groups are dropped) and is tagged
SUBSETTED (`transforms.fhir.group.covered_roster`). It follows the same window
as the compartment: `_since`, `_until` and `transactionTime`, with `_since`
waived when one of its covered members joined after `_since`.

The covered patients come from the same side input as the compartment's, or,
above `--max-side-input-patients`, as an iterable side input streamed once per
kicked-off Group resource (only the Group's own member ids are kept).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional, Union

import apache_beam as beam
import orjson

from transforms.fhir.compartment import PatientSet
from transforms.fhir.elements import InvalidMeta
from transforms.fhir.group import GROUP, covered_roster, member_patient_ids
from transforms.fhir.instant import InvalidInstant
from transforms.fhir.window import LastUpdatedWindow
from transforms.records import Resource, ResourceBatch
from transforms.steps.resource_step import ResourceStep, StepOutputs, each_resource


class GroupRoster(beam.PTransform):
    """Applies `compartment` to every resource but Groups, and the roster rule to Groups.

    `patients` is the compartment's side input (`AsSingleton` of a `PatientSet`)
    or the joined path's PCollection of `(patient id, whole)`.
    """

    def __init__(
        self,
        compartment: beam.PTransform,
        group_id: str,
        patients: Union[beam.pvalue.AsSideInput, beam.PCollection],
        window: Optional[LastUpdatedWindow] = None,
    ):
        super().__init__()
        self._compartment = compartment
        self._group_id = group_id
        self._patients = patients
        self._window = window

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        split = batches | "SplitGroups" >> beam.ParDo(_SplitGroupsFn()).with_output_types(
            ResourceBatch, groups=ResourceBatch
        ).with_outputs("groups", main="others")
        members = split.others | "Members" >> self._compartment
        patients = self._patients
        if isinstance(patients, beam.PCollection):
            patients = beam.pvalue.AsIter(patients)
        roster = split.groups | "Roster" >> ResourceStep(
            "Group roster", _RosterFn(self._group_id, self._window), patients
        )
        return StepOutputs(
            (members.batches, roster.batches) | "Batches" >> beam.Flatten(),
            (members.errors, roster.errors) | "Errors" >> beam.Flatten(),
        )


class _SplitGroupsFn(beam.DoFn):
    def process(self, batch: ResourceBatch) -> Iterator:
        groups = [r for r in batch.resources if r.type == GROUP]
        if not groups:
            yield batch
            return
        yield beam.pvalue.TaggedOutput("groups", batch.replace(groups))
        yield batch.replace([r for r in batch.resources if r.type != GROUP])


class _RosterFn(beam.DoFn):
    def __init__(self, group_id: str, window: Optional[LastUpdatedWindow]):
        self._group_id = group_id
        self._window = window
        self._unbounded = window.without_since() if window is not None else None

    def process(self, batch: ResourceBatch, patients: Union[PatientSet, Iterable[tuple[str, bool]]]) -> Iterator:
        def keep(resource: Resource) -> Optional[Resource]:
            if resource.body.get("id") != self._group_id:
                return None  # another Group's roster names other patients
            covered, whole = _covered(member_patient_ids(resource.body), patients)
            if not covered:
                return None  # a Group naming no covered patient directly is nobody's compartment here
            window = self._window
            if window is not None and not window.admits_or_late(resource.body, resource.last_updated):
                if not whole or not self._unbounded.admits(resource.body, resource.last_updated):
                    return None
            cut = covered_roster(resource.body, covered)
            return resource if cut is None else resource._replace(raw=_dumps(cut), body=cut)

        return each_resource(batch, keep, (InvalidInstant, InvalidMeta), "Group")


def _covered(candidates: set[str], patients) -> tuple[set[str], bool]:
    """The covered patients among `candidates`, and whether one of them is `whole`."""
    if isinstance(patients, PatientSet):
        covered = candidates & patients.ids
        return covered, not covered.isdisjoint(patients.whole)
    covered, whole = set(), False
    for patient, is_whole in patients:
        if patient in candidates:
            covered.add(patient)
            whole = whole or is_whole
    return covered, whole


def _dumps(body: dict) -> bytes:
    return orjson.dumps(body)
