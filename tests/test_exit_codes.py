"""How the CLI ends and reports: its exit codes, `--json` errors, a closed stdout, strict
kick-offs by default, a read-only state folder, `cancel`'s wait for a lease, and the
logging of output that cannot be removed.

Real SQLite, the real CLI (in-process through `run_cli`, or as a subprocess), real
processes; no mocks. Tests run as root here, where file modes do not stop writes: the
read-only tests therefore run the CLI in a child that drops to the `nobody` user after its
imports (and check that it really cannot write), or, when not root, under the same modes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from launcher.stores import Lease, SqliteJobStore, now_ms
from pipelines.models import ExportStatus
from tests.helpers import _console, _manifest, _record, job_rows

ROOT = Path(__file__).resolve().parents[1]
EXPORT = "https://ehr.example.org/fhir/$export"
NOBODY = 65534


def _job(store, folder_root: Path, job_id: str, status: ExportStatus, lease: Lease | None = None) -> Path:
    folder = folder_root / "out" / "default" / job_id
    folder.mkdir(parents=True)
    (folder / "Patient-0.ndjson").write_text('{"resourceType":"Patient","id":"p"}\n')
    store.create(_record(job_id, tenant="default").model_copy(update={"output_dir": str(folder)}), lease=lease)
    if status is ExportStatus.ACCEPTED:
        return folder
    store.mark_in_progress(job_id)
    if status is ExportStatus.COMPLETE:
        store.complete(job_id, _manifest([("Patient", 1)]), 0)
    elif status is ExportStatus.ERROR:
        store.fail(job_id, "the source vanished")
    elif status is ExportStatus.CANCELLED:
        store.cancel("default", job_id)
    return folder


# ---- exit codes -------------------------------------------------------------------------------


def test_status_of_a_failed_or_cancelled_job_exits_1_and_still_prints_it(run_cli, tmp_path):
    store = SqliteJobStore(str(tmp_path / "state"))
    for job_id, status in (("failed", ExportStatus.ERROR), ("cancelled", ExportStatus.CANCELLED),
                           ("done", ExportStatus.COMPLETE), ("queued", ExportStatus.ACCEPTED),
                           ("running", ExportStatus.IN_PROGRESS)):
        _job(store, tmp_path, job_id, status)
        expected = 1 if status in (ExportStatus.ERROR, ExportStatus.CANCELLED) else 0
        plain = run_cli("status", job_id)
        assert plain.code == expected and f"job {job_id}: {status.value}" in plain.out, (job_id, plain.err)
        as_json = run_cli("status", job_id, "--json")
        assert as_json.code == expected and json.loads(as_json.out)["status"] == status.value
    assert "error: the source vanished" in run_cli("status", "failed").out


def test_refresh_urls_of_local_output_is_about_the_job_not_a_refusal(run_cli, tmp_path):
    _job(SqliteJobStore(str(tmp_path / "state")), tmp_path, "done", ExportStatus.COMPLETE)
    result = run_cli("manifest", "done", "--refresh-urls")
    assert result.code == 1, result.err
    assert result.err.strip() == ("bulk-export: job done's files are local (file://); --refresh-urls signs only"
                                  " gs:// output")
    assert result.out == ""


def test_the_docs_give_refresh_urls_of_local_output_the_exit_code_it_has(run_cli, tmp_path):
    """docs/deploy.md and the README's table of exit codes say what the CLI does."""
    _job(SqliteJobStore(str(tmp_path / "state")), tmp_path, "done", ExportStatus.COMPLETE)
    code = run_cli("manifest", "done", "--refresh-urls").code
    deploy = " ".join((ROOT / "docs" / "deploy.md").read_text().split())
    assert f"On a job with local output `--refresh-urls` exits {code} " in deploy
    readme_rows = [row for row in (ROOT / "README.md").read_text().splitlines() if "`manifest --refresh-urls`" in row]
    assert [row.split("|")[1].strip() for row in readme_rows] == [str(code)]


def test_refusals_before_any_job_still_exit_2(run_cli, tmp_path):
    assert run_cli("status", "../x").code == 2
    assert run_cli("list", "--job-store", "mysql://h/db").code == 2
    with pytest.raises(SystemExit) as usage:
        run_cli("cleanup", "--ttl", "soon")
    assert usage.value.code == 2


# ---- --json errors ------------------------------------------------------------------------------


