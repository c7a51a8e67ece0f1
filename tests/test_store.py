"""The job store conformance suite, run on SQLite and on a real PostgreSQL: lifecycle,
guarded transitions, isolation, processes. More in `test_store_lifecycle.py`."""

from __future__ import annotations

import multiprocessing
import sqlite3
import uuid

import pytest

from launcher.jobs.store_sink import DB_NAME, InvalidJobState, JobNotFound, SqliteJobStore, StoreJobSink
from launcher.stores import open_store
from pipelines.models import ExportStatus
from tests.helpers import TX, _manifest, _progress, _record, store  # noqa: F401  (a fixture)


@pytest.fixture
def running(store) -> str:
    store.create(_record("job-1"))
    store.mark_in_progress("job-1")
    return "job-1"


def test_create_is_accepted(store):
    store.create(_record("job-1", owner="alice"))
    record = store.get("acme", "job-1")
    assert record.status is ExportStatus.ACCEPTED
    assert (record.owner, record.transaction_time, record.request.types) == ("alice", TX, ("Patient",))
    assert record.started_at is None and record.progress == []


def test_sqlite_store_is_a_real_sqlite_file(tmp_path):
    SqliteJobStore(str(tmp_path / "state")).create(_record("job-1"))
    with sqlite3.connect(tmp_path / "state" / DB_NAME) as db:
        assert db.execute("SELECT job_id, status FROM jobs").fetchall() == [("job-1", "accepted")]


def test_mark_in_progress_sets_status_and_start_time(store, running):
    record = store.get("acme", running)
    assert record.status is ExportStatus.IN_PROGRESS
    assert record.started_at is not None


def test_add_progress_accumulates_per_type(store, running):
    store.add_progress(running, {"Patient": 3, "Observation": 10})
    store.add_progress(running, {"Patient": 4})
    store.add_progress(running, {"Observation": 5, "Condition": 1})
    assert _progress(store.get("acme", running)) == {"Patient": 7, "Observation": 15, "Condition": 1}


def test_complete_replaces_progress_with_manifest_counts(store, running):
    store.add_progress(running, {"Patient": 999, "Encounter": 5})
    manifest = _manifest([("Patient", 40), ("Patient", 2), ("Observation", 17)])
    store.complete(running, manifest, bad_records=3)
    record = store.get("acme", running)
    assert record.status is ExportStatus.COMPLETE
    assert record.completed_at is not None and record.bad_records == 3
    # Parts of one type add up; a type only in the running progress disappears.
    assert _progress(record) == {"Patient": 42, "Observation": 17}
    assert store.manifest("acme", running) == manifest


def test_progress_reported_after_completion_is_ignored(store, running):
    store.complete(running, _manifest([("Patient", 4)]), bad_records=0)
    store.add_progress(running, {"Patient": 2, "Observation": 1})
    assert _progress(store.get("acme", running)) == {"Patient": 4}


def test_complete_twice_is_refused(store, running):
    store.complete(running, _manifest([("Patient", 1)]), 0)
    with pytest.raises(InvalidJobState):
        store.complete(running, _manifest([("Patient", 5)]), 0)
    assert _progress(store.get("acme", running)) == {"Patient": 1}


def test_fail_after_complete_is_refused(store, running):
    store.complete(running, _manifest([("Patient", 1)]), 0)
    with pytest.raises(InvalidJobState):
        store.fail(running, "too late")
    record = store.get("acme", running)
    assert record.status is ExportStatus.COMPLETE and record.error_message is None


def test_complete_before_in_progress_is_refused(store):
    store.create(_record("job-1"))
    with pytest.raises(InvalidJobState):
        store.complete("job-1", _manifest([("Patient", 1)]), 0)
    assert store.get("acme", "job-1").status is ExportStatus.ACCEPTED


def test_fail_records_message_and_has_no_manifest(store, running):
    store.fail(running, "source missing")
    record = store.get("acme", running)
    assert (record.status, record.error_message) == (ExportStatus.ERROR, "source missing")
    with pytest.raises(InvalidJobState):
        store.manifest("acme", running)
    with pytest.raises(InvalidJobState):
        store.mark_in_progress(running)


def test_transitions_of_an_unknown_job_are_not_found(store):
    with pytest.raises(JobNotFound):
        store.mark_in_progress("nope")
    with pytest.raises(JobNotFound):
        store.fail("nope", "x")
    with pytest.raises(JobNotFound):
        store.add_progress("nope", {"Patient": 1})


def test_tenant_and_owner_isolation(store):
    store.create(_record("job-1", tenant="acme", owner="alice"))
    with pytest.raises(JobNotFound):
        store.get("other", "job-1")
    with pytest.raises(JobNotFound):
        store.get("acme", "job-1", owner="bob")
    with pytest.raises(JobNotFound):
        store.manifest("other", "job-1")
    assert store.get("acme", "job-1", owner="alice").job_id == "job-1"
    assert store.list("other", include_terminal=True) == []
    assert store.list("acme", owner="bob", include_terminal=True) == []


