"""`GET [base]/metadata`: the CapabilityStatement of a Bulk Data server (IG v3, the bulk-data CapabilityStatement)."""

from __future__ import annotations

import functools

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from launcher.server.deps import Server, server
from launcher.server.outcomes import FHIR_JSON
from transforms.fhir.instant import now_instant
from transforms.fhir.r4 import RESOURCE_TYPES

router = APIRouter()
BULK_DATA = "http://hl7.org/fhir/uv/bulkdata"
OPERATIONS = {  # where each $export is declared: the system, Patient, Group
    None: ("export", "export"),
    "Patient": ("export", "patient-export"),
    "Group": ("export", "group-export"),
}


@router.get("/fhir/metadata")
def metadata(app: Server = Depends(server)) -> JSONResponse:
    return JSONResponse(capability_statement(app.config.fhir_base), media_type=FHIR_JSON)


@functools.lru_cache(maxsize=4)
def _resources() -> tuple[dict, ...]:
    resources = []
    for name in sorted(RESOURCE_TYPES):
        entry: dict = {"type": name, "interaction": []}
        if name in OPERATIONS:
            op, definition = OPERATIONS[name]
            entry["operation"] = [{"name": op, "definition": f"{BULK_DATA}/OperationDefinition/{definition}"}]
        resources.append(entry)
    return tuple(resources)


def capability_statement(fhir_base: str) -> dict:
    """What this server can do: `$export` at every level, for every R4 resource type."""
    name, definition = OPERATIONS[None]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now_instant(),
        "kind": "instance",
        "instantiates": [f"{BULK_DATA}/CapabilityStatement/bulk-data"],
        "software": {"name": "fhir-bulk-export-beam"},
        "implementation": {"description": "FHIR Bulk Data $export on Apache Beam", "url": fhir_base},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [{
            "mode": "server",
            "resource": list(_resources()),
            "operation": [{"name": name, "definition": f"{BULK_DATA}/OperationDefinition/{definition}"}],
        }],
    }
