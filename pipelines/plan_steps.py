"""An export plan's steps as Beam transforms, in order, between reading and writing parts."""

from __future__ import annotations

from typing import Optional, Union

import apache_beam as beam

from pipelines.job import ExportJob
from pipelines.plan import CoveredPatients, ExportPlan
from pipelines.settings import ExportSettings
from transforms.fhir.attachments import BINARY
from transforms.read.pushdown import ReadSelection
from transforms.read.resources import ReadResources
from transforms.select.add_associated import AddProvenance
from transforms.select.add_referenced import CollectReferences, FilterReferenced, PatientReferrers
from transforms.select.covered_patients import ReadPatients, ResolvePatients
from transforms.select.group_roster import GroupRoster
from transforms.select.in_compartment import FilterCompartment, JoinCompartment
from transforms.select.last_guard import GuardPatients
from transforms.select.subset_elements import SubsetElements
from transforms.select.type_filter import FilterTypeFilter
from transforms.steps.fence import Fence
from transforms.storage.pg_source import ReadAt, is_postgres
from transforms.storage.source_files import source_root
from transforms.write.attachment_step import AttachmentPlaces, ServeAttachments, StageBinaries
from transforms.write.organized import InstanceIds, KeyBlocks

Step = tuple[str, beam.PTransform]
Patients = Union[beam.pvalue.AsSideInput, beam.PCollection, None]


def read_patients(pipeline: beam.Pipeline, covered: CoveredPatients, at: ReadAt, settings: ExportSettings,
                  errors: list) -> tuple[Patients, Patients]:
    """The covered patients and the source's other Patient ids (None when the plan needs none), each as
    the plan says: a side input or a PCollection to join with; unresolved Group members join `errors`."""
    if covered.file is not None:
        read = pipeline | "Patients" >> ReadPatients(covered.file, as_set=not covered.joined, outside=covered.outside)
    else:
        read = pipeline | "Patients" >> ResolvePatients(
            covered.scope, at.transaction_time, settings.source, settings.source_format, settings.chunk_bytes,
            as_set=not covered.joined, snapshot=at.snapshot, outside=covered.outside)
    errors.append(read.issues)
    patients = read.patients if covered.joined else beam.pvalue.AsSingleton(read.patients)
    if covered.outside is None:
        return patients, None
    return patients, read.outside if covered.outside else beam.pvalue.AsSingleton(read.outside)


def read_blocks(pipeline: beam.Pipeline, plan: ExportPlan, at: ReadAt, settings: ExportSettings,
                patients: Patients) -> Optional[beam.pvalue.AsSideInput]:
    """What `KeyBlocks` judges blocks by (None: the output is not organized): for Patient the
    covered patients, a side input; for another type the ids of the source's instances of it, from
    a read of that type alone (ids only; its bad lines are the first read's to report)."""
    layout = plan.layout
    if layout.typed:
        return None
    if layout.by_patient:
        return patients if isinstance(patients, beam.pvalue.AsSideInput) else None
    again = pipeline | "ReadInstances" >> ReadResources(
        settings.source, settings.source_format, settings.chunk_bytes,
        selection=ReadSelection.of((layout.organized_by,)), at=at,
    )
    ids = again.batches | "InstanceIds" >> InstanceIds(layout.organized_by)
    return beam.pvalue.AsSingleton(ids, default_value=frozenset())


def steps(plan: ExportPlan, patients: Patients) -> list[Step]:
    """The plan's selecting steps after its read selection (shaping comes later, once the
    referenced resources are known); `patients`: what `read_patients` gave (None: none)."""
    chosen = type_filter_steps(plan)
    if plan.compartment:
        compartment = _compartment(patients, plan.window)
        if plan.group_roster:
            compartment = GroupRoster(compartment, plan.request.group_id, patients, plan.window)
        chosen.append(("Compartment", compartment))
    return chosen


def deletion_steps(plan: ExportPlan, patients: Patients) -> list[Step]:
    """The steps a deletion passes before `deleted[]`: at Patient and Group level, the compartment."""
    return [("Compartment", _compartment(patients))] if plan.compartment else []


def _compartment(patients: Patients, bounds=None) -> beam.PTransform:
    """The compartment step for the covered patients: a keyed join for a PCollection, else a side input."""
    if isinstance(patients, beam.PCollection):
        return JoinCompartment(patients, bounds)
    return FilterCompartment(patients, bounds)


def type_filter_steps(plan: ExportPlan) -> list[Step]:
    """The `_typeFilter` step, with the plan's compiled filters."""
    return [("TypeFilter", FilterTypeFilter(plan.type_filters))] if plan.type_filters is not None else []


def shaping_steps(plan: ExportPlan, blocks: Optional[beam.pvalue.AsSideInput] = None) -> list[Step]:
    """Steps that change, rather than choose, exported resources: for organized output, first their
    blocks are noted (before `_elements`, which may drop a reference; `blocks`: what `read_blocks` gave)."""
    chosen: list[Step] = []
    if not plan.layout.typed:
        chosen.append(("Blocks", KeyBlocks(plan.layout.organized_by, blocks)))
    if plan.elements is not None:
        chosen.append(("Elements", SubsetElements(plan.elements)))
    return chosen


def guard_steps(plan: ExportPlan, patients: Patients, outside: Patients = None) -> list[Step]:
    """The last step before the write, when the plan asks for it: the patient guard, with the covered
    patients as the compartment has them (a side input, or a PCollection to join with) and the source's
    other Patient ids as `read_patients` gave them."""
    return [("PatientGuard", GuardPatients(patients, outside))] if plan.patient_guard else []


