"""Pipeline options of an export, made from the declared settings and job options, and the runner checks."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
from typing import Any, Sequence

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipelines.declarations import MISSING, Option, declared, parse_bool
from pipelines.job import ExportJob, Submission
from pipelines.settings import LOCAL_RUNNER, SAFE_RUNNING_MODES, ExportSettings, UnsafeRunnerOptions
from transforms.errors import Refused

__all__ = ["LOCAL_RUNNER", "PIPELINE_OPTIONS", "ExportOptions", "ExportSettings", "UnsafeRunnerOptions",
           "check_runner_args", "prepare_runner", "unknown_beam_args"]

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


def prepare_runner(options: PipelineOptions, say: bool = True) -> None:
    """Picks the embedded local runner by default and refuses options that lose data; `say`: logs the
    local runner's worker count (the run does; a check of the options before it does not)."""
    standard = options.view_as(StandardOptions)
    if standard.runner in (None, "DirectRunner"):
        standard.runner = LOCAL_RUNNER
    _check_runner_name(standard.runner)
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
    if say and direct.direct_running_mode == "multi_processing" and standard.runner == LOCAL_RUNNER:
        _LOG.info("local runner: %s worker processes", direct.direct_num_workers)


def check_runner_args(args: Sequence[str]) -> None:
    """Refuses runner options (`--runner`, `--direct_running_mode`, ...) that `prepare_runner` would refuse.

    No options at all are always accepted: the embedded local runner in its default mode.
    """
    prepare_runner(PipelineOptions(list(args)), say=False)


def _check_runner_name(name: str) -> None:
    """Refuses a `--runner` that Beam could not create: not one of its runner names, ours, or a class path."""
    if name in (LOCAL_RUNNER, DASK_RUNNER):
        return
    if "." in name:  # another class path: imported here, as Beam will
        module, _, cls = name.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), cls, None)
        except ImportError as exc:
            raise Refused(f"--runner={name}: {exc}") from None
        if found is None:
            raise Refused(f"--runner={name}: {module} has no {cls}")
        return
    known = (*StandardOptions.KNOWN_RUNNER_NAMES, "DaskRunner")
    # As Beam's create_runner reads a name: any case, "Runner" optional.
    if {name.lower(), name.lower() + "runner"} & {k.lower() for k in known}:
        return
    guess = difflib.get_close_matches(name, known, n=1)
    raise Refused(f"--runner={name} is not a known runner" + (f"; did you mean {guess[0]}?" if guess else "")
                  + f" (one of {', '.join(sorted(known))}, or a runner's class path)")


def unknown_beam_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """The arguments of `args` that no registered Beam pipeline option takes, and every such option's flag.

    Dask's options are registered when Beam's Dask runner is imported, so it is imported only when a
    `--dask_` flag is left unknown (and dask is installed).
    """
    unknown, names = _parse_beam_args(args)
    if any(a.startswith("--dask_") for a in unknown) and importlib.util.find_spec("dask") is not None:
        importlib.import_module("apache_beam.runners.dask.dask_runner")
        unknown, names = _parse_beam_args(args)
    return unknown, names


def _parse_beam_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    found: dict[str, list[str]] = {}

    def parse(parser) -> None:  # Beam's parser, holding every registered option
        found["unknown"] = parser.parse_known_args(list(args))[1]
        found["names"] = [s for action in parser._actions for s in action.option_strings]

    # retain_unknown_options: Beam then does not log the unknown ones; they are refused instead.
    PipelineOptions(list(args)).get_all_options(add_extra_args_fn=parse, retain_unknown_options=True)
    return found["unknown"], found["names"]
