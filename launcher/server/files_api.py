"""Downloads: the files a complete job's manifest lists, streamed from the output folder.

Only a file the job's manifest names is ever served, so no path can reach
outside it, and only to the job's own client: with `--auth smart`, an output
file needs a bearer token whose scopes cover its resource type, while error
and deleted files (about the export's own, already authorized, types) need
any token of that client. `Range` requests are answered 206 (a client resumes a download);
without `Range`, a client that accepts gzip gets the file gzip-compressed,
with its `Content-Length` once it has been compressed (`gzip_cache`: the first
such download compresses it as it streams, and stores the result for the
next). `HEAD` is answered as a `GET` without `Accept-Encoding` would be,
without the body: the same checks and status, `Content-Type` and the file's
`Content-Length`. Nothing is read into memory whole.

Attachment content (`attachments/<Type>/<sha1>`, which `Attachment.url`s of the job's
resources name) is listed in no manifest entry: it is served from the job's own folder,
once the job is complete (or while an allowPartialManifests export runs), to a token whose
scopes cover `<Type>`, as an output file of that type is.
"""

from __future__ import annotations

import os
import stat
from typing import Optional

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from launcher.core.names import check_job_id
from launcher.jobs.manifest_pages import listed_file
from launcher.server.config import FILES_PATH
from launcher.server.deps import Caller, Server, caller, server
from launcher.server.gzip_cache import CHUNK, cached, compress_and_store
from launcher.stores import JobNotFound
from pipelines.models import ExportStatus, OutputFile
from transforms.errors import Forbidden, NotFound, Refused
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.storage.attachment_files import FILE_NAME
from transforms.storage.attachment_files import MIME as ATTACHMENT_MIME
from transforms.storage.layout import ATTACHMENTS_DIR, NDJSON_MIME, PARQUET_MIME

router = APIRouter()
_VARY = {"Vary": "Accept-Encoding"}


@router.api_route(FILES_PATH + "/{tenant}/{job_id}/{path:path}", methods=["GET", "HEAD"])
def download(tenant: str, job_id: str, path: str, request: Request, app: Server = Depends(server),
             who: Caller = Depends(caller)) -> Response:
    local = _listed_file(app, who, request, tenant, job_id, path)
    if request.method == "GET":
        app.metrics.downloads.inc()
    media_type = PARQUET_MIME if path.endswith(".parquet") else NDJSON_MIME
    if path.startswith(ATTACHMENTS_DIR + "/"):
        media_type = ATTACHMENT_MIME  # the Attachment's contentType says what it is
    return send_file(local, request, media_type)


def send_file(local: str, request: Request, media_type: str, headers: Optional[dict[str, str]] = None) -> Response:
    """A local file as the answer: `HEAD` and `Range` answered by Starlette from the file itself; else, to a
    client that accepts gzip, its stored gzip copy (made by the first such download)."""
    headers = {**(headers or {}), **_VARY}
    if request.method == "HEAD" or "range" in request.headers \
            or not _accepts_gzip(request.headers.get("accept-encoding", "")):
        return _File(local, media_type=media_type, headers=headers)  # HEAD: Starlette sends the headers only
    gzip_headers = {**headers, "Content-Encoding": "gzip"}
    copy = cached(local)
    if copy is not None:
        return _File(copy, media_type=media_type, headers=gzip_headers)
    return StreamingResponse(compress_and_store(local), media_type=media_type, headers=gzip_headers)


class _File(FileResponse):
    """Starlette's file response (Range included), in larger chunks."""

    chunk_size = CHUNK


def _listed_file(app: Server, who: Caller, request: Request, tenant: str, job_id: str, path: str) -> str:
    """The local path of a file the caller's job lists in its manifest; 404 for anything else, and 403
    for an output file of a type the caller's token does not cover."""
    missing = NotFound("no such file")
    if tenant != who.tenant:
        raise missing
    try:
        record = app.store.get(tenant, check_job_id(job_id), who.owner)
    except (JobNotFound, Refused):  # a bad job id looks the same
        raise missing from None
    if path.startswith(ATTACHMENTS_DIR + "/"):
        return _attachment(who, record, path)
    url = f"{app.config.files_base}/{tenant}/{job_id}/{path}"
    if record.status is ExportStatus.IN_PROGRESS and record.request.allow_partial_manifests:
        early = listed_file(app.store, record, url)  # published while the export runs
        if early is None:
            raise missing
        output = OutputFile(type=early.type, url=url, count=early.count) if early.kind == "output" else None
    elif record.status is not ExportStatus.COMPLETE:
        raise missing
    else:
        manifest = app.store.manifest(tenant, job_id, who.owner)
        output = next((entry for entry in manifest.output if entry.url == url), None)
        if output is None and url not in {entry.url for entry in manifest.error + manifest.deleted}:
            raise missing
    if output is not None and output.type is not None and not who.grant.covers(output.type):
        raise Forbidden(f"the access token's scopes do not cover {output.type}")
    if output is not None and output.type is None and not covers_all(who, record.request.types):
        # A file of patient blocks holds every type the job exported.
        raise Forbidden("the access token's scopes do not cover every type of this export")
    local = os.path.join(record.output_dir, path)
    if not os.path.isfile(local):
        raise NotFound("the file is gone (the job was removed)")
    return local


def _attachment(who: Caller, record, path: str) -> str:
    """The local path of an attachment file of the caller's job: 404 for a name that is not one, before
    the job is complete (unless it publishes parts as it goes), or once it is gone; 403 for a type the
    caller's token does not cover."""
    missing = NotFound("no such file")
    parts = path.split("/")
    if len(parts) != 3 or parts[1] not in RESOURCE_TYPES or not FILE_NAME.match(parts[2]):
        raise missing
    ready = record.status is ExportStatus.COMPLETE or (
        record.status is ExportStatus.IN_PROGRESS and record.request.allow_partial_manifests)
    if not ready:
        raise missing
    if not who.grant.covers(parts[1]):
        raise Forbidden(f"the access token's scopes do not cover {parts[1]}")
    local = os.path.join(record.output_dir, *parts)
    try:
        if not stat.S_ISREG(os.lstat(local).st_mode):  # only the regular file the export wrote, never a link
            raise missing
    except FileNotFoundError:
        raise NotFound("the file is gone (the job was removed)") from None
    return local


def covers_all(who: Caller, types: tuple[str, ...]) -> bool:
    """Whether the caller's scopes cover every one of `types` (none: every type)."""
    return who.grant.all_types if not types else all(who.grant.covers(t) for t in types)


def _accepts_gzip(accept_encoding: str) -> bool:
    for part in accept_encoding.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False

