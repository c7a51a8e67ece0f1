"""Losing the Dask scheduler mid-export (issue 26 item 9): one line naming the cause, the job `error` and
resumable, and a resume on another cluster gives the output of an uninterrupted local run.

The clusters are real: a `dask scheduler` process and a `dask worker` process with 2 workers, on
loopback, each in its own process group, killed at the end of the test whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from launcher.stores import ANY_OWNER, open_store
from launcher.tools.sample_data import generate
from tests.server_process import ROOT

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

from tests.test_dask_runner import _contents  # noqa: E402  (after the importorskip: it needs distributed)


def _unassigned_port() -> int:
    """A free port below the kernel's ephemeral range, which no `bind(0)` or outgoing connection of the
    suite's other processes is ever given: once the scheduler there dies, a probe of it is refused
    (a port of the range could be handed to another test's server at once and accept it)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 10000), low), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)


@contextlib.contextmanager
def _cluster(folder: Path, port: int = 0) -> Iterator[tuple[str, subprocess.Popen]]:
    """A scheduler (on `port`, 0: one it picks) and 2 workers on loopback; yields its address and its
    process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True, "cwd": ROOT,
             "env": env}
    folder.mkdir()
    where = ["--scheduler-file", str(folder / "scheduler.json")]
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-dashboard", *where], **quiet)
    workers = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", *where, "--host", "127.0.0.1",
                                "--nworkers", "2", "--nthreads", "1", "--no-dashboard"], **quiet)
    try:
        with distributed.Client(scheduler_file=where[1], timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            address = client.scheduler.address
        yield address, scheduler
    finally:
        _kill(workers)
        _kill(scheduler)


def _wait_for_written_parts(store_dir: Path, export: subprocess.Popen) -> str:
    """The job's id, once its first resources have been written on the workers."""
    deadline = time.monotonic() + 120
    while True:
        jobs = open_store(str(store_dir)).list("default", ANY_OWNER) if (store_dir / "jobs.sqlite3").exists() else []
        if jobs and any(p.exported for p in jobs[0].progress):
            return jobs[0].job_id
        assert export.poll() is None, export.communicate()
        assert time.monotonic() < deadline, "the export never started writing"
        time.sleep(0.05)


def test_a_lost_scheduler_is_named_in_one_line_and_the_job_resumes_on_another_cluster(run_cli, tmp_path):
    source, state, output = tmp_path / "source", tmp_path / "state", tmp_path / "out"
    generate(source, patients=1000, seed=9)
    shape = ["--chunk-bytes", "65536", "--max-lines-per-part", "50"]
    local = run_cli("export", "--source", str(source), "--output", str(tmp_path / "local"), *shape,
                    state_dir=tmp_path / "state-local")
    assert local.code == 0, local.err

    with _cluster(tmp_path / "cluster", _unassigned_port()) as (address, scheduler):
        export = subprocess.Popen(
            [sys.executable, "-m", "launcher", "export", "--state-dir", str(state), "--source", str(source),
             "--output", str(output), *shape, "--dask_npartitions=2", "--runner=DaskRunner",
             f"--dask_client_address={address}"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            job_id = _wait_for_written_parts(state, export)
            _kill(scheduler)
            _, err = export.communicate(timeout=120)
        finally:
            if export.poll() is None:
                export.kill()

    # What a new connection to the dead scheduler's address meets is the machine's, not the engine's: refused,
    # or (seen twice under the full suite on 3.13, even on a port below the ephemeral range) accepted by
    # something else; the line names either exactly.
    assert export.returncode == 1
    met = next((probe for probe in ("connection refused", "connection lost; it accepts connections again")
                if f"stopped answering ({probe});" in err), None)
    assert met is not None, err
    cause = (f"the Dask scheduler at {address} stopped answering ({met});"
             f" `bulk-export resume {job_id}` runs it again")
    assert [line for line in err.splitlines() if not line.startswith("  in-progress:")] == [
        f"bulk-export: job {job_id} failed: {cause} (-v shows Beam's log)"], err
    record = open_store(str(state)).get("default", job_id)
    assert (record.status.value, record.resumable, record.error_message) == ("error", True, cause)
    assert not (output / "default" / job_id).exists()

    with _cluster(tmp_path / "other-cluster") as (other, _):
        resumed = run_cli("resume", job_id, "--runner=DaskRunner", f"--dask_client_address={other}",
                          state_dir=state)
    assert resumed.code == 0, resumed.err
    assert _contents(resumed.manifest()) == _contents(local.manifest())
    assert open_store(str(state)).get("default", job_id).attempt == 2
