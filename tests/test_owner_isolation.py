"""Owner and tenant isolation: no `--owner` is not a wildcard, `--all-owners` is an audited
operator access, and `cleanup` keeps to its tenant and owner unless told to sweep.

Real SQLite (and PostgreSQL when a server is available for the store-level tests), the real
CLI in-process (`run_cli`), no mocks.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from launcher.core.audit import OPERATOR_ACCESS, operator_access_event
from launcher.stores import ANY_OWNER, JobNotFound, Lease, SqliteJobStore, now_ms
from pipelines.models import ExportStatus
from tests.helpers import _check, _manifest, _record, definition, job_rows, list_expired, store  # noqa: F401  (fixtures)

FAR = now_ms() + 3_600_000


def _job(store, tmp_path: Path, job_id: str, owner: str | None, tenant: str = "default",
         status: ExportStatus = ExportStatus.COMPLETE) -> Path:
    """Records a job (complete by default) with an output folder holding one file; returns the folder."""
    folder = tmp_path / "out" / tenant / job_id
    folder.mkdir(parents=True)
    (folder / "Patient-0.ndjson").write_text('{"resourceType":"Patient","id":"p"}\n')
    record = _record(job_id, tenant=tenant, owner=owner).model_copy(update={"output_dir": str(folder)})
    store.create(record)
    if status is not ExportStatus.ACCEPTED:
        store.mark_in_progress(job_id)
    if status is ExportStatus.COMPLETE:
        store.complete(job_id, _manifest([("Patient", 1)]), 0)
    elif status is ExportStatus.ERROR:
        store.fail(job_id, "boom")
    return folder


def _audit(state: Path, tenant: str = "default") -> list[dict]:
    path = state / "audit" / f"{tenant}.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _details(event: dict) -> dict[str, str]:
    return {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


# ---- the command line: no --owner sees only ownerless jobs ------------------------------------


def test_leaving_out_owner_does_not_reach_another_owners_job(run_cli, state, tmp_path):
    store = SqliteJobStore(str(state))
    done = _job(store, tmp_path, "alice-done", "alice")
    _job(store, tmp_path, "alice-running", "alice", status=ExportStatus.IN_PROGRESS)
    for command, job_id in (("status", "alice-done"), ("manifest", "alice-done"), ("delete", "alice-done"),
                            ("cancel", "alice-running"), ("status", "alice-running")):
        hidden = run_cli(command, job_id)
        assert hidden.code == 1 and hidden.err.strip() == f"bulk-export: job {job_id} not found", (command, hidden.err)
        assert hidden.out == ""
    listing = run_cli("list", "--all")
    assert listing.code == 0 and listing.out == ""
    # Nothing was changed by the attempts, and alice still sees both.
    assert done.exists()
    assert run_cli("status", "alice-done", "--owner", "alice").code == 0
    assert "in-progress" in run_cli("status", "alice-running", "--owner", "alice").out
    assert sorted(row[0] for row in job_rows(run_cli("list", "--all", "--owner", "alice").out)) == [
        "alice-done", "alice-running"]


def test_a_job_without_owner_is_visible_only_without_owner(run_cli, state, tmp_path):
    store = SqliteJobStore(str(state))
    _job(store, tmp_path, "nobodys", None)
    assert run_cli("status", "nobodys").code == 0
    assert job_rows(run_cli("list", "--all").out)[0][0] == "nobodys"
    for command in ("status", "manifest", "delete"):
        hidden = run_cli(command, "nobodys", "--owner", "bob")
        assert hidden.code == 1 and "not found" in hidden.err, command
    assert run_cli("list", "--all", "--owner", "bob").out == ""


def test_all_owners_is_an_audited_operator_access(run_cli, state, tmp_path):
    store = SqliteJobStore(str(state))
    done = _job(store, tmp_path, "alice-done", "alice")
    running = _job(store, tmp_path, "bob-running", "bob", status=ExportStatus.IN_PROGRESS)
    _job(store, tmp_path, "mine", None)
    before = len(_audit(state))
    status = run_cli("status", "alice-done", "--all-owners")
    assert status.code == 0 and "owner alice" in status.out
    manifest = run_cli("manifest", "alice-done", "--all-owners")
    assert manifest.code == 0 and json.loads(manifest.out)["output"][0]["count"] == 1
    listing = run_cli("list", "--all", "--all-owners")
    assert listing.code == 0
    assert listing.out.splitlines()[0].split()[-1] == "OWNER"
    assert {row[0]: row[-1] for row in job_rows(listing.out)} == {
        "alice-done": "alice", "bob-running": "bob", "mine": "-"}
    assert run_cli("cancel", "bob-running", "--all-owners").code == 0
    assert store.get("default", "bob-running").status is ExportStatus.CANCELLED and not running.exists()
    assert run_cli("delete", "alice-done", "--all-owners").code == 0 and not done.exists()
    accesses = [_details(e) for e in _audit(state)[before:] if _details(e)["lifecycle-event"] == OPERATOR_ACCESS]
    assert [(d["command"], d.get("job-id"), d["scope"], d["tenant"]) for d in accesses] == [
        ("status", "alice-done", "--all-owners", "default"),
        ("manifest", "alice-done", "--all-owners", "default"),
        ("list", None, "--all-owners", "default"),
        ("cancel", "bob-running", "--all-owners", "default"),
        ("delete", "alice-done", "--all-owners", "default"),
    ]
    assert len(_audit(state)) == before + 7  # the five accesses, the cancel and the delete
    # Without the flag nothing is audited as an operator's access.
    assert run_cli("status", "mine").code == 0 and run_cli("list", "--all").code == 0
    assert len(_audit(state)) == before + 7


def test_owner_and_all_owners_together_are_a_usage_error(run_cli):
    with pytest.raises(SystemExit) as refused:
        run_cli("status", "x", "--owner", "alice", "--all-owners")
    assert refused.value.code == 2


def test_the_operator_access_event_is_a_valid_r4_audit_event(definition):  # noqa: F811
    for job_id in ("job-1", None):
        resource = operator_access_event("status", "acme", job_id, "--all-owners")
        problems: list[str] = []
        _check(resource, "AuditEvent", definition, problems)
        assert problems == [], problems
        details = _details(resource)
        assert details["lifecycle-event"] == OPERATOR_ACCESS and details["command"] == "status"
        assert details.get("job-id") == job_id and details["tenant"] == "acme"


# ---- the store: None means "no owner", ANY_OWNER is the explicit wildcard ---------------------


def test_store_none_is_no_owner_and_any_owner_is_explicit(store):  # noqa: F811
    store.create(_record("alice-1", owner="alice"))
    store.create(_record("free-1"))
    for job_id in ("alice-1", "free-1"):
        store.mark_in_progress(job_id)
        store.complete(job_id, _manifest([("Patient", 1)]), 0)
    with pytest.raises(JobNotFound):
        store.get("acme", "alice-1", None)
    with pytest.raises(JobNotFound):
        store.manifest("acme", "alice-1", None)
    with pytest.raises(JobNotFound):
        store.delete("acme", "alice-1", None)
    with pytest.raises(JobNotFound):
        store.get("acme", "free-1", "alice")
    assert store.get("acme", "free-1", None).job_id == "free-1"
    assert store.get("acme", "alice-1", ANY_OWNER).owner == "alice"
    assert store.manifest("acme", "alice-1", ANY_OWNER).output[0].count == 1
    assert [r.job_id for r in store.list("acme", None, include_terminal=True)] == ["free-1"]
    assert [r.job_id for r in store.list("acme", "alice", include_terminal=True)] == ["alice-1"]
    assert sorted(r.job_id for r in store.list("acme", ANY_OWNER, include_terminal=True)) == ["alice-1", "free-1"]
    store.create(_record("alice-2", owner="alice"), lease=Lease("me", FAR))
    with pytest.raises(JobNotFound):
        store.cancel("acme", "alice-2", None)
    assert store.cancel("acme", "alice-2", ANY_OWNER).status is ExportStatus.CANCELLED
    store.create(_record("alice-3", owner="alice"), lease=Lease("gone", now_ms() - 1))
    store.mark_in_progress("alice-3")
    store.reap_expired()
    with pytest.raises(JobNotFound):
        store.claim_resume("acme", "alice-3", None, Lease("x", FAR))
    assert store.claim_resume("acme", "alice-3", "alice", Lease("x", FAR)).attempt == 2
    assert store.delete("acme", "alice-1", ANY_OWNER).job_id == "alice-1"


def test_store_expired_jobs_by_tenant_and_owner(store):  # noqa: F811
    for job_id, tenant, owner in (("a-alice", "a", "alice"), ("a-bob", "a", "bob"), ("a-none", "a", None),
                                  ("b-alice", "b", "alice")):
        store.create(_record(job_id, tenant=tenant, owner=owner))
        store.mark_in_progress(job_id)
        store.complete(job_id, _manifest([("Patient", 1)]), 0)
    cutoff = now_ms() + 1
    ids = lambda jobs: sorted(r.job_id for r in jobs)  # noqa: E731
    assert ids(list_expired(store, cutoff, 10)) == ["a-alice", "a-bob", "a-none", "b-alice"]
    assert ids(list_expired(store, cutoff, 10, tenant="a")) == ["a-alice", "a-bob", "a-none"]
    assert ids(list_expired(store, cutoff, 10, tenant="a", owner=None)) == ["a-none"]
    assert ids(list_expired(store, cutoff, 10, tenant="a", owner="bob")) == ["a-bob"]
    assert ids(list_expired(store, cutoff, 10, owner="alice")) == ["a-alice", "b-alice"]
    assert ids(store.claim_expired(cutoff, 10, Lease("c", FAR), tenant="b", owner=ANY_OWNER)) == ["b-alice"]
    assert ids(list_expired(store, cutoff, 10)) == ["a-alice", "a-bob", "a-none"]


# ---- cleanup keeps to --tenant and --owner --------------------------------------------------


def _age_all(state: Path, hours: float) -> None:
    with sqlite3.connect(state / "jobs.sqlite3") as db:
        db.execute("UPDATE jobs SET ended_ms = ?", (now_ms() - int(hours * 3600_000),))


def test_cleanup_honours_tenant_and_owner(run_cli, state, tmp_path):
    store = SqliteJobStore(str(state))
    folders = {}
    for job_id, tenant, owner in (("t1-alice", "t1", "alice"), ("t1-bob", "t1", "bob"), ("t1-none", "t1", None),
                                  ("t2-alice", "t2", "alice"), ("t2-bob", "t2", "bob"), ("d-none", "default", None)):
        folders[job_id] = _job(store, tmp_path, job_id, owner, tenant=tenant)
    _age_all(state, 2)

    def left() -> set[str]:
        return {job_id for job_id, folder in folders.items() if folder.exists()}

    bob = run_cli("cleanup", "--tenant", "t1", "--owner", "bob", "--ttl", "1s")
    assert bob.code == 0 and "removed 1 expired job" in bob.out and "t1/t1-bob" in bob.out
    assert left() == set(folders) - {"t1-bob"}
    plain = run_cli("cleanup", "--ttl", "1s")  # the default tenant, jobs without an owner
    assert plain.code == 0 and "default/d-none" in plain.out
    assert left() == set(folders) - {"t1-bob", "d-none"}
    owners = run_cli("cleanup", "--tenant", "t2", "--all-owners", "--ttl", "1s")
    assert owners.code == 0 and "removed 2 expired jobs" in owners.out
    assert left() == {"t1-alice", "t1-none"}
    assert run_cli("status", "t1-alice", "--tenant", "t1", "--owner", "alice").code == 0
    tenants = run_cli("cleanup", "--all-tenants", "--ttl", "1s")  # every tenant, jobs without an owner
    assert tenants.code == 0 and "t1/t1-none" in tenants.out and left() == {"t1-alice"}
    everything = run_cli("cleanup", "--all-tenants", "--all-owners", "--ttl", "1s")
    assert everything.code == 0 and "t1/t1-alice" in everything.out and left() == set()
    swept = [_details(e) for e in _audit(state, "t1") if _details(e)["lifecycle-event"] == "cleanup"]
    assert [d["job-id"] for d in swept] == ["t1-bob", "t1-none", "t1-alice"]
    assert "every tenant and every owner" in _audit(state, "t1")[-1]["outcomeDesc"]


def test_cleanup_all_tenants_and_tenant_together_are_a_usage_error(run_cli):
    with pytest.raises(SystemExit) as refused:
        run_cli("cleanup", "--tenant", "t1", "--all-tenants")
    assert refused.value.code == 2
