"""The Flex Template's metadata.json is made from the declared pipeline options, and the options round-trip."""

import argparse
import re

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.declarations import MISSING, option_text
from pipelines.export import ExportJob, ExportSettings
from pipelines.options import PIPELINE_OPTIONS, ExportOptions
from scripts import template_metadata


def test_the_committed_metadata_is_what_the_script_writes():
    assert template_metadata.PATH.read_text() == template_metadata.text(), (
        "templates/metadata.json is stale; run `python scripts/template_metadata.py`")


@pytest.mark.parametrize("spec", PIPELINE_OPTIONS, ids=lambda s: s.name)
def test_the_template_accepts_each_default_and_choice(spec):
    parameter = spec.template_parameter()
    assert parameter["label"] and parameter["helpText"]
    values = [*spec.choices, *([] if spec.default is MISSING else [spec.default])]
    for regex in parameter.get("regexes", []):
        for value in values:
            assert re.fullmatch(regex, option_text(value)), (regex, value)


def test_job_round_trips_through_the_options():
    settings = ExportSettings("in/*.ndjson", "out", "bundle", 5, 1000, 64, include_missing_last_updated=False)
    job = ExportJob("job-1", "2020-01-01T00:00:00Z", settings, tenant="acme")
    assert ExportJob.from_options(PipelineOptions(job.to_argv()).view_as(ExportOptions)) == job


def test_boolean_options_are_booleans():
    options = PipelineOptions(["--signed_urls=true", "--include_missing_last_updated=false"]).view_as(ExportOptions)
    assert options.signed_urls is True and options.include_missing_last_updated is False
    assert PipelineOptions([]).view_as(ExportOptions).include_missing_last_updated is True
    # Beam hands a true boolean option on to its workers as the bare flag.
    assert PipelineOptions(["--signed_urls"]).view_as(ExportOptions).signed_urls is True
    parser = argparse.ArgumentParser()
    ExportOptions._add_argparse_args(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--signed_urls=yes"])
