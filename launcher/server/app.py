"""The FastAPI application of `bulk-export serve`: routes, error answers and the maintenance loop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import importlib
import logging
import threading
import time

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from launcher.auth.access_tokens import AccessTokens
from launcher.auth.token_service import TokenService
from launcher.jobs.lifecycle import cleanup_expired, recover_abandoned
from launcher.jobs.process import RunControl
from launcher.server import (
    files_api,
    kickoff_api,
    metadata_api,
    operator_api,
    publish_api,
    read_api,
    status_api,
    token_api,
)
from launcher.server.background import BackgroundJobs
from launcher.server.config import ServerConfig
from launcher.server.deps import Server, audit_refusal
from launcher.server.job_events import ObservedAuditLog
from launcher.server.logs import AccessLog
from launcher.server.metrics import Metrics
from launcher.server.outcomes import FhirError, outcome_response
from launcher.server.read_index import ReadIndexes
from launcher.stores import StoreBusy, StoreUnavailable, open_store
from pipelines.workers import WorkerBudget, machine_cores
from transforms.errors import ExportError, Forbidden, Unauthorized

_LOG = logging.getLogger(__name__)
# Pipelines run at a lower CPU priority than the server, so status polls stay fast while exports run.
PIPELINE_NICENESS = 10
_STATUS_CODES = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported", 413: "too-costly",
                 415: "not-supported"}


def create_app(config: ServerConfig) -> FastAPI:
    """The server for `config`; its state is built at start-up."""
    app = FastAPI(title="FHIR Bulk Data $export", lifespan=_lifespan(config), docs_url=None, redoc_url=None,
                  openapi_url=None)
    # read_api last: its `[base]/{type}/{id}` must not shadow `[base]/Patient/$export` or `bulk-status/{job}`.
    for module in (kickoff_api, status_api, files_api, publish_api, metadata_api, token_api, operator_api, read_api):
        app.include_router(module.router)
    app.add_exception_handler(ExportError, _export_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(_DeclaredBodyLimit, limit=config.max_body_bytes)
    app.add_middleware(AccessLog)  # the outermost: it sees every answer, a 413 of the body limit too
    return app


def build_server(config: ServerConfig) -> Server:
    store = open_store(config.store_url)  # refuses a URL carrying a password
    store.keep_connections()  # a status answer is one small read: opening a connection for it cost the most
    metrics = Metrics(lambda: server.all_jobs())
    audit = ObservedAuditLog(config.state_dir, metrics)
    budget = WorkerBudget(config.worker_budget or machine_cores())
    control = RunControl(audit, config.max_active, config.lease_s, nice=PIPELINE_NICENESS, workers=budget)
    jobs = BackgroundJobs(store, control, config.beam_args)
    settings = dataclasses.replace(config.settings, file_url_base=config.files_base)
    server = Server(config, store, audit, jobs, settings, metrics)
    server.reads = ReadIndexes(config.state_dir, settings.source, settings.source_format, config.read_index_interval_s)
    if config.auth == "smart":
        server.tokens = AccessTokens(store, issuer=config.base_url + "/auth", audience=config.fhir_base)
        server.token_service = TokenService(store, config.token_url, server.tokens, audit, config.tenant)
    return server


def _lifespan(config: ServerConfig):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.server = server = build_server(config)
        threading.Thread(target=_warm_up, name="warm-up", daemon=True).start()
        task = asyncio.create_task(_maintain(server))
        indexing = asyncio.create_task(run_in_threadpool(_index_sources, server))
        try:
            yield
        finally:
            task.cancel()
            indexing.cancel()
            server.reads.close()

    return lifespan


def _warm_up() -> None:
    """Readies the first kick-off in the background, so that readiness does not wait for it: imports the
    job runner (Beam, ~1 s holding the GIL) and starts the process pipelines are forked from
    (`launcher.jobs.process`), which imports Beam and the runner in turn. Then moves every object alive
    so far out of the garbage collector's sight (`gc.freeze`): Beam's modules are a few hundred thousand
    objects, which each full collection would otherwise walk while every request waits."""
    started = time.monotonic()
    try:
        from launcher.jobs.process import warm_fork_server

        importlib.import_module("launcher.jobs.attempts")
        warm_fork_server()
    except Exception:  # the first kick-off does it again, and says what fails
        _LOG.exception("warming up the pipeline process failed")
        return
    finally:
        gc.freeze()
    _LOG.info("the pipeline process is warm (%.1f s after start-up)", time.monotonic() - started)


async def _maintain(server: Server) -> None:
    """Ends jobs whose lease lapsed (a killed server's) and removes jobs past the TTL, periodically."""
    while True:
        try:
            await run_in_threadpool(_maintain_once, server)
        except StoreUnavailable as exc:  # busy (a store client frozen in a transaction) or out of reach: one line
            _LOG.warning("maintenance skipped: %s; it runs again in %g s", exc, server.config.maintenance_every_s)
        except Exception:  # the next round tries again
            _LOG.exception("maintenance failed")
        await asyncio.sleep(server.config.maintenance_every_s)


def _index_sources(server: Server) -> None:
    """Builds (or brings up to date) the read index of every tenant this server serves, at start-up."""
    for tenant in server.tenants():
        try:
            server.reads.fresh(tenant)
        except Exception:  # a request tries again
            _LOG.exception("indexing the source of tenant %s for reads failed", tenant)


def _maintain_once(server: Server) -> None:
    recover_abandoned(server.store, server.audit)
    for tenant, owner in server.job_owners():
        cleanup_expired(server.store, server.audit, server.config.cleanup_ttl_s, tenant=tenant, owner=owner)


class _DeclaredBodyLimit:
    """Answers 413 to a request whose Content-Length is over `limit` before anything reads it
    (a pure ASGI middleware: Starlette's `BaseHTTPMiddleware` costs every request a task group)."""

    def __init__(self, app, limit: int):
        self._app, self._limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self._limit):
                request = Request(scope)
                error = FhirError(413, "too-costly", f"request bodies are limited to {self._limit} bytes")
                await refusal(request, error)(scope, receive, send)
                return
        await self._app(scope, receive, send)


