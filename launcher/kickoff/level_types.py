"""Types a level cannot export, refused once the job's settings (`--include-referenced`) are known.

Made by the launcher before the job is recorded, with the parser's `KickoffRefused`. A refusal
names what the client can change (its own parameters), never a server-side flag.
"""

from __future__ import annotations

from typing import Iterable, Optional

from launcher.kickoff.parser import KickoffRefused
from pipelines.models import ExportLevel, ExportRequest
from pipelines.plan import DEFAULT_COMPARTMENT_TYPES
from transforms.fhir.r4 import RESOURCE_TYPES

_SUPPORTING = "; name it in _type beside the compartment types to receive its resources that the exported " \
              "resources reference or that reference a covered patient"


def exportable_types(level: ExportLevel) -> Optional[frozenset[str]]:
    """The types an export at `level` can name in `_type` (None: every type, at system level): at Patient and
    Group level the Patient compartment's and, as supporting resources, every other type; Group except at
    Patient level."""
    if level is ExportLevel.SYSTEM:
        return None
    everything = frozenset(RESOURCE_TYPES)
    return everything - {"Group"} if level is ExportLevel.PATIENT else everything


def check_level(request: ExportRequest, referenced_types: Iterable[str] = ()) -> None:
    """Refuses what this level cannot export, once `--include-referenced` is known.

    Without `_type`, a Patient- or Group-level export exports the compartment's types (but
    Group) and the server's default supporting types (`--include-referenced`), so a
    `_typeFilter` or a `Type.element` of `_elements` naming another type would apply to
    nothing. (With `_type`, the parser held both to `_type` already.)
    `--include-referenced` means nothing at system level, which exports every type.
    """
    referenced = tuple(referenced_types)
    if request.level is ExportLevel.SYSTEM:
        if referenced:
            raise KickoffRefused(
                "--include-referenced",
                "applies only to Patient- and Group-level exports (a system-level export has every type already)",
            )
        return
    if request.types:
        return
    exported = frozenset(DEFAULT_COMPARTMENT_TYPES) | frozenset(referenced)
    level = f"a {request.level.value.capitalize()}-level export"

    def why(resource_type: str) -> str:
        if resource_type == "Group":
            return "; name Group in _type to export the kicked-off Group" \
                if request.level is ExportLevel.GROUP else ""
        return _SUPPORTING

    for type_filter in request.type_filters:
        if type_filter.resource_type not in exported:
            raise KickoffRefused(
                "_typeFilter",
                f"{type_filter.resource_type} is not exported by {level} without _type, so its filter applies "
                f"to nothing{why(type_filter.resource_type)}",
            )
    for entry in request.elements:
        head, dot, _ = entry.partition(".")
        if dot and head not in exported:
            raise KickoffRefused("_elements", f"{entry!r}: {head} is not exported by {level} without _type"
                                              f"{why(head)}")
