"""Where a publication lives: its root, pages and files, their public URLs, atomic writes, its lock.

    <output>/<tenant>/publish/<name>/      served at the publication's public URL P
        $bulk-publish                      the root page: P/$bulk-publish
        manifests/<run>-<n>.json           further root pages, stub pages and update pages
        files/<run>/<Type>-<n>.ndjson      immutable files (deleted/ and error/ below each run too)
        .publish/                          private: never served (configuration, lock, cleanup marks, work)

`PublicationPlace` is what a run, the sweep and the chain walk need of it;
`PublicationFolder` is a local folder: every page is written whole to a
temporary name, fsynced, then renamed over its target (and the folder fsynced),
so a reader sees the old page or the new one, never part of one; its lock is an
`flock`. A `gs://` output is a `PublicationBucket` (`launcher.publish.bucket`).
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
from transforms.storage.files import is_gcs
from transforms.storage.layout import gzip_cache_path

ROOT_NAME = "$bulk-publish"
MANIFESTS, FILES, PRIVATE = "manifests", "files", ".publish"
CONFIG_NAME, LOCK_NAME, MARKS_NAME, WORK_NAME = "publication.json", "lock", "unlisted.json", "work"
PUBLISH_DIR = "publish"
DEFAULT_LOCK_STALE_S = 6 * 3600.0


class PublicationBusy(Busy):
    """Another run of this publication holds its lock: nothing was done."""


def check_name(name: str) -> str:
    return check_segment("publication name", name)


def publication_dir(output: str, tenant: str, name: str) -> str:
    """The folder of publication `name` of `tenant` under an export output folder (local or `gs://`)."""
    if is_gcs(output):
        return f"{output.rstrip('/')}/{check_tenant(tenant)}/{PUBLISH_DIR}/{check_name(name)}"
    return os.path.join(os.path.abspath(output), check_tenant(tenant), PUBLISH_DIR, check_name(name))


def open_publication(output: str, tenant: str, name: str, public_url: Optional[str] = None,
                     lock_stale_s: float = DEFAULT_LOCK_STALE_S) -> "PublicationPlace":
    """Publication `name` of `tenant` under `output`: a local folder, or a `gs://` bucket prefix."""
    where = publication_dir(output, tenant, name)
    if is_gcs(where):
        from launcher.publish.bucket import PublicationBucket

        return PublicationBucket(where, public_url, lock_stale_s)
    return PublicationFolder(where, public_url)


class PublicationPlace:
    """A publication's pages and files wherever they live, and the public URL they are served at.
    Subclasses say how to read, write, list, move in and remove them, and how to lock."""

    path: str
    public_url: str

    def url(self, rel: str) -> str:
        return f"{self.public_url}/{rel}"

    def rel_of(self, url: str) -> str:
        """The publication-relative path a URL of this publication names; `Refused` for any other URL."""
        prefix = self.public_url + "/"
        rel = url[len(prefix):] if url.startswith(prefix) else ""
        if not rel or any(part in ("", ".", "..") for part in rel.split("/")) or rel.startswith(PRIVATE):
            raise Refused(f"{url!r} is not a page of the publication at {self.public_url}")
        return rel

    def read(self, rel: str) -> Optional[bytes]:
        """The bytes at `rel`, or None when there is none."""
        raise NotImplementedError

    def write(self, rel: str, data: bytes) -> None:
        """Writes the page (or private record) `rel` whole: a reader sees the old bytes or the new ones."""
        raise NotImplementedError

    def adopt(self, source: str, rel: str) -> None:
        """Moves an exported file (a path under the work folder) to `rel`, where it is served from."""
        raise NotImplementedError

    def published(self) -> dict[str, int]:
        """The relative path and size of every page and file under `manifests/` and `files/`."""
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        raise NotImplementedError

    def tidy(self) -> None:
        """Removes what no run needs any more: empty folders, the work folder."""
        raise NotImplementedError

    def private(self, name: str) -> str:
        """The path of a private record or folder (`.publish/<name>`)."""
        return f"{self.path}/{PRIVATE}/{name}"

    def lock(self, wait_s: float) -> contextlib.AbstractContextManager:
        """Holds the publication's lock, waiting at most `wait_s`; `PublicationBusy` when another run keeps it."""
        raise NotImplementedError

    def read_page(self, rel: str) -> Optional[dict]:
        """The page at `rel`, or None when there is none."""
        data = self.read(rel)
        return None if data is None else orjson.loads(data)

    def chain(self, start: str = ROOT_NAME) -> Iterator[tuple[str, dict]]:
        """`(rel, page)` of each page from `start` along the `next` links, to the chain's end or marker."""
        rel: Optional[str] = start
        while rel is not None:
            body = self.read_page(rel)
            if body is None:
                if rel == start:
                    return
                raise FileNotFoundError(errno.ENOENT, "a page of the publication links to a missing page",
                                        f"{self.path}/{rel}")
            yield rel, body
            url = next_url(body)
            rel = None if url is None or is_marker(url) else self.rel_of(url)

    def load_private(self, name: str) -> Optional[dict]:
        data = self.read(f"{PRIVATE}/{name}")
        return None if data is None else orjson.loads(data)

    def save_private(self, name: str, value: dict) -> None:
        self.write(f"{PRIVATE}/{name}", orjson.dumps(value, option=orjson.OPT_INDENT_2))

    def busy(self, wait_s: float) -> PublicationBusy:
        return PublicationBusy(f"another run of publication {self.path.rsplit('/', 1)[-1]} is under way"
                               f" (waited {wait_s:g} s); nothing was done")


class PublicationFolder(PublicationPlace):
    """One publication's local folder and the public URL it is served at."""

    def __init__(self, path: str, public_url: Optional[str] = None):
        self.path = path
        self.public_url = (public_url or "file://" + path).rstrip("/")

    def local(self, rel: str) -> str:
        return os.path.join(self.path, rel)

    def private(self, name: str) -> str:
        return os.path.join(self.path, PRIVATE, name)

    def read(self, rel: str) -> Optional[bytes]:
        try:
            with open(self.local(rel), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, rel: str, data: bytes) -> None:
        """A temporary file, fsynced, renamed over `rel`, the folder fsynced."""
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

    def adopt(self, source: str, rel: str) -> None:
        target = self.local(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source.removeprefix("file://"), target)
        sync_dir(os.path.dirname(target))

    def published(self) -> dict[str, int]:
        found = {}
        for top in (MANIFESTS, FILES):
            for dirpath, _, names in os.walk(self.local(top)):
                for name in names:
                    if not name.startswith("."):  # a temporary page being written
                        path = os.path.join(dirpath, name)
                        with contextlib.suppress(FileNotFoundError):
                            found[os.path.relpath(path, self.path)] = os.path.getsize(path)
        return found

    def remove(self, rel: str) -> None:
        """Removes a file, and the server's gzip copy of it if it made one (`launcher.server.gzip_cache`)."""
        for path in (self.local(rel), gzip_cache_path(self.local(rel))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def tidy(self) -> None:
        from transforms.storage.files import remove_tree

        top = self.local(FILES)
        for dirpath, _, _ in os.walk(top, topdown=False):
            if dirpath != top and not os.listdir(dirpath):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        remove_tree(self.private(WORK_NAME))

    @contextlib.contextmanager
    def lock(self, wait_s: float) -> Iterator[None]:
        """An exclusive `flock` on `.publish/lock`, released when the holder ends, even by a kill."""
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
                        raise self.busy(wait_s) from None
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
