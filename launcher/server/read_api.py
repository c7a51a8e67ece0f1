"""REST reads of what clients resolve after an export, and Group discovery (IG v3: "a Data Provider's FHIR
server ... SHOULD support reading and searching for the Group resource").

`GET [base]/{type}/{id}` serves a resource of a type outside the Patient compartment (Practitioner,
Organization, Location, Medication, Device, ...) or a Group, as the source has it; `GET [base]/Group`
searches the Groups by `identifier` and `name`, with `_count` and `_summary=count`. Both are answered
from the caller's tenant's read index (`launcher.server.read_index`), never by scanning the source,
and checked like downloads: the token's scopes must cover the type (403), and what the source lacks
is 404. Patient-compartment types are served by `$export` only (404).

A Group's roster is shown only to a client that could export those patients anyway: one whose scopes
cover Patient (a Patient- or system-level export gives it every patient of the source). To any other
client a Group comes cut by the Group-cut rule with no member kept (`covered_roster`): no `member`, no
Reference to a patient, no `text`, `contained` or `quantity`, tagged SUBSETTED.
"""

from __future__ import annotations

from typing import NamedTuple, Optional
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Request, Response
from starlette.convertors import Convertor, register_url_convertor

from launcher.auth.scopes import Grant
from launcher.server.config import FHIR_PATH
from launcher.server.deps import Caller, Server, caller, prefer, server
from launcher.server.outcomes import json_media_type, operation_outcome
from launcher.server.read_index import ReadIndex, TokenValue
from launcher.server.source_lines import READ_TYPES, is_resource_id
from transforms.errors import Forbidden, NotFound, Refused
from transforms.fhir.compartment import PATIENT
from transforms.fhir.elements import InvalidMeta
from transforms.fhir.group import GROUP, covered_roster
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.search.common import InvalidSearchValue, split_escaped, unescape
from transforms.fhir.search.text import normalize
from transforms.fhir.search.tokens import split_token


class _ResourceType(Convertor):
    """A path segment that is an R4 resource type: `[base]/{type}/{id}` matches no other path, so it
    shadows no route of another module (`[base]/bulk-status/{job}`, an operation's `[base]/$name/...`)."""

    regex = "|".join(sorted(RESOURCE_TYPES, key=len, reverse=True))

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fhir_type", _ResourceType())
router = APIRouter()
# The REST search parameters of each searchable type, by name and FHIR type (the CapabilityStatement
# lists them). R4 defines no Group `name` search (R5 does): it is served here, not in `_typeFilter`.
REST_SEARCH = {GROUP: (("identifier", "token"), ("name", "string"))}
DEFAULT_COUNT, MAX_COUNT = 50, 1000


class GroupQuery(NamedTuple):
    """A Group search: its `identifier` and `name` parameters (each a list of ORed values), the page
    asked for, `_summary`, and the parameters lenient handling ignored."""

    identifiers: list[list[TokenValue]]
    names: list[list[str]]
    count: int = DEFAULT_COUNT
    offset: int = 0
    summary: Optional[str] = None
    ignored: tuple[str, ...] = ()


@router.get(FHIR_PATH + "/Group")
def search_groups(request: Request, app: Server = Depends(server), who: Caller = Depends(caller)) -> Response:
    """A searchset Bundle of the tenant's Groups matching `identifier` and `name` (ANDed; a parameter's
    comma-separated values ORed)."""
    _check_grant(who.grant, GROUP)
    query = _group_query(request.query_params.multi_items(), "handling=lenient" in prefer(request))
    index = _index(app, who)
    page = 0 if query.summary == "count" else query.count
    total, group_ids = index.groups(query.identifiers, query.names, query.offset, page)
    links = [{"relation": "self", "url": _url(app, request.url.path, request.query_params.multi_items())}]
    if page and query.offset + page < total:
        following = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"]
        links.append({"relation": "next",
                      "url": _url(app, request.url.path, [*following, ("_offset", str(query.offset + page))])})
    entries = []
    for group_id in group_ids:
        content = index.read(GROUP, group_id)
        if content is not None:
            entries.append({"fullUrl": f"{app.config.fhir_base}/{GROUP}/{group_id}",
                            "resource": orjson.Fragment(group_view(content, who.grant)), "search": {"mode": "match"}})
    entries += [{"resource": operation_outcome("not-supported", f"{name[:64]!r} was ignored (handling=lenient)",
                                               "warning"), "search": {"mode": "outcome"}} for name in query.ignored]
    bundle: dict = {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links}
    if entries:
        bundle["entry"] = entries
    return Response(orjson.dumps(bundle), media_type=json_media_type(request))


