"""A SQLite store locked by another process, with real processes and a real SQLite file.

A store client frozen (SIGSTOP) inside a write transaction makes every other
writer (`export`, `resume`, `cancel`, `cleanup`, the server's maintenance loop)
say in one line that the store is busy (exit 4) within seconds, never hang for
30 s; once the lock is gone the same command succeeds. A launcher holds no
transaction across its pipeline run: stopped mid-export, it blocks no other
store client.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from launcher.stores import DB_NAME, Lease, SqliteJobStore, now_ms
from launcher.tools.sample_data import generate
from tests.helpers import _console, _record, job_rows
from tests.server_process import serve

EXPORT = "https://ehr.example.org/fhir/$export"
# Well under the 30 s a writer used to wait, well over the store's wait (2 s) plus a loaded machine's slack.
WITHIN_S = 15
# A child process that opens a write transaction on the store, says so, and commits on a line from stdin.
_HOLD = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); db.execute('BEGIN IMMEDIATE');"
         " db.execute('UPDATE jobs SET bad_records = bad_records'); print('held', flush=True); sys.stdin.readline();"
         " db.execute('COMMIT'); print('committed', flush=True)")


@contextlib.contextmanager
def frozen_in_a_transaction(state: Path) -> Iterator[Callable[[], None]]:
    """A store client stopped (SIGSTOP) while it holds a write transaction, as a launcher frozen inside one.
    Yields `thaw`, which continues it and has it commit (done on leaving, if not before)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(state / DB_NAME)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def thaw() -> None:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "committed"
            assert holder.wait(30) == 0

    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        yield thaw
        thaw()
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
            holder.wait(30)


def _busy(run_cli, *command: str, state: Path) -> None:
    """`command` ends, within seconds, with exit 4 and one line saying the store is busy."""
    started = time.monotonic()
    done = run_cli(*command, state_dir=state)
    elapsed = time.monotonic() - started
    assert done.code == 4, (command, done.code, done.err)
    assert done.err.count("\n") == 1 and "is busy" in done.err and "Traceback" not in done.err, (command, done.err)
    assert elapsed < WITHIN_S, (command, elapsed)


def test_writers_meeting_a_client_frozen_in_a_transaction_say_busy_then_succeed_once_it_commits(
        run_cli, sample_dir, tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    first = run_cli("export", "--source", str(sample_dir), "--output", str(out), state_dir=state)
    assert first.code == 0, first.err
    [job_id] = [row[0] for row in job_rows(run_cli("list", "--all", state_dir=state).out)]
    with sqlite3.connect(state / DB_NAME) as db:  # as `reap_expired` leaves a job whose launcher died
        db.execute("UPDATE jobs SET status = 'error', resumable = 1, lease_holder = NULL, error_message ="
                   " 'the launcher running this job stopped renewing its lease' WHERE job_id = ?", (job_id,))
    second = ("export", "--source", str(sample_dir), "--output", str(out), "--kickoff", f"{EXPORT}?_type=Patient")

    with frozen_in_a_transaction(state):
        _busy(run_cli, "resume", job_id, state=state)
        _busy(run_cli, *second, state=state)
        _busy(run_cli, "cancel", job_id, state=state)
        _busy(run_cli, "cleanup", "--ttl", "1s", state=state)
    assert len(job_rows(run_cli("list", "--all", state_dir=state).out)) == 1  # the busy export recorded nothing

    resumed = run_cli("resume", job_id, state_dir=state)
    assert resumed.code == 0, resumed.err
    record = json.loads(run_cli("status", job_id, "--json", state_dir=state).out)
    assert (record["status"], record["attempt"]) == ("complete", 2)
    exported = run_cli(*second, state_dir=state)
    assert exported.code == 0, exported.err
    assert run_cli("cleanup", "--ttl", "1h", state_dir=state).code == 0


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory) -> Path:
    """Enough data that, read in tiny chunks, an export runs for a while."""
    out = tmp_path_factory.mktemp("slow")
    generate(out, patients=400, seed=5)
    return out


