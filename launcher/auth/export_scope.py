"""What an access token lets a kick-off export: its types, checked or narrowed to the token's scopes.

A kick-off that names a type the token does not cover (in `_type`, in
`_typeFilter`, or Provenance through `includeAssociatedData`) is refused
(403). One without `_type` exports, as the IG says, "all supported
resources within the scope of the client authorization": its types become
those the token covers, with the server's default supporting types
(`--include-referenced`) that it covers, as if `_type` had named them; types
the token does not cover are left out of those silently.
"""

from __future__ import annotations

import dataclasses

from launcher.auth.scopes import Grant, uncovered
from launcher.kickoff.parser import with_types
from pipelines.models import ExportLevel, ExportRequest
from pipelines.settings import ExportSettings
from transforms.errors import Forbidden
from transforms.fhir.associated import PROVENANCE
from transforms.fhir.compartment import COMPARTMENT_TYPES
from transforms.fhir.r4 import RESOURCE_TYPES


class ExportForbidden(Forbidden, PermissionError):
    """A kick-off asking for types the access token does not cover (HTTP 403)."""


def authorize_export(request: ExportRequest, settings: ExportSettings,
                     grant: Grant) -> tuple[ExportRequest, ExportSettings]:
    """`request` and `settings` within `grant`, or `ExportForbidden` naming the types it lacks.

    The server's `--include-referenced` is a default of Patient- and Group-level kick-offs only: a
    system-level one, which exports every type, goes without it (the CLI refuses it there instead,
    as its own user's mistake; a client cannot change a server's flags)."""
    if request.level is ExportLevel.SYSTEM and settings.include_referenced:
        settings = dataclasses.replace(settings, include_referenced="")
    if grant.all_types:
        return request, settings
    asked = list(request.types) + [f.resource_type for f in request.type_filters]
    if request.include_associated_data:
        asked.append(PROVENANCE)
    missing = uncovered(grant, asked)
    if missing:
        raise ExportForbidden(f"the access token's scopes do not cover {', '.join(missing)}")
    if not request.types:
        available = RESOURCE_TYPES if request.level is ExportLevel.SYSTEM else COMPARTMENT_TYPES
        types = tuple(sorted(grant.covered(available)))
        if not types:
            raise ExportForbidden(f"the access token's scopes cover no type a {request.level.value}-level export holds")
        if request.level is not ExportLevel.SYSTEM:
            types += tuple(grant.covered(settings.referenced_types))
        request = with_types(request, types)
    referenced = ",".join(grant.covered(settings.referenced_types))
    return request, dataclasses.replace(settings, include_referenced=referenced)
