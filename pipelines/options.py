"""Pipeline options of an export, one to one with `templates/metadata.json`, and the runner checks."""

from __future__ import annotations

import importlib.util
import logging

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipelines.settings import DEFAULTS, LOCAL_RUNNER, SAFE_RUNNING_MODES, ExportSettings, UnsafeRunnerOptions
from transforms.storage.source_formats import SOURCE_FORMATS

__all__ = ["DEFAULTS", "LOCAL_RUNNER", "ExportOptions", "ExportSettings", "UnsafeRunnerOptions", "prepare_runner"]

_LOG = logging.getLogger(__name__)
# `--runner=DaskRunner` is ours; Beam's own, asked for by its full name, is refused (docs/deploy.md says why).
DASK_RUNNER = "pipelines.dask_runner.DaskRunner"
BEAM_DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"


class ExportOptions(PipelineOptions):
    """What one export job needs beyond the runner: source, output, job and limits."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--source", help="NDJSON, Bundle, Avro or Parquet files: a file, glob or folder;"
                            " or a PostgreSQL table: postgresql://user@host:port/db?table=NAME.")
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
            "--source_snapshot", default="",
            help="A PostgreSQL source's exported snapshot, which every reader joins (set by the launcher).")
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
            "--file_url_base",
            default=DEFAULTS["file_url_base"],
            help="Local output served over HTTP: manifest URLs are this base plus <tenant>/<job_id>/<file>.",
        )
        parser.add_argument(
            "--schedule",
            default="",
            help="A named incremental schedule: _since is the last successful run's transactionTime.",
        )
        parser.add_argument(
            "--lease_s",
            type=float,
            default=900.0,
            help="A submitted job's lease in seconds: the pipeline renews it as it reports; once it lapses the job ends in error.",
        )
        parser.add_argument(
            "--audit_dir",
            default="",
            help="Folder of the AuditEvent log; default the SQLite job store's folder, else one JSON line each on stderr.",
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
    if standard.runner == BEAM_DASK_RUNNER:
        raise UnsafeRunnerOptions(
            f"--runner={standard.runner} is refused: Beam 2.77's DaskRunner was seen to mix tagged outputs, "
            "drop what finish_bundle emits, run only the last leaf of the graph and ignore Reshuffle, "
            "so an export on it loses records; --runner=DaskRunner runs ours, which does not"
        )
    if standard.runner in ("DaskRunner", DASK_RUNNER):
        if importlib.util.find_spec("distributed") is None:
            raise UnsafeRunnerOptions("--runner=DaskRunner needs dask.distributed: "
                                      "pip install 'fhir-bulk-export-beam[dask]'")
        from pipelines.dask_runner import missing_internals  # only when asked for: it imports dask

        missing = missing_internals()
        if missing:
            raise UnsafeRunnerOptions(f"--runner=DaskRunner cannot run on this Beam, which lacks {', '.join(missing)}")
        standard.runner = DASK_RUNNER
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode not in SAFE_RUNNING_MODES:
        raise UnsafeRunnerOptions(
            f"--direct_running_mode={direct.direct_running_mode} is refused: on Beam 2.77 "
            "multi_threading was seen to drop records after a GroupByKey without any error "
            "(74,955 records in, 74,787 out); use in_memory or multi_processing"
        )
    if direct.direct_running_mode == "multi_processing" and standard.runner == LOCAL_RUNNER:
        _LOG.info("local runner: %s worker processes", direct.direct_num_workers)
