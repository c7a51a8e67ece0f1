"""Safe filesystem names for jobs: validated path segments, per-tenant sources, removal.

A tenant or a job id becomes a folder name, so each is checked to be one plain
segment: no `/`, no `..`, nothing absolute ever reaches the filesystem.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import struct
from typing import Iterable, Optional

from pipelines.settings import ExportSettings
from transforms.errors import Refused
from transforms.storage.files import is_local, open_file
from transforms.storage.locations import check_output, check_source

TENANT_PLACEHOLDER = "{tenant}"
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def check_segment(name: str, value: str) -> str:
    """Returns `value` if it is a safe single path segment, else raises naming `name`."""
    if not isinstance(value, str) or not _SEGMENT.match(value) or ".." in value:
        raise Refused(f"{name} {value!r} must be 1-64 letters, digits, '.', '_' or '-' (no '..'), "
                      "starting with a letter or digit")
    return value


def check_schedule(name: str) -> str:
    return check_segment("--schedule", name)


def check_tenant(tenant: str) -> str:
    """Tenants name folders, so they are restricted to a safe path segment."""
    return check_segment("--tenant", tenant)


def check_job_id(job_id: str) -> str:
    return check_segment("job id", job_id)


def source_for_tenant(source: str, tenant: str) -> str:
    """`source` with `{tenant}` replaced, so a per-tenant layout reads only that tenant's data."""
    return source.replace(TENANT_PLACEHOLDER, check_tenant(tenant))


def tenant_settings(settings: ExportSettings, tenant: str) -> ExportSettings:
    """`settings` for a job of `tenant`: `{tenant}` filled in, local paths made absolute.

    Absolute, because the manifest's URLs and error locations must mean the same
    thing wherever they are read.
    """
    settings = dataclasses.replace(settings, source=source_for_tenant(settings.source, tenant))
    for field in ("source", "output"):
        path = getattr(settings, field)
        if is_local(path):
            settings = dataclasses.replace(settings, **{field: os.path.abspath(path)})
    return settings


def check_locations(settings: ExportSettings, tenant: Optional[str] = None) -> None:
    """Refuses, before any job is recorded, a source that cannot be read or an output that cannot be written.
    A source naming `{tenant}` is checked with `tenant` filled in; without a tenant (a server's defaults), not."""
    source = settings.source if tenant is None else source_for_tenant(settings.source, tenant)
    if TENANT_PLACEHOLDER not in source:
        check_source(source)
    check_output(settings.output)


def job_output_dir(output_dir: str, tenant: str, job_id: str) -> str:
    """A recorded output folder, checked to be `<root>/<tenant>/<job_id>` before anything removes it."""
    parts = output_dir.rstrip("/").split("/")
    if parts[-2:] != [check_tenant(tenant), check_job_id(job_id)] or ".." in parts:
        raise Refused(f"recorded output folder {output_dir!r} is not <output>/{tenant}/{job_id}")
    return output_dir


def source_bytes(files: Iterable[tuple[str, int]]) -> int:
    """The bytes the pipeline will read from `(path, size)` files: gzip counts its content."""
    total = 0
    for path, size in files:
        total += _gzip_content_size(path, size) if path.endswith(".gz") else size
    return total


def _gzip_content_size(path: str, size: int) -> int:
    # The gzip trailer holds the content size modulo 2**32; good enough for a fraction.
    try:
        with open_file(path) as f:  # Beam's FileSystems only for a remote path
            if f.read(2) != b"\x1f\x8b" or size < 18:
                return size
            f.seek(size - 4)
            return struct.unpack("<I", f.read(4))[0] or size
    except (OSError, gzip.BadGzipFile):
        return size
