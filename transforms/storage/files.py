"""Where output lives: local paths and Google Cloud Storage, with create-once publishing and tree removal.

Reading and writing parts go through Beam's FileSystems (`gs://` paths just
work once Beam is imported). This module adds what FileSystems cannot say:
"write this object only if it does not exist yet" (the manifest), removing a
"folder" (a prefix), and a client for signing. It imports Beam only when a
remote path needs it, so the control plane can remove local output without it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from typing import IO, Optional

from transforms.errors import Refused
from transforms.storage.layout import NDJSON_MIME

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
SCHEME = "gs://"
_SCHEME = re.compile(r"([a-zA-Z][-a-zA-Z0-9+.]*)://")  # as Beam's FileSystems.get_scheme reads a path


class ObjectExists(FileExistsError):
    """A create-once write found its object already there."""


def is_gcs(path: str) -> bool:
    return path.startswith(SCHEME)


def is_local(path: str) -> bool:
    """True for a path on this machine's filesystem (no `scheme://`), as Beam's FileSystems decides."""
    return _SCHEME.match(path) is None


def split(path: str) -> tuple[str, str]:
    """`gs://bucket/name` -> `("bucket", "name")`; refuses anything else."""
    if not is_gcs(path) or "/" not in path[len(SCHEME):]:
        raise Refused(f"{path!r} is not a gs://bucket/object path")
    bucket, name = path[len(SCHEME):].split("/", 1)
    if not bucket or not name:
        raise Refused(f"{path!r} is not a gs://bucket/object path")
    return bucket, name


def emulator_host() -> Optional[str]:
    return os.environ.get(EMULATOR_ENV) or None


def client():
    """A google-cloud-storage client configured as Beam's GCS filesystem is (anonymous on an emulator)."""
    from apache_beam.io.gcp.gcsio import create_storage_client
    from apache_beam.options.pipeline_options import PipelineOptions

    return create_storage_client(PipelineOptions([]))


def publish_once(temp: str, final: str) -> None:
    """Moves the finished object `temp` to `final`, which must not exist yet.

    On GCS the copy carries `ifGenerationMatch=0`, so an existing `final`
    (another run's manifest) is never overwritten: `ObjectExists` is raised and
    `temp` is removed. Elsewhere it is a plain rename.
    """
    from apache_beam.io.filesystems import FileSystems

    if not is_gcs(final):
        FileSystems.rename([temp], [final])
        return
    from google.api_core.exceptions import PreconditionFailed

    gcs = client()
    (src_bucket, src_name), (dst_bucket, dst_name) = split(temp), split(final)
    source = gcs.bucket(src_bucket)
    try:
        source.copy_blob(source.blob(src_name), gcs.bucket(dst_bucket), dst_name, if_generation_match=0)
    except PreconditionFailed:
        source.blob(src_name).delete()
        raise ObjectExists(f"{final} already exists; it is never overwritten") from None
    source.blob(src_name).delete()


def remove_tree(path: str) -> None:
    """Removes a file or a folder tree if present; on GCS, every object under `path/`."""
    if is_local(path):
        # Another remover (a concurrent delete, cleanup or cancel) may take files from under this one.
        while os.path.isdir(path) and not os.path.islink(path):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(path)
        if os.path.lexists(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return
    from apache_beam.io.filesystems import FileSystems

    if is_gcs(path):
        folder = path.rstrip("/") + "/"
        if FileSystems.match([folder + "**"])[0].metadata_list:
            FileSystems.delete([folder])
        if FileSystems.exists(path.rstrip("/")):
            FileSystems.delete([path.rstrip("/")])
        return
    if FileSystems.exists(path):
        FileSystems.delete([path])


def remove_abandoned(paths: list[str], temp_dir: str) -> None:
    """Removes the parts a stale attempt wrote, then its temp folder and the job folder above it if
    they are empty (writing a part may have created them again after a cancel removed them)."""
    from apache_beam.io.filesystems import FileSystems

    for path in paths:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    if is_local(temp_dir):
        for folder in (temp_dir, os.path.dirname(temp_dir.rstrip("/"))):
            try:
                os.rmdir(folder)
            except OSError:  # not empty (another bundle's parts, a live attempt's), or gone
                return


def create_file(path: str, mime: str = NDJSON_MIME) -> IO[bytes]:
    """Opens `path` for writing, creating its folders; a remote path through Beam's FileSystems.

    A local file is never written through a link put in place of it or of its folder: both are
    opened with `O_NOFOLLOW`, so the open fails instead (every file created here lies in a job folder,
    which the launcher creates anew)."""
    if is_local(path):
        folder, name = os.path.split(path)
        os.makedirs(folder or ".", exist_ok=True)
        parent = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666, dir_fd=parent)
        finally:
            os.close(parent)
        return os.fdopen(fd, "wb")
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.create(path, mime, CompressionTypes.UNCOMPRESSED)


def open_file(path: str) -> IO[bytes]:
    """Opens `path` for reading, as stored (no decompression); a remote path through Beam's FileSystems."""
    if is_local(path):
        return open(path, "rb")
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
