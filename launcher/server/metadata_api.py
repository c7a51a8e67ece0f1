"""Discovery: `GET [base]/metadata`, the CapabilityStatement of a Bulk Data server (IG v3), and with
`--auth smart`, `GET [base]/.well-known/smart-configuration` (SMART App Launch 2.x, Backend Services)."""

from __future__ import annotations

import functools
from typing import Optional

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from launcher.auth.keys import SIGNING_ALGORITHMS
from launcher.server.config import SMART_CONFIGURATION_PATH
from launcher.server.deps import Server, server
from launcher.server.outcomes import FHIR_JSON
from transforms.errors import NotFound
from transforms.fhir.instant import now_instant
from transforms.fhir.r4 import RESOURCE_TYPES

router = APIRouter()
BULK_DATA = "http://hl7.org/fhir/uv/bulkdata"
OPERATIONS = {  # where each $export is declared: the system, Patient, Group
    None: ("export", "export"),
    "Patient": ("export", "patient-export"),
    "Group": ("export", "group-export"),
}


OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


@router.get("/fhir/metadata")
def metadata(app: Server = Depends(server)) -> JSONResponse:
    token_url = app.config.token_url if app.tokens is not None else None
    return JSONResponse(capability_statement(app.config.fhir_base, token_url), media_type=FHIR_JSON)


@router.get(SMART_CONFIGURATION_PATH)
def smart_configuration(app: Server = Depends(server)) -> JSONResponse:
    if app.tokens is None:
        raise NotFound("this server needs no access token (--auth none)")
    return JSONResponse({
        "issuer": app.tokens.issuer,
        "token_endpoint": app.config.token_url,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
        "scopes_supported": ["system/*.read", "system/*.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    })


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


def capability_statement(fhir_base: str, token_url: Optional[str] = None) -> dict:
    """What this server can do: `$export` at every level, for every R4 resource type; with `token_url`,
    SMART Backend Services protect it."""
    name, definition = OPERATIONS[None]
    rest: dict = {
        "mode": "server",
        "resource": list(_resources()),
        "operation": [{"name": name, "definition": f"{BULK_DATA}/OperationDefinition/{definition}"}],
    }
    if token_url:
        rest["security"] = {
            "extension": [{"url": OAUTH_URIS, "extension": [{"url": "token", "valueUri": token_url}]}],
            "service": [{"coding": [{"system": SECURITY_SERVICE, "code": "SMART-on-FHIR"}]}],
        }
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
        "rest": [rest],
    }
