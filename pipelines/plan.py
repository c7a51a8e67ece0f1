"""Which steps an export request needs, in order, between reading and writing parts.

Selection comes first: the read keeps only `_type`'s types and, at system
level, the time window (`read_selection`); then `_typeFilter`, and at Patient
and Group level the compartment with the window inside it. Shaping
(`_elements`) comes last, so it applies to every exported resource,
referenced ones too.

At Patient and Group level, Group resources are left out unless `_type` names
Group (a Group's roster names patients outside the export); at Group level
they then go to `GroupRoster` instead of the compartment, which exports only
the kicked-off Group with its roster cut to the covered patients.
"""

from __future__ import annotations

from typing import Optional, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines.models import ExportLevel, ExportRequest
from pipelines.settings import ExportSettings
from transforms.fhir.associated import PROVENANCE, RELEVANT
from transforms.fhir.compartment import COMPARTMENT_TYPES
from transforms.fhir.elements import parse_elements
from transforms.fhir.group import GROUP
from transforms.fhir.window import LastUpdatedWindow
from transforms.read.pushdown import ReadSelection
from transforms.read.resources import ReadResources
from transforms.select.add_associated import AddProvenance
from transforms.select.add_referenced import CollectReferences, FilterReferenced
from transforms.select.covered_patients import ReadPatients, ResolvePatients
from transforms.select.group_roster import GroupRoster
from transforms.select.in_compartment import FilterCompartment, JoinCompartment
from transforms.select.subset_elements import SubsetElements
from transforms.select.type_filter import FilterTypeFilter, compile_type_filters
from transforms.storage.patients_file import read_header
from transforms.storage.pg_source import ReadAt
from transforms.write.organized import KeyBlocks

Step = tuple[str, beam.PTransform]
Patients = Union[beam.pvalue.AsSideInput, beam.PCollection, None]
# What a Patient- or Group-level read keeps when `_type` is not given: the compartment, but no
# Group, whose roster would name patients outside the export.
DEFAULT_COMPARTMENT_TYPES = tuple(sorted(COMPARTMENT_TYPES - {GROUP}))


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
    later_steps = not system or bool(request.type_filters or request.elements or request.organize_output_by)
    bounds = window(request, transaction_time, settings) if system else None
    types = request.types or (() if system else DEFAULT_COMPARTMENT_TYPES)
    return ReadSelection.of(types, bounds, keep_bodies=later_steps or part_needs_bodies)


def deletions_selection(request: ExportRequest, transaction_time: str, settings: ExportSettings
                        ) -> Optional[ReadSelection]:
    """What the read keeps of the resources the source marks deleted: None (nothing) without
    `_since`; else the request's types, deleted inside the window, with the deleted bodies."""
    if not request.since:
        return None
    system = request.level is ExportLevel.SYSTEM
    types = request.types or (() if system else DEFAULT_COMPARTMENT_TYPES)
    if not system:
        types = [t for t in types if t != GROUP]  # a deleted Group is not one the Group export would name
        if not types:
            return None
    return ReadSelection.of(types, window(request, transaction_time, settings))


def deletion_steps(request: ExportRequest, patients: Patients) -> list[Step]:
    """The steps a deletion passes before `deleted[]`: at Patient and Group level, the compartment
    (judged by the deleted version's body, or its type and id alone). `_typeFilter` cannot be
    judged on a deletion and `_elements` shapes nothing in it: neither applies."""
    if patients is None:
        return []
    return [("Compartment", _compartment(patients))]


def _compartment(patients: Patients, bounds: Optional[LastUpdatedWindow] = None) -> beam.PTransform:
    """The compartment step for the covered patients: a keyed join for a PCollection, else a side input."""
    if isinstance(patients, beam.PCollection):
        return JoinCompartment(patients, bounds)
    return FilterCompartment(patients, bounds)


def steps(request: ExportRequest, transaction_time: str, settings: ExportSettings, patients: Patients) -> list[Step]:
    """The request's selecting steps after `read_selection` (shaping comes later, once the
    referenced resources are known); `patients` is the covered-patients side input or
    PCollection (None at system level)."""
    chosen = type_filter_steps(request, transaction_time)
    if patients is not None:
        bounds = window(request, transaction_time, settings)
        compartment = _compartment(patients, bounds)
        if request.level is ExportLevel.GROUP and GROUP in request.types:
            compartment = GroupRoster(compartment, request.group_id, patients, bounds)
        chosen.append(("Compartment", compartment))
    return chosen


def type_filter_steps(request: ExportRequest, transaction_time: str) -> list[Step]:
    """The `_typeFilter` step, compiled with `transactionTime` as the `ap` prefix's "now"."""
    if not request.type_filters:
        return []
    queries = [f"{f.resource_type}?{f.query}" for f in request.type_filters]
    return [("TypeFilter", FilterTypeFilter(compile_type_filters(queries, request.types, now=transaction_time)))]