def _group_query(parameters: list[tuple[str, str]], lenient: bool) -> GroupQuery:
    """The search a Group query asks for; refused (400) for a malformed value, or for a parameter not
    served unless `lenient`. Values are split at unescaped commas, as in `_typeFilter`."""
    query, ignored = GroupQuery([], []), []
    for name, value in parameters:
        try:
            if name == "identifier":
                query.identifiers.append([TokenValue(*split_token(v)) for v in split_escaped(value, ",")])
            elif name == "name":
                query.names.append([normalize(unescape(v)) for v in split_escaped(value, ",")])
            elif name == "_count":
                query = query._replace(count=min(_whole(name, value), MAX_COUNT))
            elif name == "_offset":
                query = query._replace(offset=_whole(name, value))
            elif name == "_summary" and value in ("count", "false"):
                query = query._replace(summary=value)
            elif lenient:
                ignored.append(name)
            else:
                raise Refused(f"{name[:64]!r} is not a supported Group search parameter (identifier, name, _count,"
                              " _summary=count, _offset); Prefer: handling=lenient ignores it")
        except InvalidSearchValue as exc:
            raise Refused(f"{name}: {exc}") from None
    return query._replace(ignored=tuple(ignored))


@router.get(FHIR_PATH + "/{resource_type:fhir_type}/{resource_id}")
def read(resource_type: str, resource_id: str, request: Request, app: Server = Depends(server),
         who: Caller = Depends(caller)) -> Response:
    """The resource as the source has it (byte for byte; a Group cut for a client without Patient scope)."""
    if resource_type not in READ_TYPES:
        raise NotFound(f"{resource_type} is in the Patient compartment: its resources are served by $export only")
    _check_grant(who.grant, resource_type)
    index = _index(app, who)
    content = index.read(resource_type, resource_id) if is_resource_id(resource_id) else None
    if content is None:
        raise NotFound(f"{resource_type}/{resource_id[:64]} is not in the source")
    if resource_type == GROUP:
        content = group_view(content, who.grant)
    return Response(content, media_type=json_media_type(request))


def group_view(content: bytes, grant: Grant) -> bytes:
    """A Group as `grant` may see it: as the source has it for a grant covering Patient, else with no
    roster (the Group-cut rule keeping no member; a `meta` that cannot be tagged is replaced)."""
    if grant.covers(PATIENT):
        return content
    body = orjson.loads(content)
    try:
        cut = covered_roster(body, ())
    except InvalidMeta:
        cut = covered_roster({k: v for k, v in body.items() if k != "meta"}, ())
    return content if cut is None else orjson.dumps(cut)


def _index(app: Server, who: Caller) -> ReadIndex:
    index = app.reads.fresh(who.tenant) if app.reads is not None else None
    if index is None:
        raise NotFound("read and search are served for local NDJSON sources only; this source is served by"
                       " $export only")
    return index


def _check_grant(grant: Grant, resource_type: str) -> None:
    if not grant.covers(resource_type):
        raise Forbidden(f"the access token's scopes do not cover {resource_type}")


def _whole(name: str, value: str) -> int:
    if not value.isdigit():
        raise Refused(f"{name}: must be a whole number, not {value[:20]!r}")
    return int(value)


def _url(app: Server, path: str, query: list[tuple[str, str]]) -> str:
    url = app.config.base_url + path
    return f"{url}?{urlencode(query)}" if query else url

