"""A publication under a `gs://` output: the same layout as objects, so the bucket itself can serve it.

Pages are written with `Cache-Control: public, max-age=10` and `application/json`,
files with `public, max-age=31536000, immutable` (they never change). An object
write is atomic on GCS (a reader gets the old object or the new one), so the run's
order (each page before any link to it; the new page, then the previous last page
overwritten) gives the same guarantee as the local folder's renames.

The lock is the object `.publish/lock`, created with `ifGenerationMatch=0` (only one
run can create it) and deleted, with its generation as precondition, on release.
A run that dies keeps it: a lock older than `lock_stale_s` is taken over (deleted
on its generation, then created again), so set that above the longest run. The
public URL defaults to the bucket's own path-style URL
(`https://storage.googleapis.com/<bucket>/<prefix>`, the emulator's when
`STORAGE_EMULATOR_HOST` is set). `.publish/` is private to the runs but, in a
publicly readable bucket, readable too: it holds no secret (the request and URLs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from typing import Iterator, Optional

import orjson

from launcher.publish.folder import FILES, LOCK_NAME, MANIFESTS, PRIVATE, WORK_NAME, PublicationPlace
from transforms.storage import files as storage
from transforms.storage.layout import MANIFEST_MIME, NDJSON_MIME
from transforms.storage.urls import GCS_ENDPOINT

PAGE_CACHE = "public, max-age=10"
FILE_CACHE = "public, max-age=31536000, immutable"
PRIVATE_CACHE = "no-store"


class PublicationBucket(PublicationPlace):
    """One publication's objects under `gs://bucket/prefix` and the public URL they are served at."""

    def __init__(self, path: str, public_url: Optional[str], lock_stale_s: float):
        self.path = path.rstrip("/")
        self.bucket_name, self.prefix = storage.split(self.path)
        default = f"{storage.emulator_host() or GCS_ENDPOINT}/{self.bucket_name}/{self.prefix}"
        self.public_url = (public_url or default).rstrip("/")
        self.lock_stale_s = lock_stale_s
        self._bucket = storage.client().bucket(self.bucket_name)

    def _blob(self, rel: str):
        return self._bucket.blob(f"{self.prefix}/{rel}")

    def read(self, rel: str) -> Optional[bytes]:
        from google.api_core.exceptions import NotFound

        try:
            return self._blob(rel).download_as_bytes()
        except NotFound:
            return None

    def write(self, rel: str, data: bytes) -> None:
        blob = self._blob(rel)
        blob.cache_control = PRIVATE_CACHE if rel.startswith(PRIVATE) else PAGE_CACHE
        blob.upload_from_string(data, content_type=MANIFEST_MIME)

    def adopt(self, source: str, rel: str) -> None:
        """A server-side rewrite of the work object (under `.publish/work/`, so in this bucket's project),
        then its metadata, then the work object removed."""
        target = self._blob(rel)
        bucket, name = storage.split(source)
        origin = storage.client().bucket(bucket).blob(name)
        target.cache_control, target.content_type = FILE_CACHE, NDJSON_MIME
        token, _, _ = target.rewrite(origin)
        while token is not None:
            token, _, _ = target.rewrite(origin, token=token)
        target.cache_control, target.content_type = FILE_CACHE, NDJSON_MIME
        target.patch()  # the rewrite carries them on GCS; the emulator keeps the source's metadata
        origin.delete()

    def published(self) -> dict[str, int]:
        found = {}
        for top in (MANIFESTS, FILES):
            for blob in self._bucket.client.list_blobs(self._bucket, prefix=f"{self.prefix}/{top}/"):
                found[blob.name[len(self.prefix) + 1:]] = blob.size or 0
        return found

    def remove(self, rel: str) -> None:
        from google.api_core.exceptions import NotFound

        with contextlib.suppress(NotFound):
            self._blob(rel).delete()

    def tidy(self) -> None:
        storage.remove_tree(self.private(WORK_NAME))

    @contextlib.contextmanager
    def lock(self, wait_s: float) -> Iterator[None]:
        """Creates `.publish/lock` only if absent (`ifGenerationMatch=0`); deletes it on release."""
        from google.api_core.exceptions import NotFound, PreconditionFailed

        name = f"{PRIVATE}/{LOCK_NAME}"
        deadline = time.monotonic() + wait_s
        while True:
            mine = self._blob(name)
            try:
                mine.upload_from_string(orjson.dumps({"pid": os.getpid(), "host": os.uname().nodename}),
                                        content_type=MANIFEST_MIME, if_generation_match=0)
                break
            except PreconditionFailed:
                held = self._bucket.get_blob(mine.name)
                if held is not None and _age_s(held.time_created) >= self.lock_stale_s:
                    with contextlib.suppress(NotFound, PreconditionFailed):
                        held.delete(if_generation_match=held.generation)  # a stale lock: take it over
                    continue
                if time.monotonic() >= deadline:
                    raise self.busy(wait_s) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            with contextlib.suppress(NotFound, PreconditionFailed):
                mine.delete(if_generation_match=mine.generation)


def _age_s(created: Optional[dt.datetime]) -> float:
    if created is None:
        return 0.0
    return (dt.datetime.now(dt.timezone.utc) - created).total_seconds()
