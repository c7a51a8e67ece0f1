"""Status and delete: `GET` and `DELETE` of the status URL a kick-off answered with.

While a job runs: 202 with `X-Progress` and `Retry-After`. Complete: 200 with
the manifest and an `Expires` header (when cleanup will remove it). Failed: a
500 OperationOutcome naming the reason. Unknown, deleted or another tenant's:
404. DELETE answers 202 in every state, stopping a running pipeline and
removing its files; afterwards the job and its files are 404. With `--auth
smart`, both need a bearer token, and only its client's jobs are visible
(another client's, of any tenant, are 404).
"""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime
from typing import Optional

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from launcher.core.names import check_job_id, tenant_settings
from launcher.jobs.lifecycle import delete_job
from launcher.jobs.manifest_pages import manifest_page, requires_token
from launcher.server.config import STATUS_PATH
from launcher.server.deps import Caller, Server, caller, server
from launcher.server.outcomes import FhirError
from launcher.stores import InvalidJobState, JobNotFound, StoredJob
from pipelines.models import ExportStatus
from transforms.errors import NotFound, Refused
from transforms.fhir.instant import instant_key
from transforms.storage.source_files import relative_paths, source_root

router = APIRouter()


@router.get(STATUS_PATH + "/{job_id}")
async def status(job_id: str, page: Optional[int] = None, app: Server = Depends(server),
                 who: Caller = Depends(caller)) -> Response:
    return await app.read(_status, app, who, job_id, page)  # the hot path of every client: see `Server.read`


def _status(app: Server, who: Caller, job_id: str, page: Optional[int]) -> Response:
    record = _job(app, who, job_id)
    if record.request.allow_partial_manifests and record.status in (ExportStatus.IN_PROGRESS, ExportStatus.COMPLETE):
        return _page(app, who, record, 1 if page is None else page)
    if page is not None:
        raise Refused("page: only an export kicked off with allowPartialManifests=true has pages")
    if not record.status.is_terminal:
        return _in_progress(app, record)
    if record.status is ExportStatus.COMPLETE:
        manifest = app.store.manifest(who.tenant, job_id, who.owner)
        if app.tokens is not None:  # its files are served only to a bearer of a token
            manifest = manifest.model_copy(update={"requires_access_token": True})
        return JSONResponse(manifest.to_json_dict(), headers={"Expires": _expires(record, app.config.cleanup_ttl_s)})
    if record.status is ExportStatus.CANCELLED:
        raise NotFound(f"job {job_id} was cancelled")
    raise FhirError(500, "exception", f"job {job_id} failed: {_failure(app, record)}")


def _failure(app: Server, record: StoredJob) -> str:
    """Why the job failed, as a client may read it: its source's files named relative to the source,
    never by the server's paths (the store, for the operator, keeps them whole)."""
    try:
        source = app.store.run_spec(record.job_id)["settings"]["source"]
    except (InvalidJobState, KeyError, TypeError):  # recorded without its run settings: this server's source
        source = tenant_settings(app.settings, record.tenant).source
    return relative_paths(record.error_message or "unknown error", source_root(source))


def _page(app: Server, who: Caller, record: StoredJob, page: int) -> Response:
    """A page of an allowPartialManifests export's manifest (200), or 202 while it is not ready."""
    if page < 1:
        raise Refused("page: must be 1 or more")
    requires = app.tokens is not None or requires_token(app.store, record)
    base = app.config.status_url(record.job_id)
    manifest = manifest_page(app.store, record, who.owner, page, lambda n: f"{base}?page={n}", requires,
                             app.config.manifest_page_files)
    if manifest is None:
        if record.status is ExportStatus.COMPLETE:
            raise NotFound(f"page {page}: the manifest has fewer pages")
        return _in_progress(app, record)
    if record.status is ExportStatus.COMPLETE:
        headers = {"Expires": _expires(record, app.config.cleanup_ttl_s)}
    else:  # a page served while the export runs says how far it is
        headers = {"X-Progress": progress_text(record)}
    return JSONResponse(manifest.to_json_dict(), headers=headers)


def _in_progress(app: Server, record: StoredJob) -> Response:
    """202: not there yet, with how far the export is and when to ask again."""
    headers = {"X-Progress": progress_text(record), "Retry-After": str(app.config.retry_after_s)}
    return Response(status_code=202, headers=headers)


@router.delete(STATUS_PATH + "/{job_id}")
def delete(job_id: str, app: Server = Depends(server), who: Caller = Depends(caller)) -> Response:
    _job(app, who, job_id)
    try:
        delete_job(app.store, app.audit, who.tenant, job_id, who.owner)
    except JobNotFound:  # deleted meanwhile
        pass
    return Response(status_code=202)


def _job(app: Server, who: Caller, job_id: str) -> StoredJob:
    try:
        return app.store.get(who.tenant, check_job_id(job_id), who.owner)
    except (JobNotFound, Refused):  # a bad job id looks the same
        raise NotFound(f"no export job {job_id!r}") from None


def progress_text(record: StoredJob) -> str:
    """A short human progress line, e.g. `in-progress: 41% read; Observation 1,204`."""
    text = record.status.value
    if record.fraction is not None:
        text += f": {record.fraction:.0%} read"
    if record.progress:
        top = max(record.progress, key=lambda p: p.exported)
        text += f"; {top.type} {top.exported:,}"
    return text[:99]


def _expires(record: StoredJob, ttl_s: float) -> str:
    return format_datetime(expires_at(record, ttl_s), usegmt=True)


def expires_at(record: StoredJob, ttl_s: float) -> dt.datetime:
    """When cleanup removes a finished job: `ttl_s` after it ended."""
    seconds, _ = instant_key(record.completed_at or record.created_at)
    return dt.datetime.fromtimestamp(seconds + ttl_s, dt.timezone.utc)
