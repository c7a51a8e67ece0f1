"""Audit events are valid FHIR R4 AuditEvents, checked against the official StructureDefinition."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.core.audit import EVENTS, AuditLog, audit_event
from pipelines.models import ExportStatus
from tests.helpers import _check, _record, definition  # noqa: F401  (a fixture)


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
