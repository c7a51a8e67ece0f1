"""Attachment files in a job's folder: `attachments/<Type>/<sha1>`, named by their content.

Content-addressed, so the same content served for many resources is one file, and a
retried bundle writes nothing new. A file is written under a hidden temporary name and
renamed into place, so no name ever shows half a file. A local file is hard-linked when it
can be (the same filesystem), never symlinked; otherwise, and on GCS, it is copied.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from typing import IO, Iterable, NamedTuple

from transforms.fhir.attachments import attachment_hash
from transforms.storage.files import create_file, is_local
from transforms.storage.layout import ATTACHMENTS_DIR

_CHUNK = 1 << 20
FILE_NAME = re.compile(r"^[0-9a-f]{40}$")  # a served attachment's name: its SHA-1, in hex
MIME = "application/octet-stream"


class Stored(NamedTuple):
    """A file's content identity: its name (SHA-1 hex), size and `Attachment.hash` (SHA-1, base64)."""

    name: str
    size: int
    hash: str


def folder(job_dir: str, resource_type: str) -> str:
    """Where the attachments served for resources of `resource_type` live in a job's folder."""
    return f"{job_dir.rstrip('/')}/{ATTACHMENTS_DIR}/{resource_type}"


def write_content(chunks: Iterable[bytes], dest: str) -> Stored:
    """Writes `chunks` into the folder `dest`, named by their SHA-1."""
    temp = f"{dest}/.tmp-{uuid.uuid4().hex}"
    digest, size = hashlib.sha1(), 0
    with create_file(temp, MIME) as out:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    stored = Stored(digest.hexdigest(), size, attachment_hash(digest.digest()))
    _rename(temp, f"{dest}/{stored.name}")
    return stored


def place_file(source: IO[bytes], dest: str) -> Stored:
    """Puts an opened source file into the folder `dest`: hard-linked when both are local on one
    filesystem (at the path the kernel opened, and kept only if the link is the very file opened),
    else copied."""
    fileno = _fileno(source)
    if fileno is None or not is_local(dest):
        return write_content(_chunks(source), dest)
    digest, size = hashlib.sha1(), 0
    for chunk in _chunks(source):
        digest.update(chunk)
        size += len(chunk)
    stored = Stored(digest.hexdigest(), size, attachment_hash(digest.digest()))
    final = f"{dest}/{stored.name}"
    if os.path.lexists(final):
        return stored
    os.makedirs(dest, exist_ok=True)
    opened = os.fstat(fileno)
    try:
        os.link(os.readlink(f"/proc/self/fd/{fileno}"), final, follow_symlinks=False)
    except FileExistsError:
        return stored
    except OSError:  # another filesystem, no /proc, or a hard-link protection: copy
        pass
    else:
        linked = os.lstat(final)
        if (linked.st_dev, linked.st_ino) == (opened.st_dev, opened.st_ino):
            return stored
        os.remove(final)  # the name led elsewhere by the time it was linked
    source.seek(0)
    return write_content(_chunks(source), dest)


def place_staged(staged: str, stored: Stored, dest: str) -> None:
    """Puts a staged file (`stage`d under the attempt's temporary folder) into the folder `dest`."""
    final = f"{dest}/{stored.name}"
    if is_local(final):
        if os.path.lexists(final):
            return
        os.makedirs(dest, exist_ok=True)
        try:
            os.link(staged, final, follow_symlinks=False)
        except FileExistsError:
            pass
        except OSError:  # another filesystem: copy
            with open(staged, "rb") as f:
                write_content(_chunks(f), dest)
        return
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(final):
        FileSystems.copy([staged], [final])


def _rename(temp: str, final: str) -> None:
    if is_local(final):
        os.replace(temp, final)  # the same name means the same content
        return
    from apache_beam.io.filesystems import FileSystems

    FileSystems.rename([temp], [final])


def _fileno(source: IO[bytes]):
    try:
        return source.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _chunks(source: IO[bytes]) -> Iterable[bytes]:
    while chunk := source.read(_CHUNK):
        yield chunk
