"""Pipeline options: the embedded default runner, refusal of the mode that lost records, job flags."""

import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import create_runner

from pipelines.export import ExportJob
from pipelines.options import LOCAL_RUNNER, ExportOptions, ExportSettings, UnsafeRunnerOptions, prepare_runner


@pytest.mark.parametrize("argv", [[], ["--runner=DirectRunner"]], ids=["unset", "DirectRunner"])
def test_local_runs_use_the_embedded_runner_that_needs_no_network(argv):
    options = PipelineOptions(argv)
    prepare_runner(options)
    assert options.view_as(StandardOptions).runner == LOCAL_RUNNER
    runner = create_runner(LOCAL_RUNNER)  # Beam's FnApiRunner, whose multi-process workers are forked warm
    assert isinstance(runner, FnApiRunner) and type(runner).__name__ == "LocalRunner"


@pytest.mark.parametrize("runner", ["PortableRunner", "DataflowRunner", "FlinkRunner"])
def test_other_runners_pass_through(runner):
    options = PipelineOptions([f"--runner={runner}"])
    prepare_runner(options)
    assert options.view_as(StandardOptions).runner == runner


def test_multi_processing_is_allowed():
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    prepare_runner(options)
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"


def test_multi_threading_is_refused_with_the_reason():
    with pytest.raises(UnsafeRunnerOptions, match=r"multi_threading.*74,955 records in, 74,787 out"):
        prepare_runner(PipelineOptions(["--direct_running_mode=multi_threading"]))


def test_each_attempt_of_a_job_writes_to_its_own_temp_folder_and_round_trips_as_options():
    first = ExportJob("job-1", "2024-01-01T00:00:00Z", ExportSettings(source="s", output="o"), "acme")
    second = ExportJob("job-1", "2024-01-01T00:00:00Z", ExportSettings(source="s", output="o"), "acme", 2)
    assert first.job_dir == second.job_dir and first.temp_dir != second.temp_dir
    assert second.temp_dir.rsplit("/", 1)[1].startswith(".")  # hidden: never read as a source
    assert ExportJob.from_options(PipelineOptions(second.to_argv()).view_as(ExportOptions)) == second


def test_dask_runner_is_ours(run_cli):
    options = PipelineOptions(["--runner=DaskRunner", "--dask_client_address=tcp://127.0.0.1:8786"])
    prepare_runner(options)
    assert options.view_as(StandardOptions).runner == "pipelines.dask_runner.DaskRunner"


@pytest.mark.parametrize("runner", ["apache_beam.runners.dask.dask_runner.DaskRunner"])
def test_beams_own_dask_runner_is_refused_with_the_reason(runner, run_cli, sample_dir, tmp_path):
    with pytest.raises(UnsafeRunnerOptions, match=r"DaskRunner.*loses records"):
        prepare_runner(PipelineOptions([f"--runner={runner}"]))
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"), f"--runner={runner}")
    assert result.code == 2 and "DaskRunner is refused" in result.err
    assert run_cli("list", "--all").out == ""  # refused before any job existed

