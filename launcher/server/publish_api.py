"""`GET <base-url>/publish/{tenant}/{name}/$bulk-publish`, its pages and its files: publications served.

A publication's folder (`launcher.publish.folder`) is served as it is laid out, so
its public URL for `serve` is `<base-url>/publish/<tenant>/<name>` (`publish
--public-url`). Manifests answer 200 `application/json` with an `ETag` over the
body (so it changes exactly when the body does), 304 to a matching
`If-None-Match`, and `Cache-Control: public, max-age=10`; `requiresAccessToken`
says what this server asks (`--auth smart`: true). Files answer with a year's
immutable caching, `Range` and gzip (`files_api.send_file`). Under `--auth
smart` every page and file needs a token of the publication's tenant: a page,
scopes covering every type the publication's request names; an output file,
its type's. Anything else (another tenant's, a private or missing path) is 404.
"""

from __future__ import annotations

import hashlib
import os

from fastapi import APIRouter, Depends, Request, Response

from launcher.core.names import check_segment
from launcher.publish import pages
from launcher.publish.folder import CONFIG_NAME, FILES, MANIFESTS, ROOT_NAME, PublicationFolder, publication_dir
from launcher.server.config import PUBLISH_PATH
from launcher.server.deps import Caller, Server, caller, server
from launcher.server.files_api import covers_all, send_file
from transforms.errors import Forbidden, NotFound, Refused
from transforms.storage.layout import DELETED_DIR, ERROR_DIR, MANIFEST_MIME, NDJSON_MIME

router = APIRouter()
MANIFEST_CACHE = "public, max-age=10"
FILE_CACHE = "public, max-age=31536000, immutable"


@router.get(PUBLISH_PATH + "/{tenant}/{name}/{path:path}")
def published(tenant: str, name: str, path: str, request: Request, app: Server = Depends(server),
              who: Caller = Depends(caller)) -> Response:
    missing = NotFound(f"publication {name} has no {path}")
    parts = path.split("/")
    try:
        if tenant != who.tenant or (path != ROOT_NAME and not all(check_segment("path", p) for p in parts)):
            raise missing
        folder = PublicationFolder(publication_dir(app.settings.output, tenant, name))
    except Refused:
        raise missing from None
    config = folder.load_private(CONFIG_NAME)
    if config is None:
        raise missing
    if path == ROOT_NAME or (parts[0] == MANIFESTS and len(parts) == 2):
        if not covers_all(who, tuple(config.get("types", ()))):
            raise Forbidden("the access token's scopes do not cover every type of this publication")
        return _manifest(folder, path, request, app, missing)
    if parts[0] == FILES and len(parts) >= 3 and os.path.isfile(folder.local(path)):
        if parts[-2] not in (DELETED_DIR, ERROR_DIR) and not who.grant.covers(parts[-1].rsplit("-", 1)[0]):
            raise Forbidden(f"the access token's scopes do not cover {parts[-1].rsplit('-', 1)[0]}")
        app.metrics.downloads.inc()
        return send_file(folder.local(path), request, NDJSON_MIME, {"Cache-Control": FILE_CACHE})
    raise missing


def _manifest(folder: PublicationFolder, rel: str, request: Request, app: Server, missing: NotFound) -> Response:
    body = folder.read_page(rel)
    if body is None:
        raise missing
    body["requiresAccessToken"] = app.tokens is not None
    data = pages.dumps(body)
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": MANIFEST_CACHE}
    asked = {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}
    if etag in asked or "*" in asked:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=MANIFEST_MIME, headers=headers)
