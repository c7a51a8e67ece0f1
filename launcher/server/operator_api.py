"""The operator's view: a read-only page of every job at `/` and `/jobs/{id}`, and `GET /metrics`.

Who may read them (one rule, `operator`): with `--admin-token`, a request
carrying that token, as `Authorization: Bearer <token>` (Prometheus, curl) or
in the `bulk_export_admin` cookie that `POST /login` sets (a browser: the
token never appears in a URL); without it, only a loopback client, and only
under `--auth none` (where anyone who reaches the server may export anyway).
Tokens are compared in constant time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Optional
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from launcher.core.names import check_job_id
from launcher.server import operator_html as pages
from launcher.server.deps import Server, read_body, server
from launcher.server.metrics import CONTENT_TYPE
from launcher.server.outcomes import FhirError
from launcher.server.status_api import expires_at
from launcher.stores import ANY_OWNER, JobNotFound, StoredJob
from pipelines.models import ExportStatus
from transforms.errors import NotFound, Refused

router = APIRouter()
COOKIE = "bulk_export_admin"
MAX_JOBS = 500  # the newest shown on the list page
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self';"
                                       " frame-ancestors 'none'"}


def operator(request: Request, app: Server = Depends(server)) -> None:
    """Lets the operator through (see the module's docstring); else 401 (no or a wrong token) or 403."""
    expected = app.config.admin_token
    if expected is None:
        if app.config.auth != "none" or not _loopback(request):
            raise FhirError(403, "forbidden", "the operator page and /metrics need `serve --admin-token`"
                            " (without it: only loopback clients, with --auth none)")
        return
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    given = bearer.strip() if scheme.lower() == "bearer" else request.cookies.get(COOKIE, "")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise FhirError(401, "login", "the admin token is required: Authorization: Bearer <token>, or log in"
                        " at /login", {"WWW-Authenticate": 'Bearer realm="bulk-export operator"'})


def _loopback(request: Request) -> bool:
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:  # not an IP address (a test client, a Unix socket)
        return False


@router.get("/", response_class=HTMLResponse, dependencies=[Depends(operator)])
def jobs_page(app: Server = Depends(server)) -> HTMLResponse:
    jobs = sorted(app.all_jobs(), key=lambda job: (job.created_at, job.job_id), reverse=True)[:MAX_JOBS]
    expires = {job.job_id: _expires(app, job) for job in jobs}
    return _html(pages.jobs_page(jobs, _prefix(app), expires))


@router.get("/jobs/{job_id}", response_class=HTMLResponse, dependencies=[Depends(operator)])
def job_page(job_id: str, app: Server = Depends(server)) -> HTMLResponse:
    job = _find(app, job_id)
    manifest = app.store.manifest(job.tenant, job_id) if job.status is ExportStatus.COMPLETE else None
    events = app.audit.job_events(job.tenant, job_id)
    return _html(pages.job_page(job, _prefix(app), _expires(app, job), manifest, events))


@router.get("/jobs/{job_id}/manifest.json", dependencies=[Depends(operator)])
def job_manifest(job_id: str, app: Server = Depends(server)) -> JSONResponse:
    job = _find(app, job_id)
    if job.status is not ExportStatus.COMPLETE:
        raise NotFound(f"job {job_id} is {job.status.value}: it has no manifest yet")
    return JSONResponse(app.store.manifest(job.tenant, job_id).to_json_dict(), headers={"Cache-Control": "no-store"})


@router.get("/metrics", dependencies=[Depends(operator)])
async def metrics(app: Server = Depends(server)) -> Response:
    return Response(await run_in_threadpool(app.metrics.exposition), media_type=CONTENT_TYPE)


@router.get("/login", response_class=HTMLResponse)
def login_form() -> HTMLResponse:
    form = ('<h1>Bulk export: operator login</h1><form method="post" action="login"><label>Admin token '
            '<input type="password" name="token" autocomplete="current-password" required></label> '
            '<button type="submit">Log in</button></form>')
    return _html(pages.page("bulk-export: log in", form, refresh=False))


@router.post("/login")
async def login(request: Request, app: Server = Depends(server)) -> Response:
    """Checks the posted admin token and keeps it in an HttpOnly, SameSite=Strict cookie."""
    body = await read_body(request, 4096)
    token = dict(parse_qsl((body or b"").decode("latin-1"), keep_blank_values=True)).get("token", "")
    expected = app.config.admin_token
    if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
        raise FhirError(401, "login", "wrong admin token" if expected else "this server has no --admin-token")
    response = RedirectResponse(_prefix(app) + "/", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path=_prefix(app) + "/",
                        secure=app.config.base_url.startswith("https://"))
    return response


def _find(app: Server, job_id: str) -> StoredJob:
    """The job of any tenant this server serves, any owner's."""
    try:
        check_job_id(job_id)
    except Refused:
        raise NotFound(f"no export job {job_id!r}") from None
    for tenant in app.tenants():
        try:
            return app.store.get(tenant, job_id, ANY_OWNER)
        except JobNotFound:
            continue
    raise NotFound(f"no export job {job_id!r}")


def _expires(app: Server, job: StoredJob) -> Optional[str]:
    if not job.status.is_terminal:
        return None
    moment = expires_at(job, app.config.cleanup_ttl_s)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _prefix(app: Server) -> str:
    """The public URL's path (behind a proxy, e.g. `/api`), before every link of the page."""
    return urlsplit(app.config.base_url).path.rstrip("/")


def _html(text: str) -> HTMLResponse:
    return HTMLResponse(text, headers=_HEADERS)

