"""Conformance of both job stores (SQLite, real PostgreSQL) for the lifecycle: cancel,
the cancel/complete race, the per-tenant cap, expiry, leases, resume, delete, migration."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time

import pytest

from launcher.jobs.store_sink import StoreJobSink
from launcher.stores import (
    InvalidJobState,
    JobNotFound,
    Lease,
    SqliteJobStore,
    TooManyActiveExports,
    now_ms,
    open_store,
)
from launcher.stores.schema import MIGRATIONS, SCHEMA_VERSION
from pipelines.models import ExportStatus
from tests.helpers import store  # noqa: F401  (a fixture)
from tests.helpers import TX, _manifest, _progress, _record, count_active, list_expired

FAR = now_ms() + 3_600_000


def _running(store, job_id, tenant="acme", lease=None):
    store.create(_record(job_id, tenant=tenant), lease=lease or Lease("me", FAR))
    store.mark_in_progress(job_id)


def test_cancel_ends_an_active_job_and_refuses_a_finished_one(store):
    store.create(_record("queued"))
    _running(store, "running")
    _running(store, "done")
    store.complete("done", _manifest([("Patient", 1)]), 0)
    for job_id in ("queued", "running"):
        assert store.cancel("acme", job_id).status is ExportStatus.CANCELLED
        assert store.get("acme", job_id).completed_at is not None
    with pytest.raises(InvalidJobState, match="complete; it cannot be cancelled"):
        store.cancel("acme", "done")
    with pytest.raises(JobNotFound):
        store.cancel("other-tenant", "running")
    with pytest.raises(InvalidJobState):  # a cancelled job never completes afterwards
        store.complete("running", _manifest([("Patient", 1)]), 0)
    with pytest.raises(InvalidJobState):
        store.manifest("acme", "running")


def _race(store_url: str, job_ids: list[str], side: str, barrier, results) -> None:
    store = open_store(store_url)
    for job_id in job_ids:
        barrier.wait()
        try:
            if side == "complete":
                won = StoreJobSink(store_url, job_id, 1).complete(_manifest([("Patient", 3)]), 0)
            else:
                store.cancel("acme", job_id)
                won = True
        except InvalidJobState:
            won = False
        results.put((job_id, side, won))


def test_cancel_and_completion_race_to_exactly_one_terminal_state(store):
    job_ids = [f"race-{n}" for n in range(12)]
    for job_id in job_ids:
        _running(store, job_id)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    racers = [ctx.Process(target=_race, args=(store.url, job_ids, side, barrier, results))
              for side in ("complete", "cancel")]
    for racer in racers:
        racer.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * len(job_ids))]
    for racer in racers:
        racer.join(60)
    winners = {}
    for job_id, side, won in outcomes:
        if won:
            assert job_id not in winners, f"{job_id}: both {winners.get(job_id)} and {side} won"
            winners[job_id] = side
    assert set(winners) == set(job_ids)
    for job_id, side in winners.items():
        record = store.get("acme", job_id)
        assert record.status is (ExportStatus.COMPLETE if side == "complete" else ExportStatus.CANCELLED)
        assert (_progress(record) == {"Patient": 3}) is (side == "complete")


def test_count_active_is_per_tenant(store):
    store.create(_record("a1", tenant="a"))
    _running(store, "a2", tenant="a")
    _running(store, "a3", tenant="a")
    store.fail("a3", "boom")
    _running(store, "b1", tenant="b")
    store.cancel("b", "b1")
    store.create(_record("b2", tenant="b"))
    assert (count_active(store, "a"), count_active(store, "b"), count_active(store, "c")) == (2, 1, 0)


def test_the_cap_refuses_the_fifth_kickoff_and_records_nothing(store):
    for n in range(4):
        store.create(_record(f"j{n}"), max_active=4)
    with pytest.raises(TooManyActiveExports, match="too many concurrent exports for tenant acme"):
        store.create(_record("j4"), max_active=4)
    with pytest.raises(JobNotFound):
        store.get("acme", "j4")
    store.create(_record("elsewhere", tenant="other"), max_active=4)  # other tenants are unaffected
    _running(store, "j-late")  # no cap given: recorded
    store.cancel("acme", "j-late")
    store.cancel("acme", "j0")
    store.create(_record("j5"), max_active=4)  # a finished job frees a place


def test_concurrent_kickoffs_never_overrun_the_cap(store):
    accepted, refused = [], []
    barrier = threading.Barrier(8)

    def kickoff(n: int) -> None:
        barrier.wait()
        try:
            store.create(_record(f"c{n}"), max_active=3)
            accepted.append(n)
        except TooManyActiveExports:
            refused.append(n)

    threads = [threading.Thread(target=kickoff, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert (len(accepted), len(refused)) == (3, 5)
    assert count_active(store, "acme") == 3


def test_list_expired_spans_tenants_and_comes_in_batches(store):
    for tenant in ("a", "b"):
        for n in range(3):
            _running(store, f"{tenant}{n}", tenant=tenant)
    store.complete("a0", _manifest([("Patient", 1)]), 0)
    store.fail("a1", "boom")
    store.cancel("b", "b0")
    store.release_lease("b0", "me")  # as its launcher does once the output is gone
    store.complete("b1", _manifest([("Patient", 1)]), 0)
    ended = {"a0", "a1", "b0", "b1"}
    cutoff = now_ms() + 1
    assert {r.job_id for r in list_expired(store, cutoff, 10)} == ended
    assert list_expired(store, now_ms() - 600_000, 10) == []  # nothing ended ten minutes ago
    first = store.claim_expired(cutoff, 3, Lease("cleaner-1", FAR))
    second = store.claim_expired(cutoff, 3, Lease("cleaner-2", FAR))
    assert len(first) == 3 and len(second) == 1
    assert {r.job_id for r in first + second} == ended
    assert {r.tenant for r in first + second} == {"a", "b"}
    assert list_expired(store, cutoff, 10) == []  # claimed jobs are not listed again


def test_delete_removes_a_finished_job_only(store):
    _running(store, "j")
    with pytest.raises(InvalidJobState):
        store.delete("acme", "j")
    store.add_progress("j", {"Patient": 2})
    store.complete("j", _manifest([("Patient", 2)]), 0)
    with pytest.raises(JobNotFound):
        store.delete("acme", "j", owner="mallory")
    assert store.delete("acme", "j").job_id == "j"
    with pytest.raises(JobNotFound):
        store.get("acme", "j")


def test_a_watched_runs_completion_keeps_its_launchers_lease_and_a_submitted_ones_releases_it(store):
    """A launcher watching the run records the completion and then releases its lease (a delete waits for
    that); a submitted run has no launcher left, so its claim releases the lease itself."""
    _running(store, "watched", lease=Lease("launcher", FAR))
    assert StoreJobSink(store.url, "watched", 1).complete(_manifest([("Patient", 1)]), 0)
    assert store.get("acme", "watched").status is ExportStatus.COMPLETE and store.is_leased("watched")
    store.release_lease("watched", "launcher")
    assert not store.is_leased("watched")
    _running(store, "submitted", lease=Lease("dataflow-launcher", FAR))
    sink = StoreJobSink(store.url, "submitted", 1, lease=Lease("dataflow-launcher", FAR), lease_s=60)
    assert sink.complete(_manifest([("Patient", 1)]), 0)
    assert store.lease("submitted") is None


def test_an_expired_lease_makes_the_job_a_resumable_error(store):
    _running(store, "lost", lease=Lease("dead-launcher", now_ms() - 1))
    _running(store, "alive", lease=Lease("live-launcher", FAR))
    store.add_progress("lost", {"Patient": 5})
    [reaped] = store.reap_expired()
    assert reaped.job_id == "lost" and reaped.status is ExportStatus.ERROR and reaped.resumable
    assert "stopped renewing its lease" in reaped.error_message
    assert store.get("acme", "alive").status is ExportStatus.IN_PROGRESS
    assert store.reap_expired() == []
    assert not store.renew_lease("lost", Lease("dead-launcher", FAR))  # the lease is gone
    resumed = store.claim_resume("acme", "lost", None, Lease("new-launcher", FAR))
    assert (resumed.status, resumed.attempt, resumed.progress, resumed.error_message) == (
        ExportStatus.IN_PROGRESS, 2, [], None)
    # Reports from the first attempt no longer count, and it cannot complete the job.
    store.add_progress("lost", {"Patient": 7}, attempt=1)
    assert _progress(store.get("acme", "lost")) == {}
    assert StoreJobSink(store.url, "lost", 1).complete(_manifest([("Patient", 5)]), 0) is False
    with pytest.raises(InvalidJobState, match="restarted"):  # nor fail it
        store.fail("lost", "the first attempt's launcher woke up", attempt=1)
    assert StoreJobSink(store.url, "lost", 2).complete(_manifest([("Patient", 9)]), 0) is True
    assert _progress(store.get("acme", "lost")) == {"Patient": 9}


def test_only_a_lost_job_can_be_resumed(store):
    _running(store, "failed")
    store.fail("failed", "bad source")
    with pytest.raises(InvalidJobState, match="only a job whose launcher stopped"):
        store.claim_resume("acme", "failed", None, Lease("x", FAR))
    with pytest.raises(JobNotFound):
        store.claim_resume("other", "failed", None, Lease("x", FAR))


def test_read_bytes_give_the_running_fraction(store):
    _running(store, "j")
    store.set_total_bytes("j", 1000)
    store.add_read_bytes("j", 250)
    store.add_read_bytes("j", 250)
    assert store.get("acme", "j").fraction == 0.5
    store.complete("j", _manifest([("Patient", 1)]), 0)
    assert store.get("acme", "j").fraction == 1.0


def test_a_version_1_sqlite_store_is_migrated_in_place(tmp_path):
    (tmp_path / "state").mkdir()
    with sqlite3.connect(tmp_path / "state" / "jobs.sqlite3") as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        for statement in MIGRATIONS[0].statements:
            db.execute(statement)
        db.execute(
            "INSERT INTO jobs (job_id, tenant, level, request_json, request_url, transaction_time, fhir_version,"
            " status, created_at, completed_at, output_dir) VALUES ('old', 'acme', 'system', ?, 'u', ?, 'R4',"
            " 'complete', ?, '2024-05-01T13:00:00.000Z', '/out/acme/old')",
            (_record("old").request.model_dump_json(), TX, TX),
        )
    store = SqliteJobStore(str(tmp_path / "state"))
    assert store.get("acme", "old").status is ExportStatus.COMPLETE
    assert [r.job_id for r in list_expired(store, now_ms(), 10)] == ["old"]  # ended_ms backfilled
    with sqlite3.connect(tmp_path / "state" / "jobs.sqlite3") as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def _lock_waiters(dsn: str, n: int) -> None:
    """Returns once `n` sessions of this database wait on a lock (or fails after a minute)."""
    import psycopg

    deadline = time.monotonic() + 60
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                   " AND datname = current_database()").fetchone()[0]
            if waiting >= n:
                return
            time.sleep(0.01)
    raise AssertionError(f"{n} sessions never waited on a lock")


def _in_thread(errors: list, call, *args) -> threading.Thread:
    def run() -> None:
        try:
            call(*args)
        except Exception as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _held_back(dsn: str, table: str, calls: list) -> list:
    """Starts `calls` in turn, each once the previous waits on a lock of `table`; then frees them all."""
    import psycopg

    errors: list = []
    with psycopg.connect(dsn) as blocker:
        blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        threads = []
        for n, (call, *args) in enumerate(calls, start=1):
            threads.append(_in_thread(errors, call, *args))
            _lock_waiters(dsn, n)
    for thread in threads:
        thread.join(60)
    return errors


def test_runs_of_one_schedule_completing_at_once_advance_it_once_and_forward(postgres_dsn):
    store = open_store(postgres_dsn)
    times = ("2024-01-01T00:00:01Z", "2024-01-01T00:00:03Z", "2024-01-01T00:00:02Z")
    for n, transaction_time in enumerate(times):
        record = _record(f"s{n}").model_copy(update={"transaction_time": transaction_time})
        store.create(record, run_spec={"settings": {}, "beam_args": [], "schedule": "nightly"})
        store.mark_in_progress(f"s{n}")
    # Each completion has marked its job complete and waits to read the (absent) schedule.
    errors = _held_back(postgres_dsn, "schedules",
                        [(store.complete, f"s{n}", _manifest([("Patient", 1)]), 0) for n in range(3)])
    assert errors == []
    assert [store.get("acme", f"s{n}").status for n in range(3)] == [ExportStatus.COMPLETE] * 3
    assert store.last_transaction_time("acme", "nightly") == "2024-01-01T00:00:03Z"


def test_a_progress_report_racing_completion_never_changes_the_exact_counts(postgres_dsn):
    store = open_store(postgres_dsn)
    for round_ in range(8):  # without the lock, the report lands after completion about half the time
        job_id = f"r{round_}"
        _running(store, job_id)
        store.add_progress(job_id, {"Patient": 1})
        # Completion holds the job row and waits to rewrite the counts; the late report arrives then.
        errors = _held_back(postgres_dsn, "type_progress", [
            (store.complete, job_id, _manifest([("Patient", 3)]), 0),
            (store.add_progress, job_id, {"Patient": 5}),
        ])
        assert errors == []
        assert _progress(store.get("acme", job_id)) == {"Patient": 3}, round_
