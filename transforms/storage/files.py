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


def join(base: str, *parts: str) -> str:
    """`base` and `parts` joined as Beam's `FileSystems.join` does; Beam is imported only for a remote path."""
    if is_local(base):
        return os.path.join(base, *parts)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(base, *parts)


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


def publish_once(temp: str, final: str, root: str = "") -> None:
    """Moves the finished object `temp` to `final`, which must not exist yet.

    On GCS the copy carries `ifGenerationMatch=0`, so an existing `final`
    (another run's manifest) is never overwritten: `ObjectExists` is raised and
    `temp` is removed. Elsewhere it is a plain rename (`move`, below `root`).
    """
    if not is_gcs(final):
        move([temp], [final], root)
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


def remove_abandoned(paths: list[str], temp_dir: str, within: str = "") -> None:
    """Removes the parts a stale attempt wrote, then its temp folder and the job folder above it if
    they are empty (writing a part may have created them again after a cancel removed them); with
    `within` (a folder of the temp folder), first the files' own folders and it, if empty."""
    from apache_beam.io.filesystems import FileSystems

    for path in paths:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    if is_local(temp_dir):
        inner = sorted({os.path.dirname(path) for path in paths}, reverse=True) + [within] if within else []
        for folder in (*inner, temp_dir, os.path.dirname(temp_dir.rstrip("/"))):
            try:
                os.rmdir(folder)
            except OSError:  # not empty (another bundle's parts, a live attempt's), or gone
                return


def create_file(path: str, mime: str = NDJSON_MIME, root: str = "") -> IO[bytes]:
    """Opens `path` for writing, creating its folders; a remote path through Beam's FileSystems.

    A local file is never written through a link put in place of it or of any folder between `root`
    (the output root; default the file's folder's parent) and it: each is opened with `O_NOFOLLOW`
    from the one above (`local_folder`), so the open fails instead."""
    if is_local(path):
        folder, name = os.path.split(path)
        parent = local_folder(folder or ".", root, create=True)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666, dir_fd=parent)
        finally:
            os.close(parent)
        return os.fdopen(fd, "wb")
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.create(path, mime, CompressionTypes.UNCOMPRESSED)


def make_folders(path: str, root: str = "") -> None:
    """Creates the folder `path` and those above it, below `root` never through a link (see `create_file`)."""
    if is_local(path):
        os.close(local_folder(path, root, create=True))
        return
    from apache_beam.io.filesystems import FileSystems

    FileSystems.mkdirs(path)


def move(sources: list[str], destinations: list[str], root: str = "") -> None:
    """Renames each of `sources` to the same place of `destinations`; locally never through a link at a
    folder below `root` (see `create_file`), remotely through Beam's FileSystems."""
    if not all(is_local(p) for p in (*sources, *destinations)):
        from apache_beam.io.filesystems import FileSystems

        FileSystems.rename(sources, destinations)
        return
    for source, destination in zip(sources, destinations):
        (old, old_name), (new, new_name) = os.path.split(source), os.path.split(destination)
        old_fd = local_folder(old or ".", root)
        try:
            new_fd = local_folder(new or ".", root)
            try:
                os.rename(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd)
            finally:
                os.close(new_fd)
        finally:
            os.close(old_fd)


def local_folder(folder: str, root: str = "", create: bool = False) -> int:
    """A descriptor of the local `folder`, reached from `root` one folder at a time, each opened with
    `O_NOFOLLOW` relative to the one above (and created first, with `create`): a link planted at any
    folder below `root` fails with `OSError` instead of being followed. `root` itself is taken as
    configured (it may be a link); without one, the folder's parent is.
    """
    folder = os.path.normpath(folder)
    root = os.path.normpath(root) if root else os.path.dirname(folder) or "."
    below = os.path.relpath(folder, root)
    steps = [] if below == "." else below.split(os.sep)
    if steps[:1] == [".."]:
        raise Refused(f"{folder!r} is not under the output root {root!r}")
    if create:
        os.makedirs(root, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for step in steps:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(step, 0o777, dir_fd=fd)
            inner = os.open(step, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: str) -> IO[bytes]:
    """Opens `path` for reading, as stored (no decompression); a remote path through Beam's FileSystems."""
    if is_local(path):
        return open(path, "rb")
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
