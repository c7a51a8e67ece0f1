"""Discovery: `GET [base]/metadata`, the CapabilityStatement of a Bulk Data server (IG v3), and with
`--auth smart`, `GET [base]/.well-known/smart-configuration` (SMART App Launch 2.x, Backend Services).

Per resource type the statement lists the search parameters a `_typeFilter` can use (the search
compiler's own rule, `runnable_parameters`) and those only the REST search serves (`REST_SEARCH`, with
a `documentation` saying so), the REST interactions the server serves
(`Server.interactions`), and, for a type it serves but a Patient- or Group-level `$export` cannot
export, the IG's `operation-not-supported` extension naming that operation."""

from __future__ import annotations

import functools
import importlib.metadata
from typing import Mapping, Optional, Sequence

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from launcher.auth.keys import SIGNING_ALGORITHMS
from launcher.kickoff.level_types import exportable_types
from launcher.server.config import SMART_CONFIGURATION_PATH
from launcher.server.deps import Server, server
from launcher.server.outcomes import FHIR_JSON
from launcher.server.read_api import REST_SEARCH
from pipelines.models import ExportLevel
from transforms.errors import NotFound
from transforms.fhir.instant import now_instant
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.search.compiler import runnable_parameters

router = APIRouter()
BULK_DATA = "http://hl7.org/fhir/uv/bulkdata"
OPERATIONS = {  # where each $export is declared: the system, Patient, Group
    None: ("export", "export"),
    "Patient": ("export", "patient-export"),
    "Group": ("export", "group-export"),
}
LEVEL_OPERATIONS = {ExportLevel.PATIENT: "patient-export", ExportLevel.GROUP: "group-export"}
NOT_SUPPORTED = f"{BULK_DATA}/Extension/operation-not-supported"
SOFTWARE = "fhir-bulk-export-beam"  # the distribution's name (setup.py)
REST_ONLY = "REST search only (GET [base]/{type}?...): not a _typeFilter parameter"


OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"


@router.get("/fhir/metadata")
def metadata(app: Server = Depends(server)) -> JSONResponse:
    token_url = app.config.token_url if app.tokens is not None else None
    statement = capability_statement(app.config.fhir_base, token_url, app.interactions())
    return JSONResponse(statement, media_type=FHIR_JSON)


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


@functools.lru_cache(maxsize=1)
def _search_params() -> dict[str, tuple[dict, ...]]:
    """Per type, the `searchParam` entries: every parameter `_typeFilter` can use (`_lastUpdated` too)."""
    return {name: tuple({"name": param, "type": kind} for param, kind in runnable_parameters(name))
            for name in RESOURCE_TYPES}


@functools.lru_cache(maxsize=1)
def software_version() -> str:
    try:
        return importlib.metadata.version(SOFTWARE)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _resource(name: str, interactions: Sequence[str]) -> dict:
    entry: dict = {"type": name}
    if interactions:  # a type the REST API serves that a level's $export cannot export (IG v3)
        extensions = [{"url": NOT_SUPPORTED, "valueCanonical": f"{BULK_DATA}/OperationDefinition/{definition}"}
                      for level, definition in LEVEL_OPERATIONS.items()
                      if name not in exportable_types(level)]
        if extensions:
            entry["extension"] = extensions
    entry["interaction"] = [{"code": code} for code in interactions]
    entry["searchParam"] = list(_search_params()[name])
    if "search-type" in interactions:
        listed = {param["name"] for param in entry["searchParam"]}
        entry["searchParam"] += [{"name": param, "type": kind, "documentation": REST_ONLY}
                                 for param, kind in REST_SEARCH.get(name, ()) if param not in listed]
    if name in OPERATIONS:
        op, definition = OPERATIONS[name]
        entry["operation"] = [{"name": op, "definition": f"{BULK_DATA}/OperationDefinition/{definition}"}]
    return entry


def capability_statement(fhir_base: str, token_url: Optional[str] = None,
                         interactions: Optional[Mapping[str, Sequence[str]]] = None) -> dict:
    """What this server can do: `$export` at every level, for every R4 resource type, with the REST
    `interactions` it serves by type; with `token_url`, SMART Backend Services protect it. A Patient- or
    Group-level export can name any type but Group (Patient level) in `_type`: the types outside the
    compartment as supporting resources."""
    name, definition = OPERATIONS[None]
    interactions = interactions or {}
    rest: dict = {
        "mode": "server",
        "resource": [_resource(t, interactions.get(t, ())) for t in sorted(RESOURCE_TYPES)],
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
        "software": {"name": SOFTWARE, "version": software_version()},
        "implementation": {"description": "FHIR Bulk Data $export on Apache Beam", "url": fhir_base},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [rest],
    }
