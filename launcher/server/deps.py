"""The server's shared state and the caller of each request, handed to handlers as FastAPI dependencies."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, TypeVar, Union

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from launcher.auth.access_tokens import AccessTokens, InvalidToken
from launcher.auth.scopes import EVERYTHING, Grant
from launcher.auth.token_service import TokenService
from launcher.core.audit import MINOR_FAILURE, AuditLog
from launcher.server.background import BackgroundJobs
from launcher.server.config import ServerConfig
from launcher.server.metrics import Metrics
from launcher.server.read_index import ReadIndexes
from launcher.stores import ANY_OWNER, JobStore, StoredJob
from pipelines.settings import ExportSettings
from transforms.errors import Forbidden, Unauthorized
from transforms.fhir.group import GROUP

T = TypeVar("T")


@dataclasses.dataclass
class Server:
    """What every handler uses: the configuration, the store, the audit log and the running jobs."""

    config: ServerConfig
    store: JobStore
    audit: AuditLog
    jobs: BackgroundJobs
    settings: ExportSettings  # the export defaults, with manifest URLs under this server's /files
    metrics: Metrics
    tokens: Optional[AccessTokens] = None  # with --auth smart
    token_service: Optional[TokenService] = None
    reads: Optional[ReadIndexes] = None  # the read and Group search indexes, by tenant

    async def read(self, work: Callable[..., T], *args) -> T:
        """`work(*args)`, a handler's reads of the store: on the event loop when they wait on no network
        (`JobStore.quick_reads`; a worker thread's hop and its GIL hand-offs cost a status answer two
        thirds of its CPU), else in a worker thread, so that a slow store never holds up other requests."""
        if self.store.quick_reads:
            return work(*args)
        return await run_in_threadpool(work, *args)

    def job_owners(self) -> list[tuple[str, Optional[str]]]:
        """Whose jobs this server serves: its own tenant and owner's, and with `--auth smart` every
        registered client's (its tenant, owned by its id)."""
        owners = [(self.config.tenant, self.config.owner)]
        if self.tokens is not None:
            owners += [(client.tenant, client.client_id) for client in self.store.clients()]
        return owners

    def tenants(self) -> list[str]:
        """The tenants this server serves, each once."""
        return list(dict.fromkeys(tenant for tenant, _ in self.job_owners()))

    def all_jobs(self) -> list[StoredJob]:
        """Every job of the tenants this server serves, any owner's, finished ones too: the operator's view."""
        return [job for tenant in self.tenants() for job in self.store.list(tenant, ANY_OWNER, include_terminal=True)]

    def interactions(self) -> dict[str, tuple[str, ...]]:
        """The FHIR REST interactions this server serves, by resource type: the one place the
        CapabilityStatement takes them from. `read` of each type that `launcher.server.read_api` serves
        and a served tenant's source holds, and Group `read` and `search-type` wherever the source can be
        indexed; nothing for a source served by `$export` only."""
        indexes = [index for tenant in self.tenants() if self.reads is not None
                   and (index := self.reads.fresh(tenant)) is not None]
        if not indexes:
            return {}
        types = sorted(set().union(*(index.types() for index in indexes)))
        served: dict[str, tuple[str, ...]] = {name: ("read",) for name in types}
        served[GROUP] = ("read", "search-type")
        return served


@dataclasses.dataclass(frozen=True)
class Caller:
    """Whose request this is: the tenant and owner whose jobs it sees, and the types it may read."""

    tenant: str
    owner: Optional[str]
    grant: Grant = EVERYTHING
    client_id: Optional[str] = None


async def server(request: Request) -> Server:  # async: no thread hop per request
    return request.app.state.server


async def read_body(request: Request, limit: int) -> Optional[bytes]:
    """The request body, or None once it passes `limit` bytes (a chunked body has no Content-Length)."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


def prefer(request: Request) -> list[str]:
    """The preferences the request's `Prefer` headers name (`respond-async`, `handling=lenient`, ...)."""
    return [part.strip() for header in request.headers.getlist("prefer") for part in header.split(",")]


async def caller(request: Request, app: Server = Depends(server)) -> Caller:
    """The caller: with `--auth smart`, the client a valid bearer token names (else 401); without,
    the server's own tenant and owner. It is kept in `request.state.caller` (whose refusal is audited).
    Async, so that it makes no thread hop unless the store's reads need one (`Server.read`)."""
    if app.tokens is None:
        who = Caller(app.config.tenant, app.config.owner)
    else:
        who = await app.read(_bearer, request, app)
    request.state.caller = who
    return who


def _bearer(request: Request, app: Server) -> Caller:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized(app, "an access token is required: Authorization: Bearer <token>", None)
    try:
        principal = app.tokens.verify(token.strip())
    except InvalidToken as exc:
        raise _unauthorized(app, str(exc), "invalid_token") from None
    client = app.store.client(principal.client_id)
    if client is None or client.tenant != principal.tenant:
        raise _unauthorized(app, "the access token's client is no longer registered", "invalid_token")
    return Caller(principal.tenant, principal.client_id, principal.grant, principal.client_id)


def _unauthorized(app: Server, diagnostics: str, error: Optional[str]) -> Unauthorized:
    """401 with the RFC 6750 challenge."""
    challenge = f'Bearer realm="{app.config.fhir_base}"'
    if error:
        challenge += f', error="{error}", error_description="{diagnostics}"'
    return Unauthorized(diagnostics, challenge)


def audit_refusal(app: Server, request: Request, error: Union[Unauthorized, Forbidden]) -> None:
    """Audits a refused access in its caller's tenant log (the server's tenant when the caller is unknown)."""
    who: Optional[Caller] = getattr(request.state, "caller", None)
    tenant, client_id = (who.tenant, who.client_id) if who is not None else (app.config.tenant, None)
    app.audit.access("access-refused", tenant, client_id, MINOR_FAILURE, f"{error.http_status}: {error}",
                     f"{request.method} {request.url.path}")