def test_a_launcher_stopped_while_its_pipeline_runs_blocks_no_other_store_client(run_cli, slow_source, tmp_path):
    """The launcher is stopped (SIGSTOP) mid-export, its pipeline running: it holds no transaction, so
    another tenant's export and a cleanup write the store meanwhile; continued, it completes its job."""
    state, out = tmp_path / "state", tmp_path / "out"
    # A long lease: the launcher renews it once, at the start, so it is not stopped inside that renewal.
    launcher = subprocess.Popen(
        [*_console(), "export", "--source", str(slow_source), "--chunk-bytes", "256", "--output", str(out),
         "--state-dir", str(state), "--lease", "10m"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_in_progress(run_cli, state)
        os.kill(launcher.pid, signal.SIGSTOP)
        try:
            other = run_cli("export", "--tenant", "t2", "--source", str(slow_source), "--output", str(out),
                            "--kickoff", f"{EXPORT}?_type=Patient", state_dir=state)
            assert other.code == 0, other.err
            assert run_cli("cleanup", "--ttl", "1h", state_dir=state).code == 0
        finally:
            os.kill(launcher.pid, signal.SIGCONT)
        _, err = launcher.communicate(timeout=300)
        assert launcher.returncode == 0, err
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(30)


def _wait_in_progress(run_cli, state: Path, timeout_s: float = 120) -> None:
    """Waits until the only job is in progress and its pipeline has reported something."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = job_rows(run_cli("list", "--all", state_dir=state).out)
        if listed:
            record = json.loads(run_cli("status", listed[0][0], "--json", state_dir=state).out)
            if record["status"] == "in-progress" and record["progress"]:
                return
            assert record["status"] in ("accepted", "in-progress"), record
        time.sleep(0.1)
    raise AssertionError("the export never got going")


def test_the_server_maintenance_loop_logs_one_line_while_the_store_is_busy_and_recovers_after(sample_dir, tmp_path):
    """A tick that meets the frozen lock logs one line (no traceback) and the loop goes on: once the lock
    is gone, a later tick ends the job whose launcher stopped renewing its lease."""
    state = tmp_path / "state"
    store = SqliteJobStore(str(state))
    store.create(_record("orphan", tenant="default"), lease=Lease("a-launcher-that-died", now_ms() - 1000))
    store.mark_in_progress("orphan")
    with frozen_in_a_transaction(state) as thaw:
        with serve(sample_dir, tmp_path / "out", state, "--maintenance-interval", "1s") as server:
            deadline = time.monotonic() + 60
            while server.log.read_text().count("maintenance skipped") < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            log = server.log.read_text()
            skipped = [line for line in log.splitlines() if "maintenance skipped" in line]
            assert len(skipped) >= 2 and all("is busy" in line for line in skipped), log
            assert "Traceback" not in log and "maintenance failed" not in log, log
            assert store.status("orphan").value == "in-progress"  # reads are not blocked; nothing was reaped
            thaw()
            deadline = time.monotonic() + 60
            while store.status("orphan").value != "error" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert store.status("orphan").value == "error"
            assert "stopped renewing its lease" in store.get("default", "orphan").error_message


def test_a_kick_off_meeting_a_busy_store_answers_503_with_retry_after_and_no_path(sample_dir, tmp_path):
    """Over HTTP a busy store is the server's passing condition, not an internal error: 503, `Retry-After`,
    an OperationOutcome that never names the store's path; once the lock is gone the same kick-off is 202."""
    state = tmp_path / "state"
    with serve(sample_dir, tmp_path / "out", state) as server:
        kickoff = f"{server.fhir}/Patient/$export?_type=Patient"
        headers = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
        with frozen_in_a_transaction(state) as thaw:
            busy = httpx.get(kickoff, headers=headers, timeout=60)
            assert busy.status_code == 503, busy.text
            assert busy.headers["Retry-After"].isdigit()
            issue = busy.json()["issue"][0]
            assert issue["code"] == "transient" and "busy" in issue["diagnostics"]
            assert str(state) not in busy.text and "internal error" not in busy.text
            thaw()
        assert httpx.get(kickoff, headers=headers, timeout=60).status_code == 202
    assert "Traceback" not in server.log.read_text()
