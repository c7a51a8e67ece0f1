"""The pipeline's contract: the export request, job records and the manifest.

These pydantic models sit at the boundaries. The launcher builds an
`ExportRequest` from a kickoff, the job store persists `JobRecord`s, and the
pipeline's last step writes a `Manifest` whose JSON uses the Bulk Data IG's
field names (`transactionTime`, `requiresAccessToken`, ...).
"""

from __future__ import annotations

import enum
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from transforms.fhir.instant import InvalidInstant, instant_key

NDJSON_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
PARQUET_FORMATS = ("application/vnd.apache.parquet", "parquet")
FHIR_VERSION = "R4"


class ExportLevel(str, enum.Enum):
    """Which `$export` endpoint the kickoff addressed."""

    SYSTEM = "system"
    PATIENT = "patient"
    GROUP = "group"


class ExportStatus(str, enum.Enum):
    """Job lifecycle: accepted -> in-progress -> complete | error | cancelled."""

    ACCEPTED = "accepted"
    IN_PROGRESS = "in-progress"
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (ExportStatus.COMPLETE, ExportStatus.ERROR, ExportStatus.CANCELLED)


class TypeFilter(BaseModel):
    """One `_typeFilter` value, `Type?query`, kept URL-decoded."""

    model_config = ConfigDict(frozen=True)

    resource_type: str
    query: str


class IgnoredParameter(BaseModel):
    """A kickoff parameter, value or `_typeFilter` query that lenient handling ignored, and why.

    Each becomes one OperationOutcome in the manifest's `error[]` (IG v3: "the server SHOULD include
    a FHIR OperationOutcome resource for each of these parameters"), which names the parameter and
    the reason but never a value of the request: a value (a `_typeFilter` query) may hold patient data.
    """

    model_config = ConfigDict(frozen=True)

    parameter: str
    reason: str  # names no value of the request's
    value: Optional[str] = None  # the client's own value, shown only in the manifest's `message`

    def __str__(self) -> str:
        shown = self.parameter if self.value is None else f"{self.parameter}={self.value}"
        return f"{shown} ({self.reason})"

    def outcome(self) -> dict[str, Any]:
        """The OperationOutcome reporting it: a warning, since the export differs from the request."""
        return {
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "warning",
                "code": "not-supported",
                "diagnostics": f"{self.parameter}: {self.reason}; ignored under lenient handling",
            }],
        }


class ExportRequest(BaseModel):
    """A validated kickoff, in the spec's terms. Built and changed only by the kickoff parser
    (`launcher/kickoff/parser.py`); elsewhere only read back from its JSON."""

    model_config = ConfigDict(frozen=True)

    level: ExportLevel = ExportLevel.SYSTEM
    group_id: Optional[str] = None
    request_url: str
    types: tuple[str, ...] = ()
    since: Optional[str] = None
    until: Optional[str] = None
    type_filters: tuple[TypeFilter, ...] = ()
    elements: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    include_associated_data: tuple[str, ...] = ()
    output_format: str = "application/fhir+ndjson"
    allow_partial_manifests: bool = False
    # organizeOutputBy: blocks of each instance of this type (only Patient), instead of one type per file.
    organize_output_by: Optional[str] = None
    # What the server ignored (lenient handling); named in the manifest's `message` and `error[]`.
    ignored_parameters: tuple[IgnoredParameter, ...] = ()

    @property
    def ignored(self) -> tuple[str, ...]:
        """Each ignored parameter as one line: `name[=value] (reason)`."""
        return tuple(str(p) for p in self.ignored_parameters)

    @property
    def ignored_message(self) -> Optional[str]:
        """The manifest's `message` naming the parameters lenient handling ignored, if any."""
        if not self.ignored:
            return None
        return "Ignored kickoff parameters (not supported): " + "; ".join(self.ignored)

    @field_validator("since", "until")
    @classmethod
    def _instant(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                instant_key(value)
            except InvalidInstant as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ExportRequest":
        if (self.level is ExportLevel.GROUP) != bool(self.group_id):
            raise ValueError("a group id is required exactly for Group-level exports")
        if self.since and self.until and instant_key(self.since) >= instant_key(self.until):
            raise ValueError("_since must be earlier than _until")
        return self


class TypeProgress(BaseModel):
    """Resources of one type written so far (exact once the job is complete)."""

    type: str
    exported: int = 0


class JobRecord(BaseModel):
    """A job as the store keeps it (the seed's ExportProgress + job metadata)."""

    job_id: str
    tenant: str
    owner: Optional[str] = None
    level: ExportLevel
    request: ExportRequest
    request_url: str
    transaction_time: str
    fhir_version: str = FHIR_VERSION
    status: ExportStatus
    created_at: str
    started_at: Optional[str] = None
    completed_at: Optional[str] = None
    output_dir: str
    error_message: Optional[str] = None
    bad_records: int = 0
    progress: list[TypeProgress] = Field(default_factory=list)


class _SpecModel(BaseModel):
    """Serialises with the IG's camelCase names."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class OutputFile(_SpecModel):
    """One manifest entry: a file of one resource type (no type when the output is organized by
    instances of a type) and its line count."""

    type: Optional[str] = None
    url: str
    count: Optional[int] = None


class Manifest(_SpecModel):
    """The complete-status response body of the Bulk Data IG v3."""

    transaction_time: str
    request: str
    requires_access_token: bool
    output_organized_by: Optional[str] = None
    output: list[OutputFile] = Field(default_factory=list)
    error: list[OutputFile] = Field(default_factory=list)
    deleted: list[OutputFile] = Field(default_factory=list)
    link: Optional[list[dict[str, str]]] = None
    message: Optional[str] = None
    extension: Optional[dict[str, Any]] = None
