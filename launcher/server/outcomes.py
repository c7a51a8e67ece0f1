"""FHIR OperationOutcome responses: every error the server gives, in the JSON media type asked for.

The default is `application/fhir+json`; a request whose `Accept` names
`application/json` (and not the FHIR type) gets that instead.
"""

from __future__ import annotations

from typing import Optional

from fastapi import Request
from fastapi.responses import JSONResponse

FHIR_JSON = "application/fhir+json"
PLAIN_JSON = "application/json"


class FhirError(Exception):
    """An error answered as an OperationOutcome with `status`; `code` is the FHIR issue type."""

    def __init__(self, status: int, code: str, diagnostics: str, headers: Optional[dict[str, str]] = None,
                 severity: str = "error"):
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics = status, code, diagnostics
        self.headers = headers or {}
        self.severity = severity


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]}


def json_media_type(request: Request) -> str:
    """`application/json` when the client's Accept asks for it and not for FHIR JSON; else FHIR JSON."""
    accept = request.headers.get("accept", "")
    return PLAIN_JSON if PLAIN_JSON in accept and FHIR_JSON not in accept else FHIR_JSON


def outcome_response(request: Request, error: FhirError) -> JSONResponse:
    return JSONResponse(operation_outcome(error.code, error.diagnostics, error.severity), status_code=error.status,
                        headers=error.headers, media_type=json_media_type(request))
