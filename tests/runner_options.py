"""Beam options, for tests, that run an export on a portable runner (Flink, Spark, the embedded
job server) or on the local runner's worker processes.

`bulk-export export ... <these options>` runs the same pipeline there; the
job's state travels only through pipeline options and the job store, so no
runner needs this process's memory or local files (outputs and the job store
must then be shared: gs:// and PostgreSQL).
"""

from __future__ import annotations

import re
from typing import Optional

from apache_beam.options.pipeline_options import PortableOptions

from transforms.errors import Refused

ENVIRONMENTS = ("DOCKER", "LOOPBACK", "PROCESS", "EXTERNAL")
_HOST_PORT = re.compile(r"[A-Za-z0-9.-]+:\d{1,5}\Z")
_SPARK_MASTER = re.compile(r"(spark://[A-Za-z0-9.-]+:\d{1,5}|local(\[(\d+|\*)\])?)\Z")


def _environment(environment: str, sdk_image: Optional[str]) -> list[str]:
    if environment not in ENVIRONMENTS:
        raise Refused(f"--environment_type must be one of {ENVIRONMENTS}, not {environment!r}")
    args = [f"--environment_type={environment}"]
    if environment == "DOCKER":
        if not sdk_image:
            raise Refused("--sdk_container_image: a DOCKER environment needs the worker image (templates/Dockerfile)")
        args.append(f"--sdk_container_image={sdk_image}")
    return args


def _parallelism(parallelism: Optional[int]) -> list[str]:
    if parallelism is None:
        return []
    if parallelism < 1:
        raise Refused(f"--parallelism must be positive, not {parallelism}")
    return [f"--parallelism={parallelism}"]


def flink_args(flink_master: str, *, environment: str = "DOCKER", sdk_image: Optional[str] = None,
               parallelism: Optional[int] = None) -> list[str]:
    """Options for Beam's FlinkRunner against a Flink cluster's REST endpoint `host:port`."""
    if not _HOST_PORT.match(flink_master):
        raise Refused(f"--flink_master must be host:port (the JobManager's REST endpoint), not {flink_master!r}")
    return ["--runner=FlinkRunner", f"--flink_master={flink_master}", *_parallelism(parallelism),
            *_environment(environment, sdk_image)]


def spark_args(spark_master: str, *, environment: str = "DOCKER", sdk_image: Optional[str] = None) -> list[str]:
    """Options for Beam's SparkRunner against `spark://host:port` (or `local[N]`)."""
    if not _SPARK_MASTER.match(spark_master):
        raise Refused(f"--spark_master_url must be spark://host:port or local[N], not {spark_master!r}")
    return ["--runner=SparkRunner", f"--spark_master_url={spark_master}", *_environment(environment, sdk_image)]


def embedded_portable_args() -> list[str]:
    """The portable runner on an in-process job server, workers in this process: portability without a cluster."""
    return ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]


def multi_process_args(workers: int = 2) -> list[str]:
    """The local runner with `workers` worker processes."""
    if workers < 1:
        raise Refused(f"--direct_num_workers must be positive, not {workers}")
    return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


def environment_of(args: list[str]) -> dict:
    """The portable options `args` set, as Beam parses them (what a runner will see)."""
    options = PortableOptions(args)
    return {k: v for k, v in options.get_all_options(drop_default=True).items() if v is not None}
