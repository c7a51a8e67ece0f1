"""FHIR OperationOutcome responses: every error the server gives, in the JSON media type asked for.

The default is `application/fhir+json`; a request whose `Accept` names
`application/json` (and not the FHIR type) gets that instead.
"""

from __future__ import annotations

from typing import Optional

from fastapi import Request
from fastapi.responses import JSONResponse

from transforms.errors import ExportError

FHIR_JSON = "application/fhir+json"
PLAIN_JSON = "application/json"


class FhirError(ExportError):
    """A purely HTTP condition (a bad `Accept`, an oversized body, a failed job's status) answered with
    `status`; `code` is the FHIR issue type. The engine's own errors are `transforms.errors` classes."""

    def __init__(self, status: int, code: str, diagnostics: str, headers: Optional[dict[str, str]] = None):
        super().__init__(diagnostics)
        self.http_status, self.issue_code = status, code
        if headers:
            self.headers = headers


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]}


def json_media_type(request: Request) -> str:
    """`application/json` when the client's Accept asks for it and not for FHIR JSON; else FHIR JSON."""
    accept = request.headers.get("accept", "")
    return PLAIN_JSON if PLAIN_JSON in accept and FHIR_JSON not in accept else FHIR_JSON


def outcome_response(request: Request, error: ExportError) -> JSONResponse:
    """`error` as an OperationOutcome: its status, issue type, message and headers."""
    return JSONResponse(operation_outcome(error.issue_code, str(error)), status_code=error.http_status,
                        headers=dict(error.headers), media_type=json_media_type(request))
