"""Audit events are valid FHIR R4 AuditEvents, checked against the official StructureDefinition."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from launcher.core.audit import EVENTS, AuditLog, audit_event
from launcher.jobs.lifecycle import delete_job
from launcher.jobs.process import new_lease
from launcher.jobs.store_sink import StoreJobSink
from launcher.stores import SqliteJobStore
from pipelines.models import ExportStatus
from tests.helpers import _check, _manifest, _record, definition  # noqa: F401  (a fixture)


@pytest.mark.parametrize("event", EVENTS)
def test_every_lifecycle_event_is_a_valid_r4_audit_event(event, definition, tmp_path):
    job = _record("job-1", owner="alice").model_copy(update={"status": ExportStatus.COMPLETE})
    log = AuditLog(str(tmp_path))
    log.record(event, job, description=f"{event} happened")
    log.record(event, _record("job-2"), outcome="8", agent="bulk-export cleanup")
    for resource in (json.loads(line) for line in Path(log.path("acme")).read_text().splitlines()):
        problems: list[str] = []
        _check(resource, "AuditEvent", definition, problems)
        assert problems == [], problems
        assert resource["resourceType"] == "AuditEvent"
        details = {d["type"]: d["valueString"] for d in resource["entity"][0]["detail"]}
        assert details["lifecycle-event"] == event
        assert details["tenant"] == "acme" and details["export-level"] == "system"
        assert details["resource-types"] == "Patient"
        assert details["job-id"] == resource["entity"][0]["what"]["identifier"]["value"]
    assert resource["outcome"] == "8" and resource["agent"][0]["requestor"] is False


def test_an_unknown_event_is_refused():
    with pytest.raises(ValueError, match="audit event 'paused'"):
        audit_event("paused", _record("job-1"))


def test_a_delete_racing_with_a_completion_waits_for_its_launcher_to_record_it(tmp_path):
    """A client may delete a job the moment its manifest is served, before the launcher that ran it has
    recorded the completion: the delete waits for that launcher's lease, so `complete` precedes `delete`."""
    store, audit = SqliteJobStore(str(tmp_path / "state")), AuditLog(str(tmp_path / "audit"))
    lease = new_lease(60)  # this process's: a launcher that is alive
    store.create(_record("job-1"), lease=lease)
    store.mark_in_progress("job-1")
    assert StoreJobSink(store.url, "job-1", 1).complete(_manifest([("Patient", 1)]), 0)  # the pipeline's claim

    def launcher_after_its_pipeline_exits():
        time.sleep(0.5)
        audit.record("complete", store.get("acme", "job-1"))
        store.release_lease("job-1", lease.holder)

    launcher = threading.Thread(target=launcher_after_its_pipeline_exits)
    launcher.start()
    delete_job(store, audit, "acme", "job-1", None)
    launcher.join()
    events = [e["entity"][0]["detail"] for e in map(json.loads, Path(audit.path("acme")).read_text().splitlines())]
    assert [next(d["valueString"] for d in detail if d["type"] == "lifecycle-event") for detail in events] == [
        "complete", "delete"]
