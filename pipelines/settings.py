"""The user's per-run settings of an export, whose defaults every entry point (CLI, options, server) shares.

Beam-free: the control plane validates settings and shows their defaults
without importing Beam. `pipelines.options` turns them into pipeline options.
"""

from __future__ import annotations

import dataclasses

from transforms.errors import Refused
from transforms.fhir.compartment import COMPARTMENT_TYPES
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.storage.files import is_gcs
from transforms.storage.pg_source import is_postgres, parse_source
from transforms.storage.source_formats import CHUNK_BYTES
from transforms.storage.urls import DEFAULT_TTL_S, ManifestUrls

# The embedded local runner: Beam's FnApiRunner runs in this process and never
# downloads anything. Beam 2.77's DirectRunner first fetches a Prism binary.
LOCAL_RUNNER = "pipelines.local_runner.LocalRunner"
SAFE_RUNNING_MODES = ("in_memory", "multi_processing")


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """Where to read and write, and the output limits: what a user chooses per run."""

    source: str
    output: str
    source_format: str = "auto"
    max_lines_per_part: int = 100_000
    max_bytes_per_part: int = 256 << 20
    chunk_bytes: int = CHUNK_BYTES
    include_missing_last_updated: bool = True
    # Above this many patients, a Patient/Group export joins by key instead of a side input.
    max_side_input_patients: int = 200_000
    # Types outside the Patient compartment added, where referenced, to Patient/Group exports.
    include_referenced: str = ""
    # GCS output: V4 signed URLs in the manifest, valid url_ttl seconds, signed with this key.
    signed_urls: bool = False
    url_ttl: int = DEFAULT_TTL_S
    signing_key: str = ""
    # Local output served over HTTP (`bulk-export serve`): manifest URLs are this base + <tenant>/<job>/<file>.
    file_url_base: str = ""

    def __post_init__(self) -> None:
        self.urls  # checks url_ttl
        if is_postgres(self.source):
            parse_source(self.source)  # a table named, no password in the URL
        if self.signed_urls and not is_gcs(self.output):
            raise Refused(f"--signed-urls needs a gs:// --output, not {self.output!r}")
        for name in self.referenced_types:
            if name not in RESOURCE_TYPES:
                raise Refused(f"--include-referenced: {name!r} is not an R4 resource type")
            if name in COMPARTMENT_TYPES:
                raise Refused(
                    f"--include-referenced: {name} is in the Patient compartment, so it is exported already"
                )

    @property
    def urls(self) -> ManifestUrls:
        return ManifestUrls(self.signed_urls, self.url_ttl, self.signing_key, self.file_url_base)

    @property
    def referenced_types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.strip() for t in self.include_referenced.split(",") if t.strip()))

    @classmethod
    def from_namespace(cls, namespace: object) -> "ExportSettings":
        """Reads the fields from an object with attributes of the same names
        (parsed CLI arguments or `ExportOptions`; booleans may be "true"/"false"). A field the
        object lacks and that has a default (e.g. `file_url_base`, which only a server sets) keeps it."""
        values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)
                  if hasattr(namespace, f.name) or f.default is dataclasses.MISSING}
        for name in _FLAGS:
            values[name] = values[name] in (True, "true")
        return cls(**values)


DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExportSettings) if f.default is not dataclasses.MISSING}
_FLAGS = [name for name, value in DEFAULTS.items() if isinstance(value, bool)]


class UnsafeRunnerOptions(Refused):
    """Beam options that are known to lose data; the export refuses them."""