def binaries_selection(plan: ExportPlan, settings: ExportSettings) -> Optional[ReadSelection]:
    """The Binaries the export's main read finds for the attachment step, when one read can serve:
    the plan serves attachments, the source is files, and the main read's resources are all that is
    written (no supporting or associated resources, no `organizeOutputBy`). None: `stage_binaries`
    reads them apart, or there are none to read."""
    if (not plan.attachments or is_postgres(settings.source) or plan.supporting_types or plan.provenance
            or not plan.writes_compartment or not plan.layout.typed):
        return None
    return _binaries(plan)


def _binaries(plan: ExportPlan) -> ReadSelection:
    """The source's Binaries within `_until` and `transactionTime`, whatever `_since` says (an old
    Binary of a new resource is still its content)."""
    return ReadSelection.of((BINARY,), plan.window.without_since())


def stage_binaries(pipeline: beam.Pipeline, plan: ExportPlan, job: ExportJob,
                   found: Optional[beam.PCollection] = None) -> Optional[beam.pvalue.AsSideInput]:
    """When the plan serves attachments: the source's Binaries, `found` by the main read
    (`binaries_selection`) or read here, staged in the attempt's temporary folder, as a side input
    id -> `Stored`; else None."""
    if not plan.attachments:
        return None
    if found is None:
        settings = job.settings
        found = (pipeline | "ReadBinaries" >> ReadResources(
            settings.source, settings.source_format, settings.chunk_bytes, selection=_binaries(plan),
            at=job.read_at)).batches
    staged = found | "StageBinaries" >> StageBinaries(_staging(job))
    return beam.pvalue.AsSingleton(staged, default_value={})


def attachment_steps(job: ExportJob, binaries: Optional[beam.pvalue.AsSideInput], fence: Optional[Fence],
                     defer: bool = False) -> list[Step]:
    """The attachment step (after the guard: only what is exported has its attachments served), when
    `stage_binaries` gave a side input; `defer` when the main read found the Binaries (see
    `ServeAttachments`: some batches come out `later`)."""
    if binaries is None:
        return []
    settings = job.settings
    places = AttachmentPlaces(source_root(settings.source), job.job_dir, _staging(job), settings.output,
                              settings.urls, settings.max_inline_attachment_bytes, f"{job.temp_dir}/attachments-later")
    return [("Attachments", ServeAttachments(places, binaries, fence, defer))]


def _staging(job: ExportJob) -> str:
    return f"{job.temp_dir}/binaries"


def apply_steps(batches: beam.PCollection, chosen: list[Step], errors: list, prefix: str = "",
                later: Optional[list] = None) -> beam.PCollection:
    """Applies `chosen` in order, adding each step's bad records to `errors`, and the batches a step
    left for a later stage (`StepOutputs.later`: the steps after it never see them) to `later`."""
    for label, step in chosen:
        out = batches | prefix + label >> step
        batches = out.batches
        errors.append(out.errors)
        if out.later is not None:
            later.append(out.later)
    return batches


def add_supporting(
    pipeline: beam.Pipeline,
    batches: beam.PCollection,
    plan: ExportPlan,
    at: ReadAt,
    settings: ExportSettings,
    errors: list,
    patients: Patients = None,
    blocks: Optional[beam.pvalue.AsSideInput] = None,
) -> Optional[beam.PCollection]:
    """The supporting resources of the plan's supporting types, shaped (None: none asked): those that
    `batches` reference, and those that reference a covered patient (`patients`, as the compartment has them);
    `blocks`: what `read_blocks` gave.

    `batches` are the selected resources before `_elements`, so a reference an
    element left out still counts. The source is read a second time for them;
    that read's bad lines are already reported by the first read, so only its
    steps' errors are kept.
    """
    types = plan.supporting_types
    if not types:
        return None
    keys = beam.pvalue.AsSingleton(batches | "References" >> CollectReferences(types), default_value=frozenset())
    again = pipeline | "ReadReferenced" >> ReadResources(
        settings.source, settings.source_format, settings.chunk_bytes, selection=ReadSelection.of(types), at=at
    )
    referrers = None
    if patients is not None:
        referrers = beam.pvalue.AsSingleton(again.batches | "Referrers" >> PatientReferrers(patients, plan.window),
                                            default_value=frozenset())
    chosen = [
        *type_filter_steps(plan),
        ("Referenced", FilterReferenced(keys, plan.window, referrers)),
        *shaping_steps(plan, blocks),
    ]
    return apply_steps(again.batches, chosen, errors, prefix="Referenced")


def add_associated(
    pipeline: beam.Pipeline,
    batches: beam.PCollection,
    plan: ExportPlan,
    at: ReadAt,
    settings: ExportSettings,
    errors: list,
    patients: Patients = None,
    outside: Patients = None,
    blocks: Optional[beam.pvalue.AsSideInput] = None,
) -> beam.PCollection:
    """`batches` plus the Provenance resources `includeAssociatedData` asks for (`blocks`: what
    `read_blocks` gave).

    The source is read again for its Provenances, within `_until` and
    `transactionTime` but whatever `_since` says (an old Provenance of a new
    resource is still its Provenance); `_elements` shapes them like the rest.
    """
    if plan.provenance is None:
        return batches
    again = pipeline | "ReadProvenance" >> ReadResources(
        settings.source, settings.source_format, settings.chunk_bytes, selection=plan.provenance, at=at,
    )
    added = batches | "Associated" >> AddProvenance(again.batches, plan.latest_provenance_only)
    added = apply_steps(added, [*shaping_steps(plan, blocks), *guard_steps(plan, patients, outside)], errors,
                        prefix="Associated")
    return (batches, added) | "WithAssociated" >> beam.Flatten()
