"""The Flink, Spark and portable launch options: built right, refused clearly, understood by Beam."""

import pytest
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from launcher.cli.arguments import build_parser as _parser
from pipelines.options import LOCAL_RUNNER, prepare_runner
from tests.runner_options import embedded_portable_args, environment_of, flink_args, multi_process_args, spark_args


def test_flink_options_are_what_beams_flink_runner_reads():
    args = flink_args("flink-jm:8081", sdk_image="europe-docker.pkg.dev/p/r/bulk-export:1", parallelism=8)
    assert args == ["--runner=FlinkRunner", "--flink_master=flink-jm:8081", "--parallelism=8",
                    "--environment_type=DOCKER", "--sdk_container_image=europe-docker.pkg.dev/p/r/bulk-export:1"]
    options = PipelineOptions(args).get_all_options(retain_unknown_options=True)
    assert (options["runner"], options["flink_master"], options["parallelism"]) == ("FlinkRunner", "flink-jm:8081", 8)
    assert environment_of(args)["environment_type"] == "DOCKER"


def test_spark_options_are_what_beams_spark_runner_reads():
    args = spark_args("spark://spark-master:7077", environment="LOOPBACK")
    options = PipelineOptions(args).get_all_options(retain_unknown_options=True)
    assert (options["runner"], options["spark_master_url"]) == ("SparkRunner", "spark://spark-master:7077")
    assert spark_args("local[4]", environment="LOOPBACK")[1] == "--spark_master_url=local[4]"


@pytest.mark.parametrize("build, message", [
    (lambda: flink_args("http://jm:8081/", sdk_image="i"), "--flink_master must be host:port"),
    (lambda: flink_args("jm:8081"), "--sdk_container_image"),
    (lambda: flink_args("jm:8081", sdk_image="i", parallelism=0), "--parallelism must be positive"),
    (lambda: spark_args("yarn", sdk_image="i"), "--spark_master_url must be"),
    (lambda: spark_args("local", environment="THREADS"), "--environment_type must be one of"),
    (lambda: multi_process_args(0), "--direct_num_workers must be positive"),
])
def test_bad_runner_settings_are_refused_by_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("args", [flink_args("jm:8081", sdk_image="i"), spark_args("local[2]", sdk_image="i"),
                                  embedded_portable_args(), multi_process_args(3)])
def test_the_cli_passes_runner_options_to_beam_unchanged(args):
    parsed, extra = _parser().parse_known_args(["export", "--source", "s", *args])
    assert extra == args and parsed.source == "s"
    options = PipelineOptions(extra)
    prepare_runner(options)  # none of them is refused or replaced
    expected = next(a.split("=", 1)[1] for a in args if a.startswith("--runner=")) if "--runner" in str(args) else LOCAL_RUNNER
    assert options.view_as(StandardOptions).runner == expected
    if args == multi_process_args(3):
        assert options.view_as(DirectOptions).direct_num_workers == 3


def test_the_image_pins_the_beam_version_of_setup_py_and_runs_pip_check():
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    dockerfile = (root / "templates" / "Dockerfile").read_text()
    setup_version = re.search(r'BEAM_VERSION = "([^"]+)"', (root / "setup.py").read_text()).group(1)
    assert re.search(r"^ARG BEAM_VERSION=(\S+)$", dockerfile, re.M).group(1) == setup_version
    # The ARG is what the image uses: its base SDK image, the Beam it installs, and a build-time check.
    assert re.search(r"^FROM apache/beam_python3\.11_sdk:\$\{BEAM_VERSION\}$", dockerfile, re.M)
    assert '"apache-beam[gcp]==${BEAM_VERSION}"' in dockerfile
    assert "apache_beam.__version__ != '${BEAM_VERSION}'" in dockerfile
    # The image's Python (3.11: the Flex Template launcher base) is one that setup.py allows.
    assert "python311-template-launcher-base" in dockerfile
    low, high = re.search(r'python_requires=">=3\.(\d+),<3\.(\d+)"', (root / "setup.py").read_text()).groups()
    assert int(low) <= 11 < int(high)
    assert "pip check" in dockerfile and "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launcher/jobs/submit.py" in dockerfile
    assert (root / "launcher" / "jobs" / "submit.py").is_file()
