"""One export's plan: every decision about it, made once from its request, its job and the job's settings.

Selection comes first: the read keeps only `_type`'s types and, at system
level, the time window (`read_selection`); then `_typeFilter`, and at Patient
and Group level the compartment with the window inside it. Shaping
(`_elements`) comes last, so it applies to every exported resource,
referenced ones too.

At Patient and Group level, Group resources are left out unless `_type` names
Group (a Group's roster names patients outside the export); at Group level
they then go to `GroupRoster` instead of the compartment, which exports only
the kicked-off Group with its roster cut to the covered patients.

At Patient and Group level, a `_type` naming types outside the compartment
brings their supporting resources (`supporting_types`): those the exported
resources reference, and those that reference a covered patient. A `_type`
naming only such types (lenient handling; strict refuses it at kick-off) reads
the compartment to find the references but writes only the supporting resources.

At Patient and Group level, the last step before the write is the patient
guard (`transforms.select.last_guard`): after `_elements` and the referenced
and associated resources, it withholds any resource naming a patient the export
does not cover where the compartment definition does not make it part of a
covered patient's record.

Beam-free data: `pipelines/plan_steps.py` turns it into steps, `pipelines/export.py`
walks it, and the launcher reads its output layout (`output_layout`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple, Optional

from pipelines.models import ExportLevel, ExportRequest
from pipelines.settings import ExportSettings
from transforms.errors import Refused
from transforms.fhir.associated import PROVENANCE, RELEVANT
from transforms.fhir.attachments import ATTACHMENT_PATHS
from transforms.fhir.compartment import COMPARTMENT_TYPES, PATIENT, split_types
from transforms.fhir.elements import ElementsSpec, parse_elements
from transforms.fhir.group import GROUP
from transforms.fhir.search.compiler import TypeFilters, compile_filters
from transforms.fhir.window import LastUpdatedWindow
from transforms.read.pushdown import ReadSelection

if TYPE_CHECKING:
    from pipelines.job import ExportJob

# What a Patient- or Group-level read keeps when `_type` is not given: the compartment, but no
# Group, whose roster would name patients outside the export.
DEFAULT_COMPARTMENT_TYPES = tuple(sorted(COMPARTMENT_TYPES - {GROUP}))


class OutputLayout(NamedTuple):
    """How the output is laid out: parts of one type each, or (organizeOutputBy) blocks of the
    instances of `organized_by`, whose parts and manifest entries name no type."""

    organized_by: Optional[str] = None

    @property
    def typed(self) -> bool:
        """Each part holds one type, which its manifest entry (published early or not) names."""
        return self.organized_by is None

    @property
    def by_patient(self) -> bool:
        """Blocks are Patient compartments, limited to the covered patients (a side input); blocks of
        another type are judged against the source's instances of it instead (`plan_steps.read_blocks`)."""
        return self.organized_by == PATIENT


class CoveredPatients(NamedTuple):
    """Where the covered patients come from, and how the steps take them."""

    file: Optional[str]  # the patients file the launcher wrote; None: resolved from the source in the pipeline
    scope: tuple  # what the pipeline resolves: (level, group id, patient ids, _since)
    joined: bool  # a PCollection to join with by key, else a side input
    # The source's Patient ids not covered, which the patient guard judges an untyped reference by:
    # None when it needs none (system level; Patient level without `patient` covers them all), True
    # joined, False a side input.
    outside: Optional[bool] = None


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """Every decision about one export, made once by `build_plan`."""

    request: ExportRequest
    transaction_time: str
    window: LastUpdatedWindow
    selection: ReadSelection  # what the read keeps
    deletions: Optional[ReadSelection]  # what it keeps of deleted resources; None: none
    type_filters: Optional[TypeFilters]  # `_typeFilter`, compiled
    elements: Optional[ElementsSpec]  # `_elements`, parsed
    patients: Optional[CoveredPatients]  # None: no step needs patients
    compartment: bool  # the covered patients' compartment chooses (Patient and Group level)
    group_roster: bool  # Group level with Group in `_type`: the kicked-off Group, its roster cut
    patient_guard: bool  # Patient and Group level: the last step withholds what names an uncovered patient
    supporting_types: tuple[str, ...]  # read again: where exported resources reference them or they a covered patient
    writes_compartment: bool  # False: the compartment is read only for its references (a `_type` naming none of it)
    provenance: Optional[ReadSelection]  # includeAssociatedData: the Provenances read again
    latest_provenance_only: bool
    layout: OutputLayout
    attachments: bool = False  # an exported type can hold Attachments: the attachment step runs


