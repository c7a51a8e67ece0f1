"""Google Cloud Storage for the export: paths, one client, create-once publishing, tree removal.

Reading and writing parts go through Beam's GCS filesystem (registered by
importing Beam; `gs://` paths just work). This module adds what Beam's
FileSystems cannot say: "write this object only if it does not exist yet"
(the manifest), removing a "folder" (a prefix), and a client for signing.

With `STORAGE_EMULATOR_HOST` set (tests, local trials), Beam would spend
~22 s retrying the search for Google credentials before falling back to
anonymous access; importing this module tells Beam to be anonymous at once.
"""

from __future__ import annotations

import os
from typing import Optional

from apache_beam.io.filesystems import FileSystems

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
SCHEME = "gs://"


class ObjectExists(FileExistsError):
    """A create-once write found its object already there."""


def is_gcs(path: str) -> bool:
    return path.startswith(SCHEME)


def split(path: str) -> tuple[str, str]:
    """`gs://bucket/name` -> `("bucket", "name")`; refuses anything else."""
    if not is_gcs(path) or "/" not in path[len(SCHEME):]:
        raise ValueError(f"{path!r} is not a gs://bucket/object path")
    bucket, name = path[len(SCHEME):].split("/", 1)
    if not bucket or not name:
        raise ValueError(f"{path!r} is not a gs://bucket/object path")
    return bucket, name


def emulator_host() -> Optional[str]:
    return os.environ.get(EMULATOR_ENV) or None


def use_anonymous_credentials_for_emulator() -> bool:
    """With an emulator configured, makes Beam's GCS access anonymous without its credential search."""
    if not emulator_host():
        return False
    from apache_beam.internal.gcp import auth

    # Beam caches its one credential lookup per process; seeding the cache with
    # "none" is what it would reach itself after ~22 s of retries.
    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials = None
        auth._Credentials._credentials_init = True
    return True


use_anonymous_credentials_for_emulator()


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
    if is_gcs(path):
        folder = path.rstrip("/") + "/"
        if FileSystems.match([folder + "**"])[0].metadata_list:
            FileSystems.delete([folder])
        if FileSystems.exists(path.rstrip("/")):
            FileSystems.delete([path.rstrip("/")])
        return
    if FileSystems.exists(path):
        FileSystems.delete([path])
