"""Kick-off: `GET|POST [base]/$export`, `[base]/Patient/$export`, `[base]/Group/{id}/$export` (IG v3, export.html).

The handler checks the headers the IG requires, hands the URL or the
Parameters body to the kickoff parser the CLI uses, records the job and
answers 202 with `Content-Location`; the export runs in the background.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from launcher.auth.export_scope import authorize_export
from launcher.kickoff import parser as kickoff
from launcher.server.deps import Caller, Server, caller, prefer, read_body, server
from launcher.server.outcomes import FHIR_JSON, PLAIN_JSON, FhirError

router = APIRouter()
_BODY_TYPES = (FHIR_JSON, PLAIN_JSON)


@router.get("/fhir/$export")
@router.post("/fhir/$export")
@router.get("/fhir/Patient/$export")
@router.post("/fhir/Patient/$export")
@router.get("/fhir/Group/{group_id}/$export")
@router.post("/fhir/Group/{group_id}/$export")
async def kick_off(request: Request, app: Server = Depends(server), who: Caller = Depends(caller)) -> Response:
    lenient = _check_headers(request)
    endpoint = app.config.base_url + request.url.path
    # A refusal (e.g. an unknown Group), a type the token does not cover, the tenant's cap: answered by
    # the server's one error handler.
    query = request.url.query
    url = endpoint + (f"?{query}" if query else "")
    if request.method == "POST":  # with a query, refused as the CLI refuses it
        body = await _parameters(request, app.config.max_body_bytes)
        export = kickoff.parse_post(body, url, strict=not lenient)
    else:
        export = kickoff.parse_get(url, strict=not lenient)
    export, settings = authorize_export(export, app.settings, who.grant)
    job = await run_in_threadpool(app.jobs.start, export, settings, who.tenant, who.owner)
    return Response(status_code=202, headers={"Content-Location": app.config.status_url(job.job_id)})


def _check_headers(request: Request) -> bool:
    """Refuses a kick-off without `Accept: application/fhir+json` and `Prefer: respond-async`;
    returns whether `Prefer` asks for lenient handling."""
    accept = request.headers.get("accept", "")
    if FHIR_JSON not in [part.split(";")[0].strip() for part in accept.split(",")]:
        raise FhirError(400, "invalid", "Accept: a kick-off needs Accept: application/fhir+json")
    preferences = prefer(request)
    if "respond-async" not in preferences:
        raise FhirError(400, "invalid", "Prefer: a kick-off needs Prefer: respond-async")
    return "handling=lenient" in preferences


async def _parameters(request: Request, limit: int) -> dict:
    """The POST body: a FHIR Parameters resource, within `limit` bytes."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type not in _BODY_TYPES:
        raise FhirError(415, "not-supported", f"Content-Type: a kick-off body must be {FHIR_JSON}")
    data = await read_body(request, limit)
    if data is None:
        raise FhirError(413, "too-costly", f"the kick-off body is over {limit} bytes")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FhirError(400, "invalid", "the kick-off body is not valid JSON") from None