def build_plan(request: ExportRequest, job: ExportJob, part_needs_bodies: bool = False) -> ExportPlan:
    """The plan of `request` run as `job`; `part_needs_bodies`: the part format reads parsed bodies."""
    settings, now = job.settings, job.transaction_time
    layout = output_layout(request)
    bounds = window(request, now, settings)
    compartment = request.level is not ExportLevel.SYSTEM
    refused = organize_refusal(request, settings)
    if refused:
        raise Refused(f"organizeOutputBy: {refused}")
    supporting = supporting_types(request, settings.referenced_types)
    return ExportPlan(
        request=request,
        transaction_time=now,
        window=bounds,
        selection=read_selection(request, now, settings, part_needs_bodies),
        deletions=deletions_selection(request, now, settings),
        type_filters=compile_filters(request.type_filters, request.types, now) if request.type_filters else None,
        elements=parse_elements(request.elements, request.types) if request.elements else None,
        patients=covered_patients(request, job, layout),
        compartment=compartment,
        group_roster=request.level is ExportLevel.GROUP and GROUP in request.types,
        patient_guard=compartment,
        supporting_types=supporting,
        writes_compartment=writes_compartment(request),
        provenance=ReadSelection.of((PROVENANCE,), bounds.without_since()) if request.include_associated_data
        else None,
        latest_provenance_only=RELEVANT not in request.include_associated_data,
        layout=layout,
        attachments=any(t in ATTACHMENT_PATHS for t in (*(request.types or ATTACHMENT_PATHS), *supporting)),
    )


