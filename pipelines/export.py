"""The export pipeline: `build_pipeline()` assembles it, `run()` launches it.

The walk is one way, along the export's plan (`pipelines/plan.py` decides,
`pipelines/plan_steps.py` makes the steps): read chunks -> the steps (`_type`,
`_typeFilter`, the `_since`/`_until`/`transactionTime` window or, at Patient
and Group level, the compartment of the covered patients, then `_elements`;
at Patient and Group level, last, the patient guard) -> write rolling parts where the resources are, and shuffle only the parts'
metadata into the manifest assembly, which runs last.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import apache_beam as beam
import orjson

from pipelines.construction import ExportPipelineOptions, cache_dofn_specs
from pipelines.job import ExportJob
from pipelines.job_sink import JobSink, ReportRead
from pipelines.models import NDJSON_FORMATS, PARQUET_FORMATS, ExportRequest, Manifest, OutputFile
from pipelines.options import ExportOptions, ExportSettings, prepare_runner
from pipelines.plan import OutputLayout, build_plan
from pipelines.plan_steps import (
    add_associated,
    add_supporting,
    apply_steps,
    attachment_steps,
    binaries_selection,
    deletion_steps,
    guard_steps,
    read_blocks,
    read_patients,
    shaping_steps,
    stage_binaries,
    steps,
)
from transforms.errors import Refused
from transforms.read.postgres import unique_resources
from transforms.read.resources import ReadResources
from transforms.select.deletions import DeletionBundles
from transforms.select.duplicates import ReportDuplicates
from transforms.storage.layout import DELETED_DIR
from transforms.storage.pg_source import is_postgres
from transforms.storage.source_files import source_root
from transforms.storage.urls import ManifestUrls
from transforms.write.error_files import WriteErrorFiles
from transforms.write.manifest import AssembleManifest, Completed, FinalFile
from transforms.write.organized import WriteBlocks
from transforms.write.part_formats import NdjsonSink, ParquetSink, PartSink
from transforms.write.parts import WriteParts
from transforms.write.publish import Publisher


class ExportOutputs(NamedTuple):
    """The PCollections a test can assert on."""

    parts: beam.PCollection
    errors: beam.PCollection
    manifest: beam.PCollection


def build_pipeline(
    pipeline: beam.Pipeline,
    request: ExportRequest,
    job: ExportJob,
    sink: Optional[JobSink] = None,
) -> ExportOutputs:
    """Adds the export of `request` to `pipeline` and returns its main PCollections."""
    settings = job.settings
    part_format = part_sink(request.output_format)
    plan = build_plan(request, job, part_format.needs_bodies)
    one_read = binaries_selection(plan, settings)  # the Binaries for attachments found by this same read
    read = pipeline | "Read" >> ReadResources(
        settings.source, settings.source_format, settings.chunk_bytes, selection=plan.selection,
        deletions=plan.deletions, at=job.read_at, binaries=one_read,
    )
    batches, errors = read.batches, [read.errors]
    if sink is not None:
        batches = batches | "ReportRead" >> ReportRead(sink)
    patients = outside = None
    if plan.patients is not None:
        patients, outside = read_patients(pipeline, plan.patients, job.read_at, settings, errors)
    batches = apply_steps(batches, steps(plan, patients), errors)
    blocks = read_blocks(pipeline, plan, job.read_at, settings, patients)  # organizeOutputBy
    # Supporting resources, found before `_elements` may drop a reference.
    referenced = add_supporting(pipeline, batches, plan, job.read_at, settings, errors, patients, blocks)
    # The guard is the last step of each branch that selects (before a Flatten: a side input read after
    # one lost every resource on our DaskRunner), so it judges what every step above let through; then
    # what it lets through has its attachments served.
    # With one read, the resources that name a Binary are served, and written, in a later stage (`later`).
    binaries = stage_binaries(pipeline, plan, job, read.binaries if one_read is not None else None)
    served = attachment_steps(job, binaries, sink, defer=one_read is not None)
    later: list[beam.PCollection] = []
    if plan.writes_compartment:
        batches = apply_steps(batches, [*shaping_steps(plan, blocks), *guard_steps(plan, patients, outside), *served],
                              errors, later=later)
    if referenced is not None:
        referenced = apply_steps(referenced, [*guard_steps(plan, patients, outside), *served], errors,
                                 prefix="Referenced")
        if plan.writes_compartment:
            batches = (batches, referenced) | "WithReferenced" >> beam.Flatten()
        else:  # the compartment was read only for its references
            batches = referenced
    batches = add_associated(pipeline, batches, plan, job.read_at, settings, errors, patients, outside, blocks)
    # Copies of one Type/id that differ are all written; each is reported (metadata only).
    if not _cannot_repeat(request, settings, plan.supporting_types):
        errors.append((batches, *later) | "Duplicates" >> ReportDuplicates(
            f"{job.temp_dir}/duplicates", output_root=settings.output, fence=sink))
    publish = None  # allowPartialManifests: each part final and listed as soon as it is closed
    if request.allow_partial_manifests and sink is not None:
        publish = Publisher(job.job_dir, settings.output, settings.urls, sink, typed=plan.layout.typed)
    if plan.layout.typed:
        write = functools.partial(
            WriteParts, job.temp_dir, settings.max_lines_per_part, settings.max_bytes_per_part, progress=sink,
            sink=part_format, fence=sink, publish=publish, output_root=settings.output)
        parts = batches | "WriteParts" >> write()
        if later:  # each branch written where it is, never flattened (which would hold every resource)
            parts = (parts, *(branch | f"WriteLaterParts{i}" >> write() for i, branch in enumerate(later))
                     ) | "AllParts" >> beam.Flatten()
    else:  # the one shuffle of resource bodies, spilled to disk
        parts = batches | "WriteBlocks" >> WriteBlocks(
            job.temp_dir, settings.max_lines_per_part, settings.max_bytes_per_part, progress=sink, fence=sink,
            publish=publish, output_root=settings.output, by=plan.layout.organized_by)
    deleted_parts = ()
    if plan.deletions is not None:
        deleted = apply_steps(read.deletions, deletion_steps(plan, patients), errors, prefix="Deleted")
        deleted_parts = (deleted | "DeletedBundles" >> DeletionBundles() | "WriteDeleted" >> WriteParts(
            f"{job.temp_dir}/{DELETED_DIR}", settings.max_lines_per_part, settings.max_bytes_per_part, fence=sink,
            output_root=settings.output),)
    errors = tuple(errors) | "Errors" >> beam.Flatten()
    error_parts = errors | "ErrorFiles" >> WriteErrorFiles(
        f"{job.temp_dir}/errors", source_root(settings.source), read.lines, settings.max_lines_per_part,
        settings.max_bytes_per_part, fence=sink, output_root=settings.output,
    )
    manifest = (parts, error_parts, *deleted_parts) | "Manifest" >> AssembleManifest(
        job.job_dir,
        job.temp_dir,
        _ManifestRenderer(request, job.transaction_time, settings.output, settings.urls, plan.layout),
        on_complete=_Completion(sink) if sink is not None else None,
        fence=sink,
        notices=[orjson.dumps(ignored.outcome()) for ignored in request.ignored_parameters],
        output_root=settings.output,
    )
    return ExportOutputs(parts, errors, manifest)


def _cannot_repeat(request: ExportRequest, settings: ExportSettings, supporting: tuple[str, ...]) -> bool:
    """True when no resource can be exported twice: one read of a PostgreSQL table keyed by
    (resource_type, id), and no supporting or associated resources read again."""
    if not is_postgres(settings.source) or supporting or request.include_associated_data:
        return False
    return unique_resources(settings.source)


def part_sink(output_format: str) -> PartSink:
    """The part format `_outputFormat` names: NDJSON or Parquet; any other is refused."""
    if output_format in NDJSON_FORMATS:
        return NdjsonSink()
    if output_format in PARQUET_FORMATS:
        return ParquetSink()
    raise Refused(f"_outputFormat {output_format!r} is not supported; use one of {NDJSON_FORMATS + PARQUET_FORMATS}")


def run(argv: Optional[list[str]] = None, sink: Optional[JobSink] = None) -> beam.runners.runner.PipelineResult:
    """Builds and starts an export from pipeline options; returns without waiting."""
    cache_dofn_specs()
    options = ExportPipelineOptions(argv)
    prepare_runner(options)
    export = options.view_as(ExportOptions)
    if not export.request:
        raise Refused("missing pipeline option: --request")
    request = ExportRequest.model_validate_json(export.request)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, request, ExportJob.from_options(export), sink)
    return pipeline.run()


class _ManifestRenderer:
    """Renders the spec's manifest JSON for a finished export."""

    def __init__(self, request: ExportRequest, transaction_time: str, output_root: str, urls: ManifestUrls,
                 layout: OutputLayout):
        self._request = request
        self._layout = layout
        self._transaction_time = transaction_time
        self._output_root = output_root
        self._urls = urls

    def __call__(self, completed: Completed) -> bytes:
        url = self._urls.namer(self._output_root)
        manifest = Manifest(
            transaction_time=self._transaction_time,
            request=self._request.request_url,
            requires_access_token=self._urls.requires_access_token(self._output_root),
            output_organized_by=self._layout.organized_by,
            output=_entries(completed.output, url, typed=self._layout.typed),
            error=_entries(completed.error, url),
            deleted=_entries(completed.deleted, url),
            message=self._request.ignored_message,
        )
        return orjson.dumps(manifest.to_json_dict(), option=orjson.OPT_INDENT_2) + b"\n"


def _entries(files: list[FinalFile], url: Callable[[str], str], typed: bool = True) -> list[OutputFile]:
    """Manifest entries; `typed=False` for files organized by instances, which name no type (IG v3)."""
    return [OutputFile(type=f.type if typed else None, url=url(f.path), count=f.count) for f in files]


class _Completion:
    """Claims the job's completion through the job sink; False if the claim was lost."""

    def __init__(self, sink: JobSink):
        self._sink = sink

    def __call__(self, manifest: bytes, bad_records: int) -> bool:
        return self._sink.complete(Manifest.model_validate_json(manifest), bad_records)
