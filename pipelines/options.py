"""Pipeline options of an export, one to one with `templates/metadata.json`, and the
user's per-run settings whose defaults every entry point (CLI, options) shares."""

from __future__ import annotations

import dataclasses
import logging

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from transforms.compartment import COMPARTMENT_TYPES
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.sources import CHUNK_BYTES, SOURCE_FORMATS
from transforms.gcs import is_gcs
from transforms.urls import DEFAULT_TTL_S, ManifestUrls

_LOG = logging.getLogger(__name__)

# The embedded local runner: Beam's FnApiRunner runs in this process and never
# downloads anything. Beam 2.77's DirectRunner first fetches a Prism binary.
LOCAL_RUNNER = "pipelines.local_runner.LocalRunner"
SAFE_RUNNING_MODES = ("in_memory", "multi_processing")


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """Where to read and write, and the output limits: what a user chooses per run."""

    source: str
    output: str
    source_format: str = "auto"
    max_lines_per_part: int = 100_000
    max_bytes_per_part: int = 256 << 20
    chunk_bytes: int = CHUNK_BYTES
    include_missing_last_updated: bool = True
    # Above this many patients, a Patient/Group export joins by key instead of a side input.
    max_side_input_patients: int = 200_000
    # Types outside the Patient compartment added, where referenced, to Patient/Group exports.
    include_referenced: str = ""
    # GCS output: V4 signed URLs in the manifest, valid url_ttl seconds, signed with this key.
    signed_urls: bool = False
    url_ttl: int = DEFAULT_TTL_S
    signing_key: str = ""

    def __post_init__(self) -> None:
        self.urls  # checks url_ttl
        if self.signed_urls and not is_gcs(self.output):
            raise ValueError(f"--signed-urls needs a gs:// --output, not {self.output!r}")
        for name in self.referenced_types:
            if name not in RESOURCE_TYPES:
                raise ValueError(f"--include-referenced: {name!r} is not an R4 resource type")
            if name in COMPARTMENT_TYPES:
                raise ValueError(
                    f"--include-referenced: {name} is in the Patient compartment, so it is exported already"
                )

    @property
    def urls(self) -> ManifestUrls:
        return ManifestUrls(self.signed_urls, self.url_ttl, self.signing_key)

    @property
    def referenced_types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.strip() for t in self.include_referenced.split(",") if t.strip()))

    @classmethod
    def from_namespace(cls, namespace: object) -> "ExportSettings":
        """Reads the fields from an object with attributes of the same names
        (parsed CLI arguments or `ExportOptions`; booleans may be "true"/"false")."""
        values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)}
        for name in _FLAGS:
            values[name] = values[name] in (True, "true")
        return cls(**values)


DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExportSettings) if f.default is not dataclasses.MISSING}
_FLAGS = [name for name, value in DEFAULTS.items() if isinstance(value, bool)]


class UnsafeRunnerOptions(ValueError):
    """Beam options that are known to lose data; the export refuses them."""


class ExportOptions(PipelineOptions):
    """What one export job needs beyond the runner: source, output, job and limits."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--source", help="NDJSON, Bundle, Avro or Parquet files: a file, glob or folder.")
        parser.add_argument(
            "--source_format",
            default=DEFAULTS["source_format"],
            choices=SOURCE_FORMATS,
            help="How to read source files; auto decides by name, then by content.",
        )
        parser.add_argument("--output", help="Root folder; parts go to <output>/<tenant>/<job_id>/.")
        parser.add_argument("--request", help="The validated ExportRequest as JSON.")
        parser.add_argument("--job_id", help="The job's id (a UUID).")
        parser.add_argument("--tenant", default="default", help="The job's tenant.")
        parser.add_argument("--transaction_time", help="The kickoff instant, frozen.")
        parser.add_argument("--attempt", type=int, default=1, help="The job's attempt: 1, or more once resumed.")
        parser.add_argument(
            "--max_lines_per_part", type=int, default=DEFAULTS["max_lines_per_part"], help="Most lines in one part."
        )
        parser.add_argument(
            "--max_bytes_per_part", type=int, default=DEFAULTS["max_bytes_per_part"], help="Most bytes in one part."
        )
        parser.add_argument(
            "--chunk_bytes", type=int, default=DEFAULTS["chunk_bytes"], help="Bytes of NDJSON read per work item."
        )
        parser.add_argument(
            "--max_side_input_patients",
            type=int,
            default=DEFAULTS["max_side_input_patients"],
            help="Most patients held in memory as a side input; larger sets are joined by key.",
        )
        parser.add_argument(
            "--include_referenced",
            default=DEFAULTS["include_referenced"],
            help="Patient/Group exports: comma-separated types outside the compartment to add where referenced.",
        )
        parser.add_argument(
            "--include_missing_last_updated",
            default="true" if DEFAULTS["include_missing_last_updated"] else "false",
            choices=("true", "false"),
            help="Export resources without meta.lastUpdated even when _since/_until is set.",
        )
        parser.add_argument(
            "--signed_urls",
            default="false",
            choices=("true", "false"),
            help="GCS output: V4 signed URLs in the manifest (requiresAccessToken false) instead of gs:// URLs.",
        )
        parser.add_argument(
            "--url_ttl", type=int, default=DEFAULTS["url_ttl"], help="Seconds a signed URL stays valid (at most 7 days)."
        )
        parser.add_argument(
            "--signing_key",
            default=DEFAULTS["signing_key"],
            help="Service-account JSON key that signs the URLs (a local or gs:// path); default $GOOGLE_APPLICATION_CREDENTIALS.",
        )
        parser.add_argument(
            "--schedule",
            default="",
            help="A named incremental schedule: _since is the last successful run's transactionTime.",
        )
        parser.add_argument(
            "--job_store",
            default="",
            help="Job store the final step marks the job complete in (postgresql://...); needed off this machine.",
        )


def prepare_runner(options: PipelineOptions) -> None:
    """Picks the embedded local runner by default and refuses options that lose data."""
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        standard.runner = LOCAL_RUNNER
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode not in SAFE_RUNNING_MODES:
        raise UnsafeRunnerOptions(
            f"--direct_running_mode={direct.direct_running_mode} is refused: on Beam 2.77 "
            "multi_threading was seen to drop records after a GroupByKey without any error "
            "(74,955 records in, 74,787 out); use in_memory or multi_processing"
        )
    if direct.direct_running_mode == "multi_processing" and standard.runner == LOCAL_RUNNER:
        _LOG.info("local runner: %s worker processes", direct.direct_num_workers)