def test_status_json_errors_are_json_objects(run_cli, tmp_path):
    unknown = run_cli("status", "3f1c2a9e-0000-4000-8000-000000000000", "--json")
    assert unknown.code == 1 and unknown.out == ""
    assert json.loads(unknown.err) == {"error": "job 3f1c2a9e-0000-4000-8000-000000000000 not found", "code": 1}
    unsafe = run_cli("status", "../etc", "--json")
    error = json.loads(unsafe.err)
    assert unsafe.code == 2 and error["code"] == 2 and error["error"].startswith("refused: ") and "job id" in error["error"]
    with pytest.raises(SystemExit) as usage:  # argparse's own error: still one JSON object
        run_cli("status", "--json", "--bogus")
    assert usage.value.code == 2


def test_a_usage_error_under_json_is_a_json_object(tmp_path):
    done = subprocess.run([*_console(), "status", "--json", "--state-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    error = json.loads(done.stderr)
    assert error["code"] == 2 and "job_id" in error["error"]


# ---- a closed stdout ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["status", "done"], ["status", "done", "--json"], ["list", "--all"]])
def test_a_closed_stdout_ends_quietly_with_141(tmp_path, command):
    state = tmp_path / "state"
    store = SqliteJobStore(str(state))
    _job(store, tmp_path, "done", ExportStatus.COMPLETE)
    for n in range(50):
        store.create(_record(f"queued-{n:03}", tenant="default"))
    # The reader is gone before the command writes anything, as `| head -1` once it has its line.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run([*_console(), command[0], "--state-dir", str(state), *command[1:]], stdout=writer,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert done.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored"
    assert done.returncode == 141


def test_head_takes_the_first_line_of_a_long_list(tmp_path):
    state = tmp_path / "state"
    store = SqliteJobStore(str(state))
    for n in range(3000):  # far more than a pipe holds
        store.create(_record(f"queued-{n:04}", tenant="default"))
    pipeline = subprocess.run(
        ["bash", "-o", "pipefail", "-c", " ".join([*_console(), "list", "--all", "--state-dir", str(state)])
         + " | head -2"], capture_output=True, text=True, timeout=120)
    assert job_rows(pipeline.stdout)[0][0] == "queued-0000"
    assert pipeline.stderr == ""
    assert pipeline.returncode == 141  # with pipefail: the list was cut short, quietly


# ---- strict kick-offs by default (the CLI half of lenient handling) -------------------------------


def test_unsupported_kickoff_parameters_are_refused_unless_lenient(run_cli, sample_dir, tmp_path):
    url = f"{EXPORT}?_type=Patient&foo=bar"
    refused = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"), "--kickoff", url)
    assert refused.code == 2 and refused.err.startswith("bulk-export: refused: foo")
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()
    lenient = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"), "--kickoff", url,
                      "--lenient")
    assert lenient.code == 0, lenient.err
    ignored = [line for line in lenient.err.splitlines() if line.startswith("bulk-export: ignored: ")]
    assert len(ignored) == 1 and ignored[0].startswith("bulk-export: ignored: foo=bar")
    assert "foo=bar" in lenient.manifest()["message"]
    with pytest.raises(SystemExit) as both:
        run_cli("export", "--source", str(sample_dir), "--kickoff", url, "--lenient", "--strict")
    assert both.value.code == 2


# ---- a read-only state folder ----------------------------------------------------------------------

_AS_NOBODY = """
import json, os, sys
from launcher.core.beam_notice import drop_apitools_notice
drop_apitools_notice()  # this script is the entry point: before any Beam import
for name in json.loads(sys.argv[2]):
    __import__(name)
from launcher.cli import main as cli
if os.geteuid() == 0:
    os.setgroups([]); os.setgid(%(id)d); os.setuid(%(id)d)
probe = sys.argv[3]
try:
    open(probe, "w").close()
except PermissionError:
    pass
else:
    sys.exit("the probe file could be written: this is not a read-only test")
sys.exit(cli.main(json.loads(sys.argv[1])))
""" % {"id": NOBODY}


def _cli_without_write_access(argv: list[str], probe: Path, preimport: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Runs the CLI in a child that cannot write `probe`'s folder: as `nobody` when this is root."""
    return subprocess.run([sys.executable, "-c", _AS_NOBODY, json.dumps(argv), json.dumps(list(preimport)),
                           str(probe)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.fixture
def shared_tmp():
    """A folder `nobody` can traverse (pytest's own tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="bulk-export-ro-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def _read_only_store(shared_tmp: Path) -> Path:
    state = shared_tmp / "state"
    store = SqliteJobStore(str(state))
    _job(store, shared_tmp, "done", ExportStatus.COMPLETE)
    # A job whose launcher died: a writable store would mark it failed.
    _job(store, shared_tmp, "orphan", ExportStatus.IN_PROGRESS, lease=Lease("gone:1:00", now_ms() - 60_000))
    for path in (shared_tmp / "out").rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    (state / "jobs.sqlite3").chmod(0o444)
    state.chmod(0o555)
    return state


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_read_only_commands_work_on_a_read_only_store(shared_tmp):
    state = _read_only_store(shared_tmp)
    before = _digest(state)
    probe = state / "probe"
    note = (f"bulk-export: note: the job store in {state} cannot be written here; it is shown as stored"
            " (jobs whose launcher died are not marked failed)")
    listing = _cli_without_write_access(["list", "--all", "--state-dir", str(state)], probe)
    assert listing.returncode == 0, listing.stderr
    assert sorted(row[:2] for row in job_rows(listing.stdout)) == [
        ["done", "complete"], ["orphan", "in-progress"]]
    assert listing.stderr.strip() == note
    status = _cli_without_write_access(["status", "done", "--state-dir", str(state)], probe)
    assert status.returncode == 0 and "job done: complete" in status.stdout, status.stderr
    orphan = _cli_without_write_access(["status", "orphan", "--json", "--state-dir", str(state)], probe)
    assert orphan.returncode == 0 and json.loads(orphan.stdout)["status"] == "in-progress"
    manifest = _cli_without_write_access(["manifest", "done", "--state-dir", str(state)], probe)
    assert manifest.returncode == 0 and json.loads(manifest.stdout)["output"][0]["count"] == 1
    unknown = _cli_without_write_access(["status", "nope", "--state-dir", str(state)], probe)
    assert unknown.returncode == 1 and unknown.stderr.splitlines()[-1] == "bulk-export: job nope not found"
    assert _digest(state) == before  # nothing written: no WAL files, no migration, no recovery


@pytest.mark.parametrize("command", [["cancel", "orphan"], ["delete", "done"], ["cleanup", "--ttl", "1s"],
                                     ["resume", "orphan"]])
def test_writing_commands_on_a_read_only_store_fail_in_one_line(shared_tmp, command):
    state = _read_only_store(shared_tmp)
    before = _digest(state)
    preimport = ("launcher.jobs.attempts",) if command[0] == "resume" else ()  # it imports Beam, from root's home
    done = _cli_without_write_access([command[0], *command[1:], "--state-dir", str(state)], state / "probe",
                                     preimport)
    assert done.returncode == 4, done.stderr
    assert done.stderr == f"bulk-export: cannot use the job store {state}/jobs.sqlite3: it is read-only here\n"
    assert _digest(state) == before


def test_export_into_a_read_only_state_dir_fails_in_one_line(shared_tmp, sample_dir):
    state = _read_only_store(shared_tmp)
    source = shared_tmp / "source"
    shutil.copytree(sample_dir, source)
    source.chmod(0o755)  # readable by `nobody`: an unreadable source is refused first (exit 2), before the store
    out = shared_tmp / "exports"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    done = _cli_without_write_access(
        ["export", "--source", str(source), "--output", str(out), "--state-dir", str(state),
         "--kickoff", f"{EXPORT}?_type=Patient"], state / "probe", preimport=("launcher.jobs.attempts",))
    assert done.returncode == 4, done.stderr
    assert done.stderr == f"bulk-export: cannot use the job store {state}/jobs.sqlite3: it is read-only here\n"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", [["list"], ["status", "x"], ["status", "x", "--json"], ["cleanup"]])
def test_a_state_dir_that_cannot_be_created_fails_in_one_line(shared_tmp, command):
    parent = shared_tmp / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    state = parent / "state"
    done = _cli_without_write_access([*command, "--state-dir", str(state)], parent / "probe")
    assert done.returncode == 4, done.stderr
    [line] = done.stderr.splitlines()
    if "--json" in command:
        assert json.loads(line)["code"] == 4 and str(state) in json.loads(line)["error"]
    else:
        assert line.startswith("bulk-export: ") and str(state) in line and "Traceback" not in done.stderr
    assert not state.exists()


# ---- cancel and a lease ---------------------------------------------------------------------------------


def test_cancel_says_why_it_waits_and_stops_when_the_lease_ends(tmp_path):
    state = tmp_path / "state"
    store = SqliteJobStore(str(state))
    # Held by a launcher on another machine, which stops renewing it: at most 3 s more.
    ends = now_ms() + 3000
    folder = _job(store, tmp_path, "elsewhere", ExportStatus.IN_PROGRESS, lease=Lease("other-host:4242:ab12", ends))
    started = time.monotonic()
    done = subprocess.run([*_console(), "cancel", "elsewhere", "--state-dir", str(state)], capture_output=True,
                          text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 0 and done.stdout == "job elsewhere cancelled\n", done.stderr
    [line] = done.stderr.splitlines()
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ends / 1000))
    assert line.startswith("bulk-export: waiting for the launcher running job elsewhere to stop it")
    assert "other-host:4242:ab12" in line and "may be gone" in line and until in line
    assert elapsed < 15  # the lease's end, not the 30 s cap
    assert not folder.exists()


def test_delete_of_a_just_completed_job_says_why_it_waits_and_stops_when_the_lease_ends(tmp_path):
    """The completion claim leaves the launcher's lease until it has recorded the completion: a launcher on
    another machine that never does is waited for until its lease ends, and `delete` says so."""
    state = tmp_path / "state"
    store = SqliteJobStore(str(state))
    ends = now_ms() + 3000
    folder = _job(store, tmp_path, "finished", ExportStatus.IN_PROGRESS, lease=Lease("other-host:4242:ef56", ends))
    store.complete("finished", _manifest([("Patient", 1)]), 0, keep_lease=True)
    started = time.monotonic()
    done = subprocess.run([*_console(), "delete", "finished", "--state-dir", str(state)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "job finished deleted\n", done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("bulk-export: waiting for the launcher running job finished to record its completion")
    assert "other-host:4242:ef56" in line
    assert 1 < time.monotonic() - started < 15  # until the lease's end, not the 30 s cap
    assert not folder.exists()


def test_cancel_does_not_wait_for_a_launcher_of_this_machine_that_is_gone(tmp_path):
    state = tmp_path / "state"
    store = SqliteJobStore(str(state))
    dead = subprocess.Popen(["true"])
    dead.wait()
    holder = f"{os.uname().nodename}:{dead.pid}:cd34"
    folder = _job(store, tmp_path, "orphan", ExportStatus.IN_PROGRESS, lease=Lease(holder, now_ms() + 25_000))
    started = time.monotonic()
    done = subprocess.run([*_console(), "cancel", "orphan", "--state-dir", str(state)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert time.monotonic() - started < 10  # not the lease's remaining 25 s
    assert not folder.exists()
    assert store.lease("orphan") is None  # released, so cleanup need not wait for it either


# ---- output that cannot be removed is logged and retried ------------------------------------------------

_REMOVE = """
import logging, os, sys
from launcher.core.beam_notice import drop_apitools_notice
drop_apitools_notice()  # this script is the entry point: before any Beam import
from launcher.jobs.attempts import _remove_output
logging.basicConfig(level=logging.WARNING, format="%%(levelname)s %%(message)s", force=True)
if os.geteuid() == 0:
    os.setgroups([]); os.setgid(%(id)d); os.setuid(%(id)d)
_remove_output(sys.argv[1])
print("returned", flush=True)
""" % {"id": NOBODY}

SECRET = '{"resourceType":"Patient","id":"p","name":[{"family":"Secretname"}]}\n'


def _locked_job_dir(shared_tmp: Path) -> Path:
    tenant = shared_tmp / "out" / "acme"
    tenant.mkdir(parents=True)
    job_dir = tenant / "job-7"
    (job_dir / "parts").mkdir(parents=True)
    (job_dir / "parts" / "Patient-0.ndjson").write_text(SECRET)
    for path in (shared_tmp / "out", tenant):
        path.chmod(0o777)
    if os.geteuid() == 0:
        os.chown(tenant, NOBODY, NOBODY)  # nobody may remove job-7 itself once it may empty it
    else:
        (job_dir / "parts").chmod(0o555)
    return job_dir


def _unlock(job_dir: Path) -> None:
    if os.geteuid() == 0:
        for path in [job_dir, *job_dir.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    else:
        (job_dir / "parts").chmod(0o755)


def _remove_as_nobody(job_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _REMOVE, str(job_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_output_that_cannot_be_removed_is_logged_with_the_job_id(shared_tmp):
    job_dir = _locked_job_dir(shared_tmp)
    started = time.monotonic()
    out, err = _remove_as_nobody(job_dir).communicate(timeout=120)
    assert out == "returned\n"  # the job's first error stays the one raised
    warnings = [line for line in err.splitlines() if line.startswith("WARNING ")]
    assert len(warnings) == 4, err
    assert all("job job-7" in line and "PermissionError" in line for line in warnings)
    assert "gave up after 4 attempts" in warnings[-1]
    assert "Secretname" not in err
    assert time.monotonic() - started > 1.5  # it paused between attempts
    assert (job_dir / "parts" / "Patient-0.ndjson").exists()


def test_a_removal_that_fails_once_is_retried(shared_tmp):
    job_dir = _locked_job_dir(shared_tmp)
    remover = _remove_as_nobody(job_dir)
    first = remover.stderr.readline()
    assert "job job-7" in first and "attempt 1 of 4" in first and "PermissionError" in first
    _unlock(job_dir)
    out, err = remover.communicate(timeout=120)
    assert out == "returned\n"
    assert "removed at attempt" in err and "gave up" not in err
    assert not job_dir.exists()
