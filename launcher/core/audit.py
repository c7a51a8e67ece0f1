"""The audit log: one FHIR R4 `AuditEvent` per job lifecycle event, appended as NDJSON.

Events are kickoff, complete, error, cancel, delete and cleanup, each carrying
the job id, tenant, owner, export level, types and outcome, as the seed's
`record_export_event` does. An operator's access across owners (`--all-owners`)
is an `operator-access` event naming the command, the tenant and the job. Each tenant has its own file,
`<state-dir>/audit/<tenant>.ndjson`; every event is one `write` to a file opened
for appending, so concurrent launchers never interleave lines.
"""

from __future__ import annotations

import getpass
import os
import uuid
from typing import Optional

import orjson

from launcher.core.names import check_tenant
from pipelines.models import JobRecord
from transforms.fhir.instant import now_instant

EVENTS = ("kickoff", "complete", "error", "cancel", "delete", "cleanup")
OPERATOR_ACCESS = "operator-access"
# SMART Backend Services: a token request granted or refused, and a protected request refused.
ACCESS_EVENTS = ("token", "access-refused")
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = "0", "4", "8"  # R4 audit-event-outcome codes
# R4 audit-event-action codes: deletions are "D", everything else executes the operation.
_ACTIONS = {"delete": "D", "cleanup": "D"}
_EVENT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
               "display": "RESTful Operation"}
_SUBTYPE = {"system": "http://hl7.org/fhir/restful-interaction", "code": "operation", "display": "operation"}
_AUTHENTICATION = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114",
                   "display": "User Authentication"}
_JOB_ENTITY = {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2",
               "display": "System Object"}
OBSERVER = "bulk-export"


class AuditLog:
    """Appends AuditEvents under `folder/audit/`, one file per tenant."""

    def __init__(self, folder: str):
        self.folder = os.path.join(folder, "audit")

    def path(self, tenant: str) -> str:
        return os.path.join(self.folder, f"{check_tenant(tenant)}.ndjson")

    def record(self, event: str, job: JobRecord, outcome: str = SUCCESS, description: Optional[str] = None,
               agent: Optional[str] = None) -> dict:
        """Appends the event for `job` and returns it. `agent` names a system actor (e.g. cleanup)."""
        resource = audit_event(event, job, outcome, description, agent)
        self._append(job.tenant, resource)
        return resource

    def operator_access(self, command: str, tenant: str, job_id: Optional[str], scope: str) -> dict:
        """Appends the `operator-access` event of `command` run with `scope` (e.g. `--all-owners`)
        on `job_id` of `tenant` (None: the tenant's job list), and returns it."""
        resource = operator_access_event(command, tenant, job_id, scope)
        self._append(tenant, resource)
        return resource

    def access(self, event: str, tenant: str, client_id: Optional[str], outcome: str, description: str,
               request: Optional[str] = None) -> dict:
        """Appends an access `event` (a token grant or refusal, a refused request) and returns it."""
        resource = access_event(event, tenant, client_id, outcome, description, request)
        self._append(tenant, resource)
        return resource

    def job_events(self, tenant: str, job_id: str) -> list[dict]:
        """The AuditEvents of `tenant`'s log about job `job_id`, oldest first (none when there is no log)."""
        needle, events = job_id.encode(), []
        try:
            with open(self.path(tenant), "rb") as f:
                for line in f:
                    if needle in line:  # a cheap test first: most lines are about other jobs
                        event = orjson.loads(line)
                        if any(e.get("what", {}).get("identifier", {}).get("value") == job_id
                               for e in event.get("entity", ())):
                            events.append(event)
        except FileNotFoundError:
            pass
        return events

    def _append(self, tenant: str, resource: dict) -> None:
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path(tenant), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, orjson.dumps(resource) + b"\n")
        finally:
            os.close(fd)


