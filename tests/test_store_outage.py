"""A PostgreSQL job store restarted in the middle of an export: the export completes.

The launcher keeps watching through the outage (its lease outlives it), the
workers' progress waits for the next report, their fences and the completion
claim are retried, and the store's pooled connections reconnect.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from launcher.stores import ANY_OWNER, open_store
from launcher.tools.sample_data import generate
from tests import pgserver
from tests.server_process import ROOT


@pytest.fixture(scope="module")
def cluster():
    with pgserver.throwaway() as made:
        if made is None:
            pytest.skip(pgserver.server.reason)
        yield made


def test_an_export_survives_a_restart_of_its_postgresql_store(cluster, tmp_path):
    source = tmp_path / "source"
    generate(source, patients=2000, seed=3)
    store = open_store(cluster.dsn)
    export = subprocess.Popen(
        [sys.executable, "-m", "launcher", "export", "--state-dir", str(tmp_path / "state"),
         "--job-store", cluster.dsn, "--source", str(source), "--output", str(tmp_path / "out"),
         "--chunk-bytes", "65536", "--max-lines-per-part", "500"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:  # until the job runs and has reported progress
            try:
                jobs = store.list("default", ANY_OWNER)
            except Exception:  # the schema is not there yet
                jobs = []
            if jobs and jobs[0].status.value == "in-progress" and jobs[0].progress:
                break
            assert export.poll() is None, export.stdout.read().decode()
            assert time.monotonic() < deadline, "the export never reported progress"
            time.sleep(0.05)
        cluster.restart(down_s=12)  # longer than a store call waits for a connection (10 s)
        output = export.communicate(timeout=300)[0].decode()
    finally:
        if export.poll() is None:
            export.kill()
    assert export.returncode == 0, output
    job = open_store(cluster.dsn).get("default", jobs[0].job_id)
    assert job.status.value == "complete"
    manifest = open_store(cluster.dsn).manifest("default", job.job_id)
    for entry in manifest.output:
        with open(entry.url.removeprefix("file://"), "rb") as f:
            assert sum(1 for _ in f) == entry.count
    assert sum(e.count for e in manifest.output) == sum(p.exported for p in job.progress)
