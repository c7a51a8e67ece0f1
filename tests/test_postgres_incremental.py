"""Chained incremental exports of a PostgreSQL table while it is written: every change lands in exactly one run.

A writer inserts, updates and deletes rows (`last_updated = now()`, some
transactions held open across the exports' snapshots) during two runs of one
schedule, the second's `_since` being the first's `transactionTime`. Its log
of committed changes is the oracle: run 1 holds each resource's state at T1,
run 2 each change after T1 up to T2, in `output[]` or `deleted[]`.
"""

from __future__ import annotations

import random
import threading
import time

import orjson
import psycopg
import pytest

from launcher.jobs import source_snapshot
from tests.pg_resources import create_table, deleted_keys, exported_bodies, insert, ndjson_resources, source_url
from transforms.fhir.instant import instant_key

BASE = "https://ehr.example.org/fhir"
VERSION = "urn:test:writer-version"  # the writer's version of an Observation; 1 for one it never changed


def _version(body: dict) -> int:
    marks = [i["value"] for i in body.get("identifier", []) if i.get("system") == VERSION]
    return int(marks[0]) if marks else 1


class Writer(threading.Thread):
    """Changes Observations until stopped; logs `(id, version, deleted, last_updated)` of each committed change."""

    def __init__(self, dsn: str, ids: list[str]):
        super().__init__(daemon=True)
        self._dsn, self._live, self._next = dsn, list(ids), 0
        self.log: list[tuple[str, int, bool, object]] = []
        self.stop = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        rng = random.Random(7)
        versions: dict[str, int] = {}
        try:
            with psycopg.connect(self._dsn) as conn:
                while not self.stop.is_set():
                    op = rng.choice(("insert", "update", "update", "delete"))
                    rid = f"w-{self._next}" if op == "insert" else rng.choice(self._live)
                    version = versions.get(rid, 1) + 1
                    body = orjson.dumps({"resourceType": "Observation", "id": rid, "status": "final",
                                         "code": {"text": "x"},
                                         "identifier": [{"system": VERSION, "value": str(version)}]}).decode()
                    with conn.transaction():
                        (moment,) = conn.execute(
                            "INSERT INTO resources VALUES ('Observation', %s, %s, now(), %s, %s)"
                            " ON CONFLICT (resource_type, id) DO UPDATE SET version_id = excluded.version_id,"
                            " last_updated = excluded.last_updated, deleted = excluded.deleted,"
                            " resource = excluded.resource RETURNING last_updated",
                            (rid, str(version), op == "delete", body)).fetchone()
                        if rng.random() < 0.3:  # held open: it may straddle a snapshot
                            time.sleep(rng.uniform(0.0, 0.15))
                    versions[rid] = version
                    self.log.append((rid, version, op == "delete", moment))
                    if op == "insert":
                        self._next += 1
                        self._live.append(rid)
                    elif op == "delete":
                        self._live.remove(rid)
                    time.sleep(0.005)
        except Exception as exc:  # reported by the test
            self.error = exc


def _state(log, after, until) -> dict[str, tuple[int, bool]]:
    """Each id's last change with `after < last_updated <= until` (instants, as FHIR texts)."""
    state = {}
    for rid, version, deleted, moment in log:
        key = instant_key(moment.isoformat())
        if (after is None or key > instant_key(after)) and key <= instant_key(until):
            state[rid] = (version, deleted)
    return state


def test_two_chained_runs_carry_every_concurrent_change_exactly_once(postgres_dsn, sample_dir, run_cli, tmp_path):
    create_table(postgres_dsn)
    insert(postgres_dsn, ndjson_resources(sample_dir))
    observations = [rid for (rid,) in psycopg.connect(postgres_dsn).execute(
        "SELECT id FROM resources WHERE resource_type = 'Observation' ORDER BY id").fetchall()]
    writer = Writer(postgres_dsn, observations)
    writer.start()
    try:
        time.sleep(0.5)
        runs = []
        for _ in range(2):
            done = run_cli("export", "--source", source_url(postgres_dsn), "--output", str(tmp_path / "out"),
                           "--schedule", "nightly", "--kickoff", f"{BASE}/$export?_type=Observation")
            assert done.code == 0, done.err
            runs.append(done.manifest())
            time.sleep(1.0)  # changes between the runs, however fast an export is
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.error is None, writer.error
    first, second = runs
    t1, t2 = first["transactionTime"], second["transactionTime"]
    assert instant_key(t1) < instant_key(t2)
    changed_before = _state(writer.log, None, t1)
    changed_between = _state(writer.log, t1, t2)
    assert len(changed_between) > 20, "the writer made too few changes during the second run"
    # Run 1: every Observation as it was at T1: changed by the writer, or as loaded.
    run1 = {rid: _version(b) for (_, rid), b in exported_bodies(first).items()}
    expected1 = {rid: 1 for rid in observations}
    expected1.update({rid: v for rid, (v, gone) in changed_before.items()})
    for rid, (_, gone) in changed_before.items():
        if gone:
            del expected1[rid]
    assert run1 == expected1
    assert first["deleted"] == []  # no _since: nothing to list
    # Run 2: each change after T1, once: the live ones in output[], the deleted ones in deleted[].
    run2 = {rid: _version(b) for (_, rid), b in exported_bodies(second).items()}
    assert run2 == {rid: v for rid, (v, gone) in changed_between.items() if not gone}
    assert sorted(rid for _, rid in deleted_keys(second)) == sorted(rid for rid, (_, gone) in changed_between.items()
                                                                    if gone)
    assert first["error"] == second["error"] == []


@pytest.mark.parametrize("hook", ["begin", "_start"])
def test_a_writer_committing_as_the_snapshot_is_taken_lands_in_exactly_one_run(postgres_dsn, monkeypatch, hook):
    """A writer's transaction, open when the launcher starts, commits just before the snapshot is taken
    (`begin`) or just after it (`_start`): its change is seen by the snapshot and at or before
    `transactionTime` (run 1 has it), or unseen and after it (run 2 has it); never neither, never both."""
    create_table(postgres_dsn)
    insert(postgres_dsn, [{"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}}])
    writer = psycopg.connect(postgres_dsn)
    (changed,) = writer.execute("UPDATE resources SET version_id = '2', last_updated = now() WHERE id = 'o1'"
                                " RETURNING last_updated").fetchone()
    original = getattr(source_snapshot, hook, lambda *args: None)  # `_start`: unknown before the fix

    def commit_around(*args):
        if hook == "begin" and not writer.closed:
            writer.commit()
            writer.close()
        result = original(*args)
        if hook == "_start" and not writer.closed:
            writer.commit()
            writer.close()
        return result

    monkeypatch.setattr(source_snapshot, hook, commit_around, raising=False)
    try:
        with source_snapshot.open_snapshot(source_url(postgres_dsn)) as snapshot:
            with psycopg.connect(postgres_dsn, autocommit=True) as reader:
                reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                reader.execute(f"SET TRANSACTION SNAPSHOT '{snapshot.snapshot}'")
                (seen,) = reader.execute("SELECT version_id FROM resources WHERE id = 'o1'").fetchone()
    finally:
        writer.close()
    at_or_before = instant_key(changed.isoformat()) <= instant_key(snapshot.transaction_time)
    assert (seen, at_or_before) in (("2", True), ("1", False)), (seen, changed, snapshot.transaction_time)
