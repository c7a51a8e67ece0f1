"""Whether `--source` and `--output` name places an export can use, checked before any job is recorded.

A local source must exist and be readable (a glob must match a file); a local output
folder must be creatable and writable. A `gs://` location must be well formed (its bucket
is reached only by the run); a PostgreSQL source is checked by `pg_source.parse_source`.
Nothing is created here.
"""

from __future__ import annotations

import glob
import os
import re

from transforms.errors import Refused
from transforms.storage.files import is_gcs, is_local
from transforms.storage.pg_source import is_postgres, parse_source

# A bucket name as GCS allows it (3-222 characters), then an optional object path.
_GCS = re.compile(r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?\Z", re.DOTALL)
_GLOB = re.compile(r"[*?[]")


def check_source(source: str) -> None:
    """Refuses a source that cannot be read: missing, unreadable, a glob matching nothing, or a malformed URL."""
    if is_postgres(source):
        parse_source(source)
    elif not is_local(source):
        _check_gcs("--source", source)
    elif _GLOB.search(source):
        if not glob.glob(source, recursive=True):
            raise Refused(f"--source {source!r} matches no file")
    elif not os.path.exists(source):
        raise Refused(f"--source {source!r}: no such file or folder")
    elif not os.access(source, os.R_OK | (os.X_OK if os.path.isdir(source) else 0)):
        raise Refused(f"--source {source!r} cannot be read")


def check_output(output: str) -> None:
    """Refuses an output root that cannot be written: a file, a folder that cannot be made, or a malformed URL."""
    if not is_local(output):
        _check_gcs("--output", output)
        return
    path = os.path.abspath(output)
    while not os.path.exists(path):  # the nearest folder that exists is the one the output is made in
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise Refused(f"--output {output!r}: {path} is not a folder")
    if not os.access(path, os.W_OK | os.X_OK):
        raise Refused(f"--output {output!r}: {path} cannot be written")


def _check_gcs(flag: str, location: str) -> None:
    if not is_gcs(location):
        kinds = "a local path, a gs:// or a postgresql:// URL" if flag == "--source" else "a local path or a gs:// URL"
        raise Refused(f"{flag} {location!r}: expected {kinds}")
    if not _GCS.match(location):
        raise Refused(f"{flag} {location!r} is not a well-formed gs://bucket/path URL")
