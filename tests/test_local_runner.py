"""Tests for pipelines.local_runner: multi-process workers forked warm from the driver."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.local_runner import _CLIENT, FOLDER_PREFIX, LocalRunner, WarmWorkers
from tests.runner_options import multi_process_args


class _WhoRuns(beam.DoFn):
    """Appends which process handled each element, and how that process was started."""

    def __init__(self, log: str):
        self._log = log

    def process(self, element):
        cmdline = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode()
        with open(self._log, "a") as f:
            f.write(f"{element}\t{os.getpid()}\t{os.getppid()}\t{cmdline}\n")
        yield element


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_multi_process_workers_are_forked_from_the_driver_and_none_is_left_behind(tmp_path):
    log = tmp_path / "who.tsv"
    with beam.Pipeline(runner=LocalRunner(), options=PipelineOptions(multi_process_args(2))) as pipeline:
        _ = pipeline | beam.Create(range(40)) | beam.Reshuffle() | beam.ParDo(_WhoRuns(str(log)))
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    assert sorted(int(r[0]) for r in rows) == list(range(40))
    workers = {int(r[1]) for r in rows}
    assert os.getpid() not in workers and len(workers) == 2  # two worker processes shared the work
    assert {int(r[2]) for r in rows} == {os.getpid()}  # children of this process
    # Forked: a fresh Beam worker would run `python -m apache_beam.runners.worker.sdk_worker_main`.
    driver = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert {r[3] for r in rows} == {driver}
    assert all(_gone(pid) for pid in workers)


def test_waiting_workers_exit_with_the_pool():
    with WarmWorkers(3) as workers:
        pids = list(workers._pids)
        assert len(pids) == 3 and not any(_gone(pid) for pid in pids)
    assert all(_gone(pid) for pid in pids)


def _client(address: str, fallback: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-S", "-I", str(_CLIENT), address, fallback],
                            env={**os.environ, **env})


def test_the_client_becomes_beams_own_worker_when_no_warm_worker_answers(tmp_path):
    fallback = f"{sys.executable} -c 'import sys; sys.exit(7)'"
    assert _client(str(tmp_path / "nobody.sock"), fallback).wait(timeout=30) == 7


def test_killing_the_client_ends_its_worker():
    with WarmWorkers(1) as workers:
        [pid] = workers._pids
        # A control address nobody serves: the worker waits to connect until its client goes away.
        client = _client(workers.address, "false", CONTROL_API_SERVICE_DESCRIPTOR="url: 'localhost:1'",
                         PIPELINE_OPTIONS="{}", WORKER_ID="w1")
        time.sleep(1.0)
        assert client.poll() is None and os.waitpid(pid, os.WNOHANG) == (0, 0)  # both still running
        client.kill()
        client.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        assert done == pid


class _SamplingPeriod(beam.DoFn):
    """Records the period a state sampler created now (as each bundle's is) gets by default."""

    def __init__(self, log: str):
        self._log = log

    def process(self, element):
        from apache_beam.runners.worker.statesampler import StateSampler

        with open(self._log, "a") as f:
            f.write(f"{StateSampler('probe', None).sampling_period_ms}\n")
        yield element


@pytest.mark.parametrize("args", [["--direct_running_mode=in_memory"], multi_process_args(2)],
                         ids=["in-process", "multi-process"])
def test_bundles_sample_state_often_during_a_local_run_and_beam_default_returns_after(tmp_path, args):
    from apache_beam.runners.worker.statesampler import DEFAULT_SAMPLING_PERIOD_MS, StateSampler

    log = tmp_path / "period.txt"
    with beam.Pipeline(runner=LocalRunner(), options=PipelineOptions(args)) as pipeline:
        _ = pipeline | beam.Create(range(4)) | beam.Reshuffle() | beam.ParDo(_SamplingPeriod(str(log)))
    assert set(log.read_text().split()) == {"10"}  # Beam's 200 ms would end each bundle on a 200 ms grid
    assert StateSampler("after", None).sampling_period_ms == DEFAULT_SAMPLING_PERIOD_MS


_MANY_RUNS = """
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from pipelines.local_runner import LocalRunner
from tests.runner_options import embedded_portable_args, multi_process_args

def run(options, runner=None):
    with beam.Pipeline(runner=runner, options=PipelineOptions(options)) as p:
        _ = p | beam.Create(range(50)) | beam.Reshuffle() | beam.Map(lambda x: x * 2)

run(["--direct_running_mode=in_memory"], LocalRunner())
run(embedded_portable_args())  # gRPC servers and threads in this process before any fork
for _ in range(3):
    run(multi_process_args(2), LocalRunner())
print("done")
"""


def test_one_process_can_run_many_multi_process_exports_one_after_another():
    # Each run forks from a process that earlier runs left with gRPC and Beam thread pool state;
    # run in a child so a hang fails the test instead of stalling the suite.
    done = subprocess.run([sys.executable, "-c", _MANY_RUNS], capture_output=True, text=True, timeout=180,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-3000:]


def test_when_workers_cannot_be_forked_beam_starts_its_own_and_none_is_left_behind(tmp_path, monkeypatch):
    real_fork, forked = os.fork, []

    def fork_once():  # the second fork fails, as when the process limit is reached
        if forked:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        forked.append(real_fork())
        return forked[-1]

    monkeypatch.setattr(os, "fork", fork_once)
    log = tmp_path / "who.tsv"
    with beam.Pipeline(runner=LocalRunner(), options=PipelineOptions(multi_process_args(2))) as pipeline:
        _ = pipeline | beam.Create(range(20)) | beam.Reshuffle() | beam.ParDo(_WhoRuns(str(log)))
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    assert sorted(int(r[0]) for r in rows) == list(range(20))
    assert all("sdk_worker_main" in r[3] for r in rows)  # Beam's own worker processes did the work
    assert forked and forked[0] != 0 and _gone(forked[0])  # the one forked worker was reaped


def test_socket_folders_of_killed_runs_are_swept_and_live_ones_kept(monkeypatch):
    root = Path(tempfile.mkdtemp(prefix="lr-", dir="/tmp"))  # short: a socket path has at most 107 bytes
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = root / f"{FOLDER_PREFIX}{dead.pid}-abc"
    live = root / f"{FOLDER_PREFIX}{os.getppid()}-def"
    other = root / "unrelated-folder"
    try:
        for folder in (stale, live, other):
            folder.mkdir()
            (folder / "workers.sock").touch()
        with WarmWorkers(1) as workers:
            assert Path(workers.address).parent.name.startswith(f"{FOLDER_PREFIX}{os.getpid()}-")
        assert sorted(p.name for p in root.iterdir()) == sorted([live.name, other.name])  # ours is gone too
    finally:
        shutil.rmtree(root)


def test_a_temp_folder_too_deep_for_a_socket_path_still_forks_the_workers_with_their_socket_below_tmp(
        tmp_path, monkeypatch):
    # Before `transforms.storage.socket_folder`, the socket could not be bound and Beam started its own workers.
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    log = tmp_path / "who.tsv"
    with beam.Pipeline(runner=LocalRunner(), options=PipelineOptions(multi_process_args(2))) as pipeline:
        _ = pipeline | beam.Create(range(10)) | beam.Reshuffle() | beam.ParDo(_WhoRuns(str(log)))
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    assert sorted(int(r[0]) for r in rows) == list(range(10))
    driver = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert {r[3] for r in rows} == {driver} and {int(r[2]) for r in rows} == {os.getpid()}  # forked from here
    assert list(deep.iterdir()) == []
    assert not list(Path("/tmp").glob(f"{FOLDER_PREFIX}{os.getpid()}-*"))  # its socket folder was removed


def test_a_missing_beam_internal_falls_back_to_beams_own_workers(tmp_path, monkeypatch, caplog):
    """With one internal gone, the run warns and Beam starts its own (fresh) worker processes."""
    from apache_beam.runners.worker import sdk_worker_main

    from pipelines import local_runner

    assert local_runner.missing_internals() == []
    monkeypatch.delattr(sdk_worker_main, "main")
    assert local_runner.missing_internals() == ["apache_beam.runners.worker.sdk_worker_main.main"]
    log = tmp_path / "who.tsv"
    with caplog.at_level("WARNING", logger="pipelines.local_runner"):
        with beam.Pipeline(runner=LocalRunner(), options=PipelineOptions(multi_process_args(2))) as pipeline:
            _ = pipeline | beam.Create(range(20)) | beam.Reshuffle() | beam.ParDo(_WhoRuns(str(log)))
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    assert sorted(int(r[0]) for r in rows) == list(range(20))
    assert all("apache_beam.runners.worker.sdk_worker_main" in r[3] for r in rows)  # Beam's own command
    assert "lacks apache_beam.runners.worker.sdk_worker_main.main" in caplog.text


class _GcState(beam.DoFn):
    """Records, in the process that reads, whether the read's collector pause is allowed there."""

    def __init__(self, log: str):
        self._log = log

    def process(self, element):
        from transforms.read import gc_pause

        with open(self._log, "a") as f:
            f.write(f"{gc_pause.is_enabled()}\n")
        yield element


@pytest.mark.parametrize("args", [[], multi_process_args(2)])
def test_the_collector_pause_is_allowed_only_in_the_local_runners_processes(tmp_path, args):
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    from transforms.read import gc_pause

    local, stock = tmp_path / "local.txt", tmp_path / "stock.txt"
    with beam.Pipeline(runner=LocalRunner(), options=PipelineOptions(args)) as pipeline:
        _ = pipeline | beam.Create(range(4)) | beam.Reshuffle() | beam.ParDo(_GcState(str(local)))
    with beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions(args)) as pipeline:
        _ = pipeline | beam.Create(range(4)) | beam.Reshuffle() | beam.ParDo(_GcState(str(stock)))
    assert set(local.read_text().split()) == {"True"}
    assert set(stock.read_text().split()) == {"False"}  # any other runner: the interpreter's normal GC
    assert not gc_pause.is_enabled()  # and nothing is left switched on after a local run
