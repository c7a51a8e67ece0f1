"""`POST [base-url]/auth/token`: the SMART Backend Services token endpoint (RFC 6749 client credentials,
RFC 7523 `private_key_jwt` client assertion).

It takes `application/x-www-form-urlencoded` only. A token is answered as
RFC 6749 5.1 says (`no-store`); a refusal as 5.2, `{error, error_description}`
with 400, or 401 for `invalid_client`. Without `--auth smart` there is no
token endpoint (404).

Token requests run in at most `TOKEN_THREADS` threads of their own, not in
the thread pool that kick-off, status and download requests share: a flood
of assertions (say, naming a client whose `jwks_url` hangs) waits for these
threads and never delays the other endpoints.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from launcher.auth.assertion import TokenRefused
from launcher.server.config import TOKEN_PATH
from launcher.server.deps import Server, read_body, server
from transforms.errors import NotFound

router = APIRouter()
FORM = "application/x-www-form-urlencoded"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_FORM_BYTES = 64 << 10
_MAX_FIELDS = 16
TOKEN_THREADS = 2
_TOKEN_LIMITER = anyio.CapacityLimiter(TOKEN_THREADS)


@router.post(TOKEN_PATH)
async def token(request: Request, app: Server = Depends(server)) -> JSONResponse:
    if app.token_service is None:
        raise NotFound("this server does not issue tokens (--auth none)")
    try:
        try:
            form = await _form(request)
        except TokenRefused as exc:
            app.token_service.audit_refusal(exc)
            raise
        answer = await anyio.to_thread.run_sync(app.token_service.exchange, form, limiter=_TOKEN_LIMITER)
    except TokenRefused as exc:
        app.metrics.token_refusals.labels(exc.error).inc()
        return JSONResponse({"error": exc.error, "error_description": exc.description}, status_code=exc.http_status,
                            headers=_NO_STORE)
    app.metrics.token_grants.inc()
    return JSONResponse(answer, headers=_NO_STORE)


async def _form(request: Request) -> list[tuple[str, str]]:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != FORM:
        raise TokenRefused("invalid_request", f"the token request must be {FORM}")
    body = await read_body(request, _MAX_FORM_BYTES)
    if body is None:
        raise TokenRefused("invalid_request", f"the token request is over {_MAX_FORM_BYTES} bytes")
    try:
        return parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                         max_num_fields=_MAX_FIELDS)
    except (UnicodeDecodeError, ValueError):
        raise TokenRefused("invalid_request", "the token request is not a valid form") from None
