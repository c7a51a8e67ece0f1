"""The user's per-run settings of an export, declared once for every entry point (CLI, options, template, server).

Beam-free: the control plane validates settings and shows their defaults
without importing Beam. `pipelines.options` turns them into pipeline options.
"""

from __future__ import annotations

import dataclasses

from pipelines.declarations import option
from transforms.errors import Refused
from transforms.fhir.compartment import COMPARTMENT_TYPES
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.storage.files import is_gcs
from transforms.storage.pg_source import is_postgres, parse_source
from transforms.storage.source_formats import CHUNK_BYTES, SOURCE_FORMATS
from transforms.storage.urls import DEFAULT_TTL_S, ManifestUrls

# The embedded local runner: Beam's FnApiRunner runs in this process and never
# downloads anything. Beam 2.77's DirectRunner first fetches a Prism binary.
LOCAL_RUNNER = "pipelines.local_runner.LocalRunner"
SAFE_RUNNING_MODES = ("in_memory", "multi_processing")


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    """Where to read and write, and the output limits: what a user chooses per run.

    Each field is declared once: the CLI flags, the pipeline options and the template parameters are made from it.
    """

    source: str = option(
        help="NDJSON, Bundle, Avro or Parquet files (a file, glob or folder), or a PostgreSQL table: "
        "postgresql://user@host:port/db?table=NAME[&history=true]",
        label="Source", cli=True)
    output: str = option(help="root folder; parts go to <output>/<tenant>/<job_id>/", label="Output root",
                         cli=True, cli_default="exports")
    source_format: str = option("auto", help="how to read source files: auto decides by file name, then by content",
                                label="Source format", choices=SOURCE_FORMATS, cli=True)
    max_lines_per_part: int = option(100_000, help="most lines in one part", label="Max lines per part",
                                     positive=True, cli=True)
    max_bytes_per_part: int = option(256 << 20, help="most bytes in one part", label="Max bytes per part",
                                     positive=True, cli=True)
    chunk_bytes: int = option(CHUNK_BYTES, help="bytes of NDJSON read per work item", label="Chunk bytes",
                              positive=True, cli=True)
    include_missing_last_updated: bool = option(
        True, help="export resources without meta.lastUpdated even when _since/_until is set",
        label="Include resources without lastUpdated", cli=True, flag="--exclude-missing-last-updated",
        cli_help="with _since/_until, drop resources that have no meta.lastUpdated (default: export them)")
    max_side_input_patients: int = option(
        200_000, help="Patient/Group exports: most patients held in memory as a side input; more are joined by key",
        label="Most patients in a side input", positive=True, cli=True)
    include_referenced: str = option(
        "", help="Patient/Group exports without _type: comma-separated types outside the compartment (e.g. "
        "Organization,Practitioner,Device) to add, only the resources that exported ones reference or that "
        "reference a covered patient (a _type naming such types asks for them itself)",
        label="Referenced types to add", regex="^([A-Z][A-Za-z]+(,[A-Z][A-Za-z]+)*)?$", cli=True, metavar="TYPES")
    max_inline_attachment_bytes: int = option(
        0, help="move an Attachment's inline data larger than this many bytes to a file served beside the parts "
        "(its url set, its data removed); 0: inline data is always kept", label="Most inline attachment bytes",
        regex="^[0-9]+$", cli=True, metavar="N")
    signed_urls: bool = option(
        False, help="GCS output: V4 signed URLs in the manifest (requiresAccessToken false) instead of gs:// URLs",
        label="Signed URLs", cli=True)
    url_ttl: int = option(
        DEFAULT_TTL_S, help="how long a signed URL stays valid, in seconds (at most 7 days)",
        label="Signed URL lifetime (seconds)", positive=True, cli=True, duration=True,
        cli_help="how long signed URLs stay valid, e.g. 1h, at most 7d (default %(default)s)")
    signing_key: str = option(
        "", help="service-account JSON key that signs the URLs (a local or gs:// path); "
        "default $GOOGLE_APPLICATION_CREDENTIALS", label="Signing key", cli=True, metavar="KEY_JSON")
    # Set by `bulk-export serve` for its local output, so not a CLI flag.
    file_url_base: str = option(
        "", help="local output served over HTTP: manifest URLs are this base plus <tenant>/<job_id>/<file>",
        label="File URL base", regex="^(https?://.+)?$")

    def __post_init__(self) -> None:
        self.urls  # checks url_ttl
        if is_postgres(self.source):
            parse_source(self.source)  # a table named, no password in the URL
        if self.max_inline_attachment_bytes < 0:
            raise Refused("--max-inline-attachment-bytes must be 0 (off) or a positive number of bytes")
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
        (parsed CLI arguments or `ExportOptions`). A field the
        object lacks and that has a default (e.g. `file_url_base`, which only a server sets) keeps it."""
        values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)
                  if hasattr(namespace, f.name) or f.default is dataclasses.MISSING}
        return cls(**values)


class UnsafeRunnerOptions(Refused):
    """Beam options that are known to lose data; the export refuses them."""