def test_list_with_and_without_terminal_jobs(store):
    for n, job_id in enumerate(("a", "b", "c", "d")):
        store.create(_record(job_id, owner="alice" if job_id != "d" else "bob", created=f"2024-05-01T12:00:0{n}.000Z"))
    store.mark_in_progress("b")
    store.mark_in_progress("c")
    store.complete("c", _manifest([("Patient", 1)]), 0)
    store.fail("d", "boom")
    assert [r.job_id for r in store.list("acme")] == ["a", "b"]
    assert [r.job_id for r in store.list("acme", include_terminal=True)] == ["a", "b", "c", "d"]
    assert [r.job_id for r in store.list("acme", owner="alice", include_terminal=True)] == ["a", "b", "c"]
    assert [r.status for r in store.list("acme", include_terminal=True)] == [
        ExportStatus.ACCEPTED, ExportStatus.IN_PROGRESS, ExportStatus.COMPLETE, ExportStatus.ERROR,
    ]


def test_data_survives_reopening(tmp_path, store, running):
    store.add_progress(running, {"Patient": 2})
    manifest = _manifest([("Patient", 2)])
    store.complete(running, manifest, 1)
    reopened = open_store(store.url)
    record = reopened.get("acme", running)
    assert (record.status, record.bad_records, _progress(record)) == (ExportStatus.COMPLETE, 1, {"Patient": 2})
    assert reopened.manifest("acme", running) == manifest


def _report_progress(store_url: str, job_id: str, barrier, rounds: int) -> None:
    sink = StoreJobSink(store_url, job_id)
    barrier.wait()
    for n in range(rounds):
        sink.progress({"Observation": 3, "Patient": 1 if n % 2 else 0})


def test_sinks_in_separate_processes_accumulate(tmp_path, store, running):
    state_dir, rounds = store.url, 40
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_report_progress, args=(state_dir, running, barrier, rounds)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert _progress(store.get("acme", running)) == {"Observation": 2 * rounds * 3, "Patient": 2 * (rounds // 2)}


def test_postgresql_store_works_on_a_sql_ascii_database(postgres_server):
    """A server initialised without a UTF-8 locale (as by `env -i initdb`) defaults to SQL_ASCII."""
    import psycopg

    name = f"ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    dsn = postgres_server.rsplit("/", 1)[0] + f"/{name}"
    store = open_store(dsn)
    store.create(_record("job-é", owner="alice"))
    assert store.get("acme", "job-é").owner == "alice"


def test_the_engine_job_of_a_submitted_export_is_kept(store):
    store.create(_record("job-e"))
    assert store.runner_job("job-e") is None
    engine = {"runner": "dataflow", "project": "p", "region": "r", "job_id": "2026-11-28_1"}
    store.set_runner_job("job-e", engine)
    assert store.runner_job("job-e") == engine


@pytest.mark.parametrize("damage", [
    "DROP TABLE type_progress",
    "UPDATE schema_version SET version = 0",
    "UPDATE jobs SET request_json = '{\"not\": SECRET'",
    "UPDATE jobs SET manifest_json = '[SECRET'",
])
def test_a_damaged_sqlite_store_is_one_line_and_exit_4(run_cli, tmp_path, damage):
    """A dropped table, a reset schema version or a row whose JSON cannot be read: `status`, `list` and
    `manifest` end with one line, exit 4, no traceback and no stored value."""
    state = tmp_path / "state"
    store = SqliteJobStore(str(state))
    store.create(_record("job-1", tenant="default"))
    store.mark_in_progress("job-1")
    store.complete("job-1", _manifest([("Patient", 1)]), bad_records=0)
    with sqlite3.connect(state / DB_NAME) as db:
        db.execute(damage)
    codes = []
    for command in (["status", "job-1"], ["list", "--all"], ["manifest", "job-1"]):
        done = run_cli(*command, state_dir=state)
        codes.append(done.code)
        assert done.code in (0, 4) and "SECRET" not in done.err + done.out, (command, done.err)
        if done.code == 4:  # else the damage is not on its way
            assert "damaged" in done.err and len(done.err.strip().splitlines()) == 1, done.err
    assert codes == ([0, 0, 4] if "manifest_json" in damage else [4, 4, codes[2]]), codes


def test_a_locked_sqlite_store_answers_reads_or_says_it_is_busy_within_seconds(run_cli, tmp_path):
    """Another process holding the write lock (a launcher frozen in a transaction) does not block
    `status`, `list` and `manifest` (WAL: they read the last commit); one holding the file exclusively
    makes them say in one line that the store is busy (exit 4), within seconds, not after 30 s."""
    import subprocess
    import sys
    import time

    state = tmp_path / "state"
    store = SqliteJobStore(str(state))
    store.create(_record("job-1", tenant="default"))
    store.mark_in_progress("job-1")
    store.complete("job-1", _manifest([("Patient", 1)]), bad_records=0)
    commands = (["status", "job-1"], ["list", "--all"], ["manifest", "job-1"])
    for how, expected in (("BEGIN IMMEDIATE", 0), ("PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE", 4)):
        holder = subprocess.Popen(
            [sys.executable, "-c", "import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None);"
             " [db.execute(s) for s in sys.argv[2].split('; ')]; db.execute(\"UPDATE jobs SET bad_records = 7\");"
             " print('held', flush=True); sys.stdin.read()", str(state / DB_NAME), how],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            for command in commands:
                started = time.monotonic()
                done = run_cli(*command, state_dir=state)
                assert time.monotonic() - started < 6, (how, command)
                assert done.code == expected, (how, command, done.err)
                if expected == 4:
                    assert "busy" in done.err and len(done.err.strip().splitlines()) == 1, done.err
        finally:
            holder.stdin.close()
            holder.wait(10)