def shaping_steps(request: ExportRequest, patients: Patients = None) -> list[Step]:
    """Steps that change, rather than choose, exported resources: with organizeOutputBy, first their
    blocks are noted (before `_elements`, which may drop a reference; `patients`: the covered ones)."""
    chosen: list[Step] = []
    if request.organize_output_by:
        chosen.append(("Blocks", KeyBlocks(patients if isinstance(patients, beam.pvalue.AsSideInput) else None)))
    if request.elements:
        chosen.append(("Elements", SubsetElements(parse_elements(request.elements, request.types))))
    return chosen


def covered_patients(pipeline: beam.Pipeline, request: ExportRequest, path: str, at: ReadAt,
                     settings: ExportSettings, errors: list) -> Patients:
    """The covered patients, as a side input or a PCollection to join with; their unresolved Group
    members join `errors`.

    From the patients file the launcher wrote, if it did: a join above `max_side_input_patients`.
    Otherwise (a source too large for the launcher to scan) resolved here from the source: a join for
    a Patient-level export without `patient` (every patient of the source), else a side input.
    """
    # Organized output limits blocks to the covered patients, which needs them as a side input.
    organize = bool(request.organize_output_by)
    if FileSystems.exists(path):
        joined = read_header(path).patients > settings.max_side_input_patients and not organize
        covered = pipeline | "Patients" >> ReadPatients(path, as_set=not joined)
    else:
        joined = request.level is ExportLevel.PATIENT and not request.patients and not organize
        scope = (request.level.value, request.group_id, request.patients, request.since)
        covered = pipeline | "Patients" >> ResolvePatients(
            scope, at.transaction_time, settings.source, settings.source_format, settings.chunk_bytes,
            as_set=not joined, snapshot=at.snapshot)
    errors.append(covered.issues)
    return covered.patients if joined else beam.pvalue.AsSingleton(covered.patients)


def apply_steps(batches: beam.PCollection, chosen: list[Step], errors: list, prefix: str = "") -> beam.PCollection:
    """Applies `chosen` in order, adding each step's bad records to `errors`."""
    for label, step in chosen:
        out = batches | prefix + label >> step
        batches = out.batches
        errors.append(out.errors)
    return batches


def add_referenced(
    pipeline: beam.Pipeline,
    batches: beam.PCollection,
    request: ExportRequest,
    at: ReadAt,
    settings: ExportSettings,
    errors: list,
) -> Optional[beam.PCollection]:
    """The resources of `settings.referenced_types` that `batches` reference, shaped (None: none asked).

    `batches` are the selected resources before `_elements`, so a reference an
    element left out still counts. The source is read a second time for them;
    that read's bad lines are already reported by the first read, so only its
    steps' errors are kept.
    """
    types = [t for t in settings.referenced_types if not request.types or t in request.types]
    if not types:
        return None
    keys = beam.pvalue.AsSingleton(batches | "References" >> CollectReferences(types), default_value=frozenset())
    again = pipeline | "ReadReferenced" >> ReadResources(
        settings.source, settings.source_format, settings.chunk_bytes, selection=ReadSelection.of(types), at=at
    )
    chosen = [
        *type_filter_steps(request, at.transaction_time),
        ("Referenced", FilterReferenced(keys, window(request, at.transaction_time, settings))),
        *shaping_steps(request),  # organized: referenced types are in no patient's compartment
    ]
    return apply_steps(again.batches, chosen, errors, prefix="Referenced")


def add_associated(
    pipeline: beam.Pipeline,
    batches: beam.PCollection,
    request: ExportRequest,
    at: ReadAt,
    settings: ExportSettings,
    errors: list,
    patients: Patients = None,
) -> beam.PCollection:
    """`batches` plus the Provenance resources `includeAssociatedData` asks for.

    The source is read again for its Provenances, within `_until` and
    `transactionTime` but whatever `_since` says (an old Provenance of a new
    resource is still its Provenance); `_elements` shapes them like the rest.
    """
    if not request.include_associated_data:
        return batches
    latest_only = RELEVANT not in request.include_associated_data
    bounds = window(request, at.transaction_time, settings).without_since()
    again = pipeline | "ReadProvenance" >> ReadResources(
        settings.source, settings.source_format, settings.chunk_bytes,
        selection=ReadSelection.of((PROVENANCE,), bounds), at=at,
    )
    added = batches | "Associated" >> AddProvenance(again.batches, latest_only)
    added = apply_steps(added, shaping_steps(request, patients), errors, prefix="Associated")
    return (batches, added) | "WithAssociated" >> beam.Flatten()
