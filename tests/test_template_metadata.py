"""The Flex Template's metadata.json maps one to one to the pipeline's options."""

import argparse
import json
import re
from pathlib import Path

import pytest

from pipelines.export import ExportJob, ExportSettings
from pipelines.options import ExportOptions

METADATA = json.loads((Path(__file__).parents[1] / "templates" / "metadata.json").read_text())


def _option_actions() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    ExportOptions._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def test_parameters_equal_options_one_to_one():
    names = [p["name"] for p in METADATA["parameters"]]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(_option_actions())


# The template's entry point (`launcher.jobs.submit`) makes these when a scheduler leaves them out.
MADE_BY_SUBMIT = {"job_id", "transaction_time"}


@pytest.mark.parametrize("parameter", METADATA["parameters"], ids=lambda p: p["name"])
def test_parameter_is_documented_and_consistent(parameter):
    action = _option_actions()[parameter["name"]]
    assert parameter["label"] and parameter["helpText"] == action.help
    for regex in parameter.get("regexes", []):
        if action.default is not None:
            assert re.fullmatch(regex, str(action.default)), (regex, action.default)
        for choice in action.choices or ():
            assert re.fullmatch(regex, choice)
    if action.default is None and parameter["name"] not in MADE_BY_SUBMIT:
        assert parameter["isOptional"] is False


def test_job_flags_are_options():
    """The launcher hands a job to the pipeline as these flags; each must be an option."""
    job = ExportJob("j", "2020-01-01T00:00:00Z", ExportSettings(source="s", output="o"))
    flags = {arg.split("=", 1)[0][2:] for arg in job.to_argv()}
    assert flags <= set(_option_actions())


def test_job_round_trips_through_the_options():
    from apache_beam.options.pipeline_options import PipelineOptions

    settings = ExportSettings("in/*.ndjson", "out", "bundle", 5, 1000, 64, include_missing_last_updated=False)
    job = ExportJob("job-1", "2020-01-01T00:00:00Z", settings, tenant="acme")
    assert ExportJob.from_options(PipelineOptions(job.to_argv()).view_as(ExportOptions)) == job
