"""The job sink keeps the store off the export's hot path: no migrations, best-effort progress,
and a completion claim that is retried and then fails clearly."""

from __future__ import annotations

import sqlite3

import pytest

from launcher.jobs import store_sink as store_module
from launcher.jobs.store_sink import StoreJobSink
from launcher.stores import SqliteJobStore, StoreUnavailable
from launcher.stores.base import SqlJobStore
from pipelines.models import ExportStatus
from tests.helpers import _manifest, _record

UNREACHABLE = "postgresql://bulk@127.0.0.1:1/nowhere"


@pytest.fixture
def running(tmp_path) -> SqliteJobStore:
    store = SqliteJobStore(str(tmp_path / "state"))
    store.create(_record("job-1"))
    store.mark_in_progress("job-1")
    return store


def test_a_sink_never_migrates_the_store(running, tmp_path, monkeypatch):
    migrations = []
    monkeypatch.setattr(SqlJobStore, "_migrate", lambda self, db: migrations.append(db))
    sink = StoreJobSink(str(tmp_path / "state"), "job-1", 1)
    for _ in range(5):
        sink.progress({"Patient": 2})
        sink.read(100)
    assert sink.owns() and sink.complete(_manifest([("Patient", 10)]), 0)
    assert migrations == []
    assert {p.type: p.exported for p in running.get("acme", "job-1").progress} == {"Patient": 10}


def test_progress_that_cannot_be_reported_is_kept_for_the_next_report(running, tmp_path, monkeypatch):
    original = SqlJobStore.add_progress
    calls = []

    def blip(self, job_id, counts, attempt=None):
        calls.append(dict(counts))
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        return original(self, job_id, counts, attempt)

    monkeypatch.setattr(SqlJobStore, "add_progress", blip)
    sink = StoreJobSink(str(tmp_path / "state"), "job-1", 1)
    sink.progress({"Patient": 3})  # the store blips: nothing raised, nothing lost
    sink.progress({"Patient": 4, "Observation": 1})
    assert calls == [{"Patient": 3}, {"Patient": 7, "Observation": 1}]
    assert {p.type: p.exported for p in running.get("acme", "job-1").progress} == {"Patient": 7, "Observation": 1}


def test_an_unreachable_store_delays_progress_and_fails_the_claim_clearly(monkeypatch):
    monkeypatch.setattr(store_module, "CLAIM_RETRY_WAITS_S", (0.01, 0.01))
    sink = StoreJobSink(UNREACHABLE, "job-1", 1)
    sink.progress({"Patient": 1})
    sink.read(10)
    assert sink._unsent == {"Patient": 1} and sink._unread == 10
    with pytest.raises(StoreUnavailable, match="claim its completion .*3 tries"):
        sink.complete(_manifest([("Patient", 1)]), 0)


def test_the_claim_is_retried_through_a_store_blip(running, tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "CLAIM_RETRY_WAITS_S", (0.01, 0.01))
    original = SqlJobStore.complete
    calls = []

    def blip(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SqlJobStore, "complete", blip)
    assert StoreJobSink(str(tmp_path / "state"), "job-1", 1).complete(_manifest([("Patient", 1)]), 0)
    assert len(calls) == 2 and running.status("job-1") is ExportStatus.COMPLETE
