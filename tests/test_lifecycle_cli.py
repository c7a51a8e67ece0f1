"""The job lifecycle end to end with the real CLI, real processes and the real local runner:
cancel from a second process, SIGKILL and resume, the concurrency cap, tenants, cleanup, delete."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from benchmarks.bench_common import tree_pids
from launcher.stores import Lease, SqliteJobStore, now_ms
from tests.helpers import _console, _record, _source_lines, job_rows


def _start(source: Path, out: Path, state: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*_console(), "export", "--source", str(source), "--chunk-bytes", "256", "--output", str(out),
         "--state-dir", str(state), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_running(run_cli, state: Path, timeout: float = 90) -> dict:
    """Polls `status --json` until the only job is in progress and has written something."""
    deadline, record = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        listed = job_rows(run_cli("list", "--all", state_dir=state).out)
        if listed:
            record = json.loads(run_cli("status", listed[0][0], "--json", state_dir=state).out)
            if record["status"] == "in-progress" and record["progress"] and record["fraction"]:
                return record
            if record["status"] != "in-progress" and record["status"] != "accepted":
                break
        time.sleep(0.1)
    raise AssertionError(f"the export never got going: {record}")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _audit(state: Path, tenant: str = "default") -> list[dict]:
    path = state / "audit" / f"{tenant}.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _events(state: Path, job_id: str, tenant: str = "default") -> list[str]:
    found = []
    for event in _audit(state, tenant):
        details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
        if details["job-id"] == job_id:
            found.append(details["lifecycle-event"])
    return found


def test_cancel_from_a_second_process_stops_the_export(run_cli, big_source, tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    export = _start(big_source, out, state)
    record = _wait_running(run_cli, state)
    job_id = record["job_id"]
    assert 0 < record["fraction"] < 1 and sum(p["exported"] for p in record["progress"]) > 0
    cancel = subprocess.run([*_console(), "cancel", job_id, "--state-dir", str(state)],
                            capture_output=True, text=True, timeout=120)
    assert cancel.returncode == 0, cancel.stderr
    _, err = export.communicate(timeout=60)
    assert export.returncode == 1 and f"job {job_id} was cancelled" in err
    assert json.loads(run_cli("status", job_id, "--json", state_dir=state).out)["status"] == "cancelled"
    assert _files(out) == []  # no manifest, no parts, no temporary files
    time.sleep(1)
    assert _files(out) == []  # and nothing keeps writing
    assert _events(state, job_id) == ["kickoff", "cancel"]
    again = run_cli("cancel", job_id, state_dir=state)
    assert again.code == 1 and "cancelled; it cannot be cancelled" in again.err


def test_a_killed_launcher_leaves_an_error_job_that_resumes_to_complete(run_cli, big_source, tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    export = _start(big_source, out, state, "--lease", "5s")
    job_id = _wait_running(run_cli, state)["job_id"]
    export.send_signal(signal.SIGKILL)
    export.communicate(timeout=30)
    time.sleep(1)  # the pipeline process follows its launcher at once: nothing changes any more
    snapshot = [(p, p.stat().st_size) for p in _files(out)]
    time.sleep(1)
    assert [(p, p.stat().st_size) for p in _files(out)] == snapshot
    time.sleep(3.5)  # the lease (5 s) has expired by now
    record = json.loads(run_cli("status", job_id, "--json", state_dir=state).out)
    assert record["status"] == "error" and record["resumable"]
    assert "stopped renewing its lease" in record["error_message"]
    assert _files(out) == []  # an error job keeps no partial output
    resumed = run_cli("resume", job_id, state_dir=state)
    assert resumed.code == 0, resumed.err
    manifest = resumed.manifest()
    expected = {t: len(lines) for t, lines in _source_lines(big_source).items()}
    counts: dict[str, int] = {}
    for entry in manifest["output"]:
        counts[entry["type"]] = counts.get(entry["type"], 0) + entry["count"]
        assert len(Path(entry["url"].removeprefix("file://")).read_bytes().splitlines()) == entry["count"]
    assert counts == expected
    parts = [p.name for p in _files(out) if p.suffix == ".ndjson"]
    assert len(parts) == len(manifest["output"])  # only this attempt's parts
    final = json.loads(run_cli("status", job_id, "--json", state_dir=state).out)
    assert (final["status"], final["attempt"]) == ("complete", 2)
    assert {p["type"]: p["exported"] for p in final["progress"]} == expected
    assert _events(state, job_id) == ["kickoff", "error", "complete"]


def _pipeline_process(launcher: int, timeout: float = 60) -> int:
    """The pid of the launcher's run: a descendant that leads its own process group (`launcher.jobs.process`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in tree_pids(launcher)[1:]:
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(pid) == pid:
                    return pid
        time.sleep(0.1)
    raise AssertionError("the launcher has no run")


