"""`bulk-export manifest JOB --refresh-urls`: a stored manifest with its GCS URLs signed afresh.

Signed URLs expire; the objects they name do not. Refreshing signs every
output and error file again, from now, with the service-account key, so a
client gets working URLs without the export running again.
"""

from __future__ import annotations

from pipelines.models import Manifest, OutputFile
from transforms.errors import Refused
from transforms.storage.urls import resign


def refresh_urls(manifest: Manifest, ttl_s: int, key_path: str = "") -> Manifest:
    """`manifest` with every file URL re-signed for `ttl_s` seconds (`requiresAccessToken` false)."""
    entries = manifest.output + manifest.error
    if not entries:
        return manifest
    if any(e.url.startswith("file:") for e in entries):
        raise Refused("--refresh-urls: this job's files are local (file://); only gs:// output is signed")
    urls = resign([e.url for e in entries], ttl_s, key_path)
    fresh = [OutputFile(type=e.type, url=url, count=e.count) for e, url in zip(entries, urls)]
    n = len(manifest.output)
    return manifest.model_copy(update={"output": fresh[:n], "error": fresh[n:], "requires_access_token": False})