def supporting_types(request: ExportRequest, referenced: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The types whose supporting resources a Patient- or Group-level export adds: those `_type` names
    outside the compartment, or without `_type` the server's default `referenced` (`--include-referenced`)."""
    if request.level is ExportLevel.SYSTEM:
        return ()
    return split_types(request.types)[1] if request.types else tuple(referenced)


def writes_compartment(request: ExportRequest) -> bool:
    """False when, at Patient or Group level, `_type` names only supporting types: then nothing of the
    compartment is written."""
    return request.level is ExportLevel.SYSTEM or not request.types or bool(split_types(request.types)[0])


def compartment_read_types(request: ExportRequest) -> tuple[str, ...]:
    """The compartment types a Patient- or Group-level read keeps: those `_type` names, or the default
    ones (without `_type`, or when it names only supporting types, whose references they give)."""
    return split_types(request.types)[0] or DEFAULT_COMPARTMENT_TYPES


def output_layout(request: ExportRequest) -> OutputLayout:
    """The output layout `request` asks for (organizeOutputBy)."""
    return OutputLayout(request.organize_output_by)


def organize_refusal(request: ExportRequest, settings: ExportSettings) -> Optional[str]:
    """Why the export cannot be organized as `organizeOutputBy` asks (None: it can, or is not asked).

    Patient blocks are compartments, at every level. A block of another type is headed by
    its instance, so the export must hold that type: at system level, unless `_type` leaves it
    out; at Group level Group when `_type` names it (the kicked-off Group); at Patient and
    Group level a supporting type (outside the compartment) the export adds. The
    launcher refuses the kick-off with this reason, before any job exists.
    """
    by = output_layout(request).organized_by
    if by is None or by == PATIENT:
        return None
    level = request.level
    if level is ExportLevel.SYSTEM:
        if not request.types or by in request.types:
            return None
        return f"_type leaves out {by}, so no block could hold the {by} it is headed by"
    if by == GROUP:
        if level is ExportLevel.GROUP and GROUP in request.types:
            return None
        if level is ExportLevel.PATIENT:
            return "a Patient-level export holds no Group to head blocks with"
        return "a Group-level export holds its Group only when _type names Group"
    if by in supporting_types(request, settings.referenced_types):
        return None
    return (f"{by} is outside the Patient compartment and this {level.value.capitalize()}-level export "
            f"holds none to head blocks with")


def window(request: ExportRequest, transaction_time: str, settings: ExportSettings) -> LastUpdatedWindow:
    return LastUpdatedWindow(transaction_time, request.since, request.until, settings.include_missing_last_updated)


def read_selection(
    request: ExportRequest, transaction_time: str, settings: ExportSettings, part_needs_bodies: bool
) -> ReadSelection:
    """What the read itself keeps: `_type` always, and at system level the time window.

    At Patient and Group level the compartment step applies the window, since a
    Group member added after `_since` gets their whole compartment. Parsed
    bodies are kept only when a later step or the part format reads them.
    """
    system = request.level is ExportLevel.SYSTEM
    organized = not output_layout(request).typed
    later_steps = not system or bool(request.type_filters or request.elements or organized)
    bounds = window(request, transaction_time, settings) if system else None
    types = request.types if system else compartment_read_types(request)
    return ReadSelection.of(types, bounds, keep_bodies=later_steps or part_needs_bodies)


def deletions_selection(request: ExportRequest, transaction_time: str, settings: ExportSettings
                        ) -> Optional[ReadSelection]:
    """What the read keeps of the resources the source marks deleted: None (nothing) without
    `_since`; else the request's types, deleted inside the window, with the deleted bodies.

    `_typeFilter` cannot be judged on a deletion and `_elements` shapes nothing in it: neither
    applies; at Patient and Group level the compartment does (by the deleted version's body, or
    its type and id alone)."""
    if not request.since:
        return None
    system = request.level is ExportLevel.SYSTEM
    types = request.types if system else compartment_read_types(request)
    if not system:
        if not writes_compartment(request):
            return None
        types = [t for t in types if t != GROUP]  # a deleted Group is not one the Group export would name
        if not types:
            return None
    return ReadSelection.of(types, window(request, transaction_time, settings))


def covered_patients(request: ExportRequest, job: ExportJob, layout: OutputLayout) -> Optional[CoveredPatients]:
    """The patients the steps need: at Patient and Group level the covered ones; at system level, for
    output organized by Patient only, every Patient of the source (a `urn:uuid:` reference alone cannot tell a
    patient from a practitioner); else none.

    From the patients file, if the launcher wrote one: a join above `max_side_input_patients`.
    Otherwise (a source too large for the launcher to scan) resolved in the pipeline from the source:
    a join for every patient of the source at Patient level, else a side input. Output organized
    by Patient limits blocks to the covered patients, which needs them as a side input.

    With them, for the patient guard at Group level or with `patient`, the source's other Patient
    ids (`outside`): a side input when the launcher counted at most `max_side_input_patients` of them
    and the covered ones are one too; else (many, or never counted) a join.
    """
    organized = layout.by_patient
    limit = job.settings.max_side_input_patients
    if request.level is ExportLevel.SYSTEM:
        if not organized:
            return None
        level, group_id, patients = ExportLevel.PATIENT, None, ()
    else:
        level, group_id, patients = request.level, request.group_id, request.patients
    # The guard's outside ids, joined whenever the covered ones are, or are many, or were not counted.
    outside_needed = request.level is not ExportLevel.SYSTEM and (level is ExportLevel.GROUP or bool(patients))
    if job.patients_file >= 0:
        joined = job.patients_file > limit and not organized
        outside = (joined or not 0 <= job.outside_patients <= limit) if outside_needed else None
        return CoveredPatients(job.patients_path, (), joined, outside)
    joined = level is ExportLevel.PATIENT and not patients and not organized
    return CoveredPatients(None, (level.value, group_id, patients, request.since), joined,
                           True if outside_needed else None)
