"""Pipeline options of an export, made from the declared settings and job options, and the runner checks."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipelines.declarations import MISSING, Option, declared, parse_bool
from pipelines.job import ExportJob, Submission
from pipelines.settings import LOCAL_RUNNER, SAFE_RUNNING_MODES, ExportSettings, UnsafeRunnerOptions

__all__ = ["LOCAL_RUNNER", "PIPELINE_OPTIONS", "ExportOptions", "ExportSettings", "UnsafeRunnerOptions",
           "prepare_runner"]

_LOG = logging.getLogger(__name__)
# `--runner=DaskRunner` is ours; Beam's own, asked for by its full name, is refused (docs/deploy.md says why).
DASK_RUNNER = "pipelines.dask_runner.DaskRunner"
BEAM_DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
# Every pipeline option of an export, in the order of the template's parameters.
PIPELINE_OPTIONS: tuple[Option, ...] = (*declared(ExportSettings), *declared(ExportJob), *declared(Submission))


class ExportOptions(PipelineOptions):
    """What one export job needs beyond the runner: its settings, the job, and what submitting it needs."""

    @classmethod
    def _add_argparse_args(cls, parser):
        for spec in PIPELINE_OPTIONS:
            parser.add_argument("--" + spec.name, **_argparse(spec))


def _argparse(spec: Option) -> dict[str, Any]:
    default = None if spec.default is MISSING else spec.default
    if spec.type is bool:
        # "true" or "false"; bare, as Beam hands a true boolean option on to its workers.
        return {"type": parse_bool, "nargs": "?", "const": True, "default": default, "help": spec.help}
    return {"type": spec.type, "default": default, "choices": spec.choices or None, "help": spec.help}


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
