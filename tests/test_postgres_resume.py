"""A PostgreSQL export whose launcher is killed: its snapshot dies with it, and `resume` completes the job."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from launcher.tools.sample_data import generate
from tests.helpers import _console, job_rows
from tests.pg_resources import create_table, exported_bodies, insert, ndjson_resources, query, source_url


def _status(state, job_id: str) -> dict:
    done = subprocess.run([*_console(), "status", job_id, "--json", "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout)


def test_a_killed_launchers_postgresql_job_resumes_from_a_new_snapshot(postgres_dsn, tmp_path):
    generate(tmp_path / "data", patients=800, seed=3)
    create_table(postgres_dsn)
    rows = insert(postgres_dsn, ndjson_resources(tmp_path / "data"))
    state, out = tmp_path / "state", tmp_path / "out"
    # Ranges of about 40 rows: an export of a few seconds.
    export = subprocess.Popen([*_console(), "export", "--source", source_url(postgres_dsn), "--output", str(out),
                               "--state-dir", str(state), "--chunk-bytes", "10240", "--lease", "5s"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, job_id = time.monotonic() + 90, None
    while time.monotonic() < deadline and job_id is None:
        listed = job_rows(subprocess.run([*_console(), "list", "--all", "--state-dir", str(state)],
                                         capture_output=True, text=True, timeout=60).stdout)
        if listed and _status(state, listed[0][0])["status"] == "in-progress":
            job_id = listed[0][0]
        time.sleep(0.2)
    assert job_id is not None, export.communicate(timeout=60)
    holders = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bulk-export'"
    assert query(postgres_dsn, holders)[0][0] >= 1  # the launcher holds the snapshot
    export.send_signal(signal.SIGKILL)
    export.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while query(postgres_dsn, holders)[0][0] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert query(postgres_dsn, holders)[0][0] == 0  # the snapshot went with its launcher
    time.sleep(5.5)  # the lease has lapsed
    record = _status(state, job_id)
    assert record["status"] == "error" and record["resumable"], record
    resumed = subprocess.run([*_console(), "resume", job_id, "--state-dir", str(state)],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads(next((out / "default" / job_id).glob("manifest.json")).read_text())
    assert len(exported_bodies(manifest)) == rows and manifest["error"] == []
    assert manifest["transactionTime"] == record["transaction_time"]  # frozen at the first kick-off
