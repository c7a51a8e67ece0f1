"""Types a level cannot export, refused once the job's settings (`--include-referenced`) are known.

Made by the launcher before the job is recorded, with the parser's `KickoffRefused`.
"""

from __future__ import annotations

from typing import Iterable, Optional

from launcher.kickoff.parser import KickoffRefused
from pipelines.models import ExportLevel, ExportRequest
from transforms.fhir.compartment import COMPARTMENT_TYPES


def exportable_types(level: ExportLevel, referenced_types: Iterable[str] = ()) -> Optional[frozenset[str]]:
    """The types an export at `level` can name in `_type` (None: every type, at system level): the Patient
    compartment's and the referenced types `--include-referenced` adds, and Group except at Patient level."""
    if level is ExportLevel.SYSTEM:
        return None
    exportable = COMPARTMENT_TYPES | frozenset(referenced_types)
    return exportable - {"Group"} if level is ExportLevel.PATIENT else exportable


def check_level(request: ExportRequest, referenced_types: Iterable[str] = ()) -> None:
    """Refuses types this level cannot export, once `--include-referenced` is known.

    At Patient and Group level only the Patient compartment's types (plus the
    referenced types the user added) are exported, so `_type` naming another
    type would silently give nothing; without `_type`, a `_typeFilter` or a
    `Type.element` of `_elements` naming such a type would apply to nothing.
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
    exportable = exportable_types(request.level, referenced)
    level = f"a {request.level.value.capitalize()}-level export"
    hint = "; --include-referenced adds such types where exported resources reference them"
    outside = [t for t in request.types if t not in exportable]
    if outside:
        listed = ", ".join(outside)
        raise KickoffRefused(
            "_type", f"{listed} {'is' if len(outside) == 1 else 'are'} outside the Patient compartment, "
                     f"so {level} has none{hint}",
        )
    if request.types:
        return  # `_typeFilter` and `_elements` were already held to `_type`
    exportable = exportable - {"Group"}  # left out unless `_type` names it

    def why(resource_type: str) -> str:
        if resource_type == "Group" and request.level is ExportLevel.GROUP:
            return "; name Group in _type to export the kicked-off Group"
        return "" if resource_type == "Group" else hint

    for type_filter in request.type_filters:
        if type_filter.resource_type not in exportable:
            raise KickoffRefused(
                "_typeFilter",
                f"{type_filter.resource_type} is not exported by {level}, so its filter applies to nothing"
                f"{why(type_filter.resource_type)}",
            )
    for entry in request.elements:
        head, dot, _ = entry.partition(".")
        if dot and head not in exportable:
            raise KickoffRefused("_elements", f"{entry!r}: {head} is not exported by {level}{why(head)}")