async def _export_error(request: Request, exc: ExportError):
    """Every error of the engine, answered as its OperationOutcome. A refused access is audited; a 429 says
    when to ask again; a failure on the server's side (5xx, unless a `FhirError` chose it) tells nothing of
    itself."""
    server: Server = request.app.state.server
    if isinstance(exc, StoreBusy):
        busy = {"Retry-After": str(server.config.retry_after_s)}
        return refusal(request, FhirError(exc.http_status, exc.issue_code, exc.client_message, busy))
    if exc.http_status >= 500 and not isinstance(exc, FhirError):
        return await _unexpected(request, exc)
    if isinstance(exc, (Unauthorized, Forbidden)):
        await run_in_threadpool(audit_refusal, server, request, exc)
    response = refusal(request, exc)
    if exc.http_status == 429:
        response.headers["Retry-After"] = str(server.config.retry_after_s * 5)
    return response


async def _http_error(request: Request, exc: StarletteHTTPException):
    code = _STATUS_CODES.get(exc.status_code, "processing")
    return refusal(request, FhirError(exc.status_code, code, str(exc.detail), dict(exc.headers or {})))


async def _validation_error(request: Request, exc: RequestValidationError):
    return refusal(request, FhirError(400, "invalid", "the request is malformed"))


def refusal(request: Request, error: ExportError):
    """`error`'s OperationOutcome, a 4xx counted in the metrics by status and FHIR issue type."""
    if error.http_status < 500:
        request.app.state.server.metrics.refusals.labels(str(error.http_status), error.issue_code).inc()
    return outcome_response(request, error)


async def _unexpected(request: Request, exc: Exception):
    _LOG.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return outcome_response(request, FhirError(500, "exception", "internal error"))
