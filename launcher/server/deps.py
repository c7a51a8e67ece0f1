"""The server's shared state, handed to handlers as a FastAPI dependency."""

from __future__ import annotations

import dataclasses

from fastapi import Request

from launcher.audit import AuditLog
from launcher.server.background import BackgroundJobs
from launcher.server.config import ServerConfig
from launcher.stores import JobStore
from pipelines.settings import ExportSettings


@dataclasses.dataclass
class Server:
    """What every handler uses: the configuration, the store, the audit log and the running jobs."""

    config: ServerConfig
    store: JobStore
    audit: AuditLog
    jobs: BackgroundJobs
    settings: ExportSettings  # the export defaults, with manifest URLs under this server's /files


async def server(request: Request) -> Server:  # async: no thread hop per request
    return request.app.state.server