def test_a_run_killed_from_outside_fails_its_job_and_leaves_no_lock_file(run_cli, big_source, tmp_path):
    state, out, temp = tmp_path / "state", tmp_path / "out", tmp_path / "temp"
    temp.mkdir()
    export = subprocess.Popen(
        [*_console(), "export", "--source", str(big_source), "--chunk-bytes", "256", "--output", str(out),
         "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(temp)})
    try:
        job_id = _wait_running(run_cli, state)["job_id"]
    except AssertionError:
        export.kill()
        raise AssertionError(export.communicate()[1]) from None
    [lock] = temp.glob("bulk-export-last-step-*")  # the run's last step's lock
    assert lock.exists()
    os.kill(_pipeline_process(export.pid), signal.SIGKILL)  # the run alone, not its launcher
    _, err = export.communicate(timeout=60)
    assert export.returncode == 1
    assert err.strip().splitlines()[-1].startswith(f"bulk-export: job {job_id} failed: the pipeline process died"), err
    assert json.loads(run_cli("status", job_id, "--json", state_dir=state).out)["status"] == "error"
    assert list(temp.glob("bulk-export-last-step-*")) == []


@pytest.mark.parametrize("workers", [[], ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]])
def test_an_export_runs_with_a_temporary_folder_too_long_for_a_socket(run_cli, sample_dir, tmp_path, workers):
    # The fork server's and the workers' sockets go to /tmp instead (`transforms.storage.socket_folder`);
    # before, the command ended in a traceback: "OSError: AF_UNIX path too long".
    temp = tmp_path / ("t" * max(1, 110 - len(str(tmp_path))))
    temp.mkdir()
    assert len(str(temp)) > 107
    done = subprocess.run([*_console(), "export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                           "--state-dir", str(tmp_path / "state"), *workers], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TMPDIR": str(temp)})
    assert done.returncode == 0, done.stderr
    [manifest] = [line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("manifest: ")]
    exported = sum(entry["count"] for entry in json.loads(Path(manifest).read_text())["output"])
    assert exported == sum(len(lines) for lines in _source_lines(sample_dir).values())
    assert list(temp.iterdir()) == []


def test_the_fifth_concurrent_kickoff_is_refused_with_nothing_started(run_cli, sample_dir, tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    store = SqliteJobStore(str(state))
    for n in range(4):  # four jobs held by a live launcher (this test)
        store.create(_record(f"running-{n}", tenant="default"), lease=Lease("test", now_ms() + 600_000))
    result = run_cli("export", "--source", str(sample_dir), "--output", str(out), state_dir=state)
    assert result.code == 3
    assert "too many concurrent exports for tenant default" in result.err
    assert len(job_rows(run_cli("list", "--all", state_dir=state).out)) == 4
    assert not out.exists() and _audit(state) == []
    other = run_cli("export", "--source", str(sample_dir), "--output", str(out), "--tenant", "other", state_dir=state)
    assert other.code == 0, other.err


def test_a_tenant_source_layout_and_hidden_jobs(run_cli, tmp_path):
    for tenant, n in (("clinic-a", 3), ("clinic-b", 5)):
        (tmp_path / "src" / tenant).mkdir(parents=True)
        lines = [json.dumps({"resourceType": "Patient", "id": f"{tenant}-{i}"}) for i in range(n)]
        (tmp_path / "src" / tenant / "Patient.ndjson").write_text("\n".join(lines) + "\n")
    source = str(tmp_path / "src" / "{tenant}")
    result = run_cli("export", "--source", source, "--output", str(tmp_path / "out"), "--tenant", "clinic-a",
                     "--owner", "alice")
    assert result.code == 0, result.err
    [entry] = result.manifest()["output"]
    assert entry["count"] == 3 and entry["url"].endswith("/out/clinic-a/" + result.manifest_path.parent.name
                                                          + "/Patient-0.ndjson")
    job_id = result.manifest_path.parent.name
    for args in (["--tenant", "clinic-b"], ["--tenant", "clinic-a", "--owner", "bob"]):
        for command in ("status", "manifest", "cancel", "delete", "resume"):
            hidden = run_cli(command, job_id, *args)
            assert hidden.code == 1 and hidden.err.strip() == f"bulk-export: job {job_id} not found", (command, args)
    assert result.manifest_path.exists()


@pytest.mark.parametrize("args", [
    ["status", "../../etc"], ["delete", "/etc/passwd"], ["cancel", ".."], ["status", "x", "--tenant", "../a"],
    ["status", "x", "--tenant", "/abs"],
])
def test_path_traversal_is_refused(run_cli, args):
    result = run_cli(*args)
    assert result.code == 2 and "refused" in result.err and ("job id" in result.err or "--tenant" in result.err)


def _age(state: Path, job_id: str, hours: float) -> None:
    with sqlite3.connect(state / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET ended_ms = ? WHERE job_id = ?", (now_ms() - int(hours * 3600_000), job_id))


def test_cleanup_removes_exactly_the_expired_jobs_of_every_tenant(run_cli, sample_dir, tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    jobs = {}
    for name, tenant in (("old-a", "a"), ("old-b", "b"), ("fresh", "a")):
        result = run_cli("export", "--source", str(sample_dir), "--output", str(out), "--tenant", tenant,
                         state_dir=state)
        assert result.code == 0, result.err
        jobs[name] = (tenant, result.manifest_path.parent)
    _age(state, jobs["old-a"][1].name, 25)
    _age(state, jobs["old-b"][1].name, 48)
    SqliteJobStore(str(state)).create(_record("queued", tenant="a"), lease=Lease("test", now_ms() + 600_000))
    with pytest.raises(SystemExit) as refused:  # argparse's usage error, naming --ttl
        run_cli("cleanup", "--ttl", "soon", state_dir=state)
    assert refused.value.code == 2
    # Issue 14 item 3: cleanup is of --tenant's jobs unless --all-tenants asks for the sweep.
    result = run_cli("cleanup", "--ttl", "24h", "--batch-size", "1", "--all-tenants", state_dir=state)
    assert result.code == 0 and "removed 2 expired jobs" in result.out
    for name, (tenant, folder) in jobs.items():
        status = run_cli("status", folder.name, "--tenant", tenant, state_dir=state)
        assert (status.code == 0) is (name == "fresh") and folder.exists() is (name == "fresh")
    assert run_cli("status", "queued", "--tenant", "a", state_dir=state).code == 0
    assert _events(state, jobs["old-b"][1].name, "b") == ["kickoff", "complete", "cleanup"]


def test_delete_removes_output_and_records(run_cli, sample_dir, tmp_path):
    state = tmp_path / "state"
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"), "--owner", "alice",
                     state_dir=state)
    job_id = result.manifest_path.parent.name
    assert run_cli("delete", job_id, "--owner", "bob", state_dir=state).code == 1
    deleted = run_cli("delete", job_id, "--owner", "alice", state_dir=state)
    assert deleted.code == 0, deleted.err
    assert not result.manifest_path.parent.exists()
    gone = run_cli("status", job_id, state_dir=state)
    assert gone.code == 1 and "not found" in gone.err
    assert _events(state, job_id) == ["kickoff", "complete", "delete"]


def test_progress_is_plain_lines_when_not_a_terminal(big_source, tmp_path):
    export = _start(big_source, tmp_path / "out", tmp_path / "state")
    _, err = export.communicate(timeout=300)
    assert export.returncode == 0, err
    lines = [line for line in err.splitlines() if line.startswith("  in-progress:")]
    assert lines and "\r" not in err
    assert all(line.endswith("resources written") and "%" in line for line in lines)
    assert os.path.exists(tmp_path / "state" / "audit" / "default.ndjson")
