"""A publication's folder: where its root, pages and files live, their public URLs, atomic writes, its lock.

    <output>/<tenant>/publish/<name>/      served at the publication's public URL P
        $bulk-publish                      the root page: P/$bulk-publish
        manifests/<run>-<n>.json           further root pages, stub pages and update pages
        files/<run>/<Type>-<n>.ndjson      immutable files (deleted/ and error/ below each run too)
        .publish/                          private: never served (configuration, lock, cleanup marks, work)

Every page is written whole to a temporary name, fsynced, then renamed over its
target (and the folder fsynced), so a reader sees the old page or the new one,
never part of one. Local folders only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from typing import Iterator, Optional

import orjson

from launcher.core.names import check_segment, check_tenant
from launcher.publish.pages import is_marker, next_url
from transforms.errors import Busy, Refused

ROOT_NAME = "$bulk-publish"
MANIFESTS, FILES, PRIVATE = "manifests", "files", ".publish"
CONFIG_NAME, LOCK_NAME, MARKS_NAME, WORK_NAME = "publication.json", "lock", "unlisted.json", "work"
PUBLISH_DIR = "publish"


class PublicationBusy(Busy):
    """Another run of this publication holds its lock: nothing was done."""


def check_name(name: str) -> str:
    return check_segment("publication name", name)


def publication_dir(output: str, tenant: str, name: str) -> str:
    """The folder of publication `name` of `tenant` under an export output folder."""
    return os.path.join(os.path.abspath(output), check_tenant(tenant), PUBLISH_DIR, check_name(name))


class PublicationFolder:
    """One publication's folder on disk and the public URL it is served at."""

    def __init__(self, path: str, public_url: Optional[str] = None):
        self.path = path
        self.public_url = (public_url or "file://" + path).rstrip("/")

    def local(self, rel: str) -> str:
        return os.path.join(self.path, rel)

    def url(self, rel: str) -> str:
        return f"{self.public_url}/{rel}"

    def rel_of(self, url: str) -> str:
        """The folder-relative path a URL of this publication names; `Refused` for any other URL."""
        prefix = self.public_url + "/"
        rel = url[len(prefix):] if url.startswith(prefix) else ""
        if not rel or any(part in ("", ".", "..") for part in rel.split("/")) or rel.startswith(PRIVATE):
            raise Refused(f"{url!r} is not a page of the publication at {self.public_url}")
        return rel

    def read_page(self, rel: str) -> Optional[dict]:
        """The page at `rel`, or None when there is none."""
        try:
            with open(self.local(rel), "rb") as f:
                return orjson.loads(f.read())
        except FileNotFoundError:
            return None

    def chain(self, start: str = ROOT_NAME) -> Iterator[tuple[str, dict]]:
        """`(rel, page)` of each page from `start` along the `next` links, to the chain's end or marker."""
        rel: Optional[str] = start
        while rel is not None:
            body = self.read_page(rel)
            if body is None:
                if rel == start:
                    return
                raise FileNotFoundError(errno.ENOENT, "a page of the publication links to a missing page",
                                        self.local(rel))
            yield rel, body
            url = next_url(body)
            rel = None if url is None or is_marker(url) else self.rel_of(url)

    def write(self, rel: str, data: bytes) -> None:
        """Writes `rel` atomically: a temporary file, fsynced, renamed over it, the folder fsynced."""
        target = self.local(rel)
        folder = os.path.dirname(target)
        os.makedirs(folder, exist_ok=True)
        temp = os.path.join(folder, f".{os.path.basename(target)}.{os.getpid()}.tmp")
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
        sync_dir(folder)

    def private(self, name: str) -> str:
        return os.path.join(self.path, PRIVATE, name)

    def load_private(self, name: str) -> Optional[dict]:
        try:
            with open(self.private(name), "rb") as f:
                return orjson.loads(f.read())
        except FileNotFoundError:
            return None

    def save_private(self, name: str, value: dict) -> None:
        self.write(os.path.join(PRIVATE, name), orjson.dumps(value, option=orjson.OPT_INDENT_2))

    @contextlib.contextmanager
    def lock(self, wait_s: float) -> Iterator[None]:
        """Holds the publication's lock (an exclusive `flock`), waiting at most `wait_s` for it;
        `PublicationBusy` when another run keeps it longer. Released when the holder ends, even by a kill."""
        os.makedirs(self.private(""), exist_ok=True)
        fd = os.open(self.private(LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise PublicationBusy(f"another run of publication {os.path.basename(self.path)} is under"
                                              f" way (waited {wait_s:g} s); nothing was done") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)  # releases the lock


def sync_dir(folder: str) -> None:
    """fsyncs a folder, so a rename in it survives a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