def audit_event(event: str, job: JobRecord, outcome: str = SUCCESS, description: Optional[str] = None,
                agent: Optional[str] = None) -> dict:
    """The R4 AuditEvent of one lifecycle `event` of `job`."""
    if event not in EVENTS:
        raise ValueError(f"audit event {event!r} is not one of {', '.join(EVENTS)}")
    details = {
        "audit-operation": "bulk-export",
        "lifecycle-event": event,
        "job-id": job.job_id,
        "tenant": job.tenant,
        "owner": job.owner,
        "export-level": job.level.value,
        "resource-types": ",".join(job.request.types),
        "status": job.status.value,
    }
    if agent is not None:
        who, requestor = {"display": agent}, False
    elif job.owner is not None:
        who, requestor = {"identifier": {"value": job.owner}}, True
    else:
        who, requestor = {"display": "unidentified requestor"}, True
    resource = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": _EVENT_TYPE,
        "subtype": [_SUBTYPE],
        "action": _ACTIONS.get(event, "E"),
        "recorded": now_instant(),
        "outcome": outcome,
        "agent": [{"who": who, "requestor": requestor}],
        "source": {"site": job.tenant, "observer": {"display": OBSERVER}},
        "entity": [{
            "what": {"identifier": {"value": job.job_id}},
            "type": _JOB_ENTITY,
            "name": f"bulk export job {job.job_id}",
            "detail": [{"type": k, "valueString": v} for k, v in details.items() if v],
        }],
    }
    if description:
        resource["outcomeDesc"] = description
    return resource


def operator_access_event(command: str, tenant: str, job_id: Optional[str], scope: str) -> dict:
    """The R4 AuditEvent of an operator's `command` across owners: who (the local user), the
    command, the tenant and the job (or, for `list`, the tenant's jobs)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        user = f"uid {os.getuid()}"
    details = {
        "audit-operation": "bulk-export",
        "lifecycle-event": OPERATOR_ACCESS,
        "command": command,
        "scope": scope,
        "job-id": job_id,
        "tenant": tenant,
    }
    what = {"identifier": {"value": job_id}} if job_id else {"display": f"the bulk export jobs of tenant {tenant}"}
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": _EVENT_TYPE,
        "subtype": [_SUBTYPE],
        "action": "D" if command in ("delete", "cleanup") else "R" if command in ("status", "list", "manifest") else "E",
        "recorded": now_instant(),
        "outcome": SUCCESS,
        "outcomeDesc": f"`bulk-export {command} {scope}`: an operator's access regardless of the job's owner",
        "agent": [{"who": {"display": f"operator {user}"}, "requestor": True}],
        "source": {"site": tenant, "observer": {"display": OBSERVER}},
        "entity": [{
            "what": what,
            "type": _JOB_ENTITY,
            "name": f"bulk export job {job_id}" if job_id else f"bulk export jobs of tenant {tenant}",
            "detail": [{"type": k, "valueString": v} for k, v in details.items() if v],
        }],
    }


def access_event(event: str, tenant: str, client_id: Optional[str], outcome: str, description: str,
                 request: Optional[str] = None) -> dict:
    """The R4 AuditEvent of a token request (granted or refused) or a refused protected `request`
    (method and path). It names the client when known; it never holds an assertion or a token."""
    if event not in ACCESS_EVENTS:
        raise ValueError(f"access event {event!r} is not one of {', '.join(ACCESS_EVENTS)}")
    details = {"audit-operation": "bulk-export", "lifecycle-event": event, "tenant": tenant, "request": request}
    who = {"identifier": {"value": client_id}} if client_id else {"display": "unidentified client"}
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": _AUTHENTICATION if event == "token" else _EVENT_TYPE,
        "action": "E",
        "recorded": now_instant(),
        "outcome": outcome,
        "outcomeDesc": description,
        "agent": [{"who": who, "requestor": True}],
        "source": {"site": tenant, "observer": {"display": OBSERVER}},
        "entity": [{"detail": [{"type": k, "valueString": v} for k, v in details.items() if v]}],
    }
