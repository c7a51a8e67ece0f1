"""The export pipeline: `build_pipeline()` assembles it, `run()` launches it.

The walk is one way: read chunks -> keep `_type` -> keep the `_since`/`_until`/
`transactionTime` window -> write rolling parts where the resources are, and
shuffle only the parts' metadata into the manifest assembly, which runs last.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple, Optional

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.job_sink import JobSink
from pipelines.models import ExportRequest, Manifest, OutputFile
from pipelines.options import ExportOptions, ExportSettings, prepare_runner
from transforms.manifest import AssembleManifest, Completed, FinalFile
from transforms.parts import WriteParts
from transforms.since import FilterLastUpdated, LastUpdatedWindow
from transforms.sources import ReadResources
from transforms.types import FilterTypes

TEMP_DIR_NAME = ".parts-tmp"


@dataclasses.dataclass(frozen=True)
class ExportJob:
    """Everything a run needs besides the request: which job, when, for whom, and settings."""

    job_id: str
    transaction_time: str
    settings: ExportSettings
    tenant: str = "default"

    @property
    def job_dir(self) -> str:
        return FileSystems.join(self.settings.output, self.tenant, self.job_id)

    @property
    def temp_dir(self) -> str:
        return FileSystems.join(self.job_dir, TEMP_DIR_NAME)

    @classmethod
    def from_options(cls, options: ExportOptions) -> "ExportJob":
        missing = [n for n in ("source", "output", "job_id", "transaction_time") if not getattr(options, n)]
        if missing:
            raise ValueError(f"missing pipeline options: {', '.join('--' + m for m in missing)}")
        return cls(
            options.job_id, options.transaction_time, ExportSettings.from_namespace(options), options.tenant
        )

    def to_argv(self) -> list[str]:
        """The same job as `ExportOptions` flags."""
        values = {"job_id": self.job_id, "transaction_time": self.transaction_time, "tenant": self.tenant}
        values.update(dataclasses.asdict(self.settings))
        return [f"--{name}={_flag(value)}" for name, value in values.items()]


def _flag(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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
    read = pipeline | "Read" >> ReadResources(settings.source, settings.source_format, settings.chunk_bytes)
    batches, errors = read.batches, [read.errors]
    for label, step in _steps(request, job):
        out = batches | label >> step
        batches = out.batches
        errors.append(out.errors)
    parts = batches | "WriteParts" >> WriteParts(
        job.temp_dir, settings.max_lines_per_part, settings.max_bytes_per_part, progress=sink
    )
    errors = tuple(errors) | "Errors" >> beam.Flatten()
    manifest = (parts, errors) | "Manifest" >> AssembleManifest(
        job.job_dir,
        job.temp_dir,
        _ManifestRenderer(request, job.transaction_time),
        settings.max_lines_per_part,
        on_complete=_Completion(sink) if sink is not None else None,
    )
    return ExportOutputs(parts, errors, manifest)


def _steps(request: ExportRequest, job: ExportJob) -> list[tuple[str, beam.PTransform]]:
    """The request's filters, in order, each a `ResourceStep` fused between read and write."""
    steps: list[tuple[str, beam.PTransform]] = []
    if request.types:
        steps.append(("Type", FilterTypes(request.types)))
    window = LastUpdatedWindow(
        job.transaction_time, request.since, request.until, job.settings.include_missing_last_updated
    )
    steps.append(("Since", FilterLastUpdated(window)))
    return steps


def run(argv: Optional[list[str]] = None, sink: Optional[JobSink] = None) -> beam.runners.runner.PipelineResult:
    """Builds and starts an export from pipeline options; returns without waiting."""
    options = PipelineOptions(argv)
    prepare_runner(options)
    export = options.view_as(ExportOptions)
    if not export.request:
        raise ValueError("missing pipeline option: --request")
    request = ExportRequest.model_validate_json(export.request)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, request, ExportJob.from_options(export), sink)
    return pipeline.run()


def file_url(path: str) -> str:
    """An absolute URL for a written file: `file://` for local paths."""
    if FileSystems.get_scheme(path) is None:
        return Path(path).absolute().as_uri()
    return path


class _ManifestRenderer:
    """Renders the spec's manifest JSON for a finished export."""

    def __init__(self, request: ExportRequest, transaction_time: str):
        self._request = request
        self._transaction_time = transaction_time

    def __call__(self, completed: Completed) -> bytes:
        manifest = Manifest(
            transaction_time=self._transaction_time,
            request=self._request.request_url,
            requires_access_token=False,
            output=_entries(completed.output),
            error=_entries(completed.error),
            message=_message(self._request),
        )
        return orjson.dumps(manifest.to_json_dict(), option=orjson.OPT_INDENT_2) + b"\n"


def _entries(files: list[FinalFile]) -> list[OutputFile]:
    return [OutputFile(type=f.type, url=file_url(f.path), count=f.count) for f in files]


def _message(request: ExportRequest) -> Optional[str]:
    if not request.ignored:
        return None
    return "Ignored kickoff parameters (not supported): " + "; ".join(request.ignored)


class _Completion:
    """Hands the written manifest to the job sink."""

    def __init__(self, sink: JobSink):
        self._sink = sink

    def __call__(self, manifest: bytes, bad_records: int) -> None:
        self._sink.complete(Manifest.model_validate_json(manifest), bad_records)
