"""Kickoff parsing: a `$export` URL (GET) or a `Parameters` resource (POST) -> `ExportRequest`.

Every refusal happens here, before any job exists, as a `KickoffRefused` that
names the parameter. Parameters that would narrow the output (`_typeFilter`,
`_elements`) or reshape it (`organizeOutputBy`) are never ignored, because
ignoring them would export more, or otherwise, than was asked for. Others this engine does not
support are refused under strict handling (`Prefer: handling=strict`, the default here),
naming them; under lenient handling they are ignored and named in the
manifest's `message`.

Checks that need the job's settings or the source (types outside the Patient
compartment against `--include-referenced`, Group membership) are made by the
launcher before the job is recorded, and raise the same `KickoffRefused`.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import orjson

from pipelines.models import NDJSON_FORMATS, PARQUET_FORMATS, ExportLevel, ExportRequest, TypeFilter
from transforms.fhir.associated import ASSOCIATED_DATA
from transforms.fhir.compartment import COMPARTMENT_TYPES, patient_reference_id
from transforms.fhir.elements import ElementsRefused, parse_elements
from transforms.fhir.instant import InvalidInstant, instant_key, now_instant
from transforms.fhir.organize import ORGANIZE_TYPES
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.references import FHIR_ID
from transforms.fhir.search.common import TypeFilterRefused
from transforms.fhir.search.compiler import compile_type_filters

DEFAULT_BASE_URL = "http://localhost/fhir"
# Parameters the IG defines; each maps to how its values combine when repeated.
_KNOWN = (
    "_outputFormat",
    "_since",
    "_until",
    "_type",
    "_elements",
    "patient",
    "includeAssociatedData",
    "_typeFilter",
    "organizeOutputBy",
    "allowPartialManifests",
)
# IG v1/v2 comma-joined several `_typeFilter` queries in one value; each starts with `Type?`.
_NEXT_QUERY = re.compile(r",(?=[A-Z][A-Za-z]*\?)")


class KickoffRefused(ValueError):
    """A kickoff the engine will not run; `str()` names the parameter and the reason."""

    def __init__(self, parameter: str, reason: str):
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.reason = reason


def parse_get(url: str, strict: bool = True) -> ExportRequest:
    """Parses the GET form: `[base][/Patient | /Group/ID]/$export?...`.

    `strict` (the default) refuses unsupported parameters; `strict=False` ignores
    them and names them in `ExportRequest.ignored`. A `#fragment` is dropped.
    """
    parts = _absolute(url)
    level, group_id = _level(parts.path)
    params: dict[str, list[str]] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        params.setdefault(name, []).append(value)
    if "patient" in params:
        raise KickoffRefused(
            "patient",
            "is allowed only in a POST Parameters body (use --parameters FILE), not in the URL",
        )
    return _build(level, group_id, url.split("#", 1)[0], params, strict)


def parse_post(parameters: dict, url: str, strict: bool = True) -> ExportRequest:
    """Parses the POST form: a FHIR `Parameters` resource sent to `url` (strict by default)."""
    parts = _absolute(url)
    if parts.query:
        raise KickoffRefused("kickoff", "a POST kickoff takes its parameters from the body, not the URL")
    if type(parameters) is not dict or parameters.get("resourceType") != "Parameters":
        raise KickoffRefused("parameters", "the body must be a FHIR Parameters resource")
    level, group_id = _level(parts.path)
    params: dict[str, list[str]] = {}
    entries = parameters.get("parameter") or []
    if type(entries) is not list:
        raise KickoffRefused(
            "parameters", f"Parameters.parameter must be a JSON array of parameters, not a JSON {_json_kind(entries)}"
        )
    for entry in entries:
        name = entry.get("name") if type(entry) is dict else None
        if not isinstance(name, str):
            raise KickoffRefused("parameters", "every parameter needs a name")
        params.setdefault(name, []).append(_post_value(name, entry))
    request_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return _build(level, group_id, request_url, params, strict)


def load_parameters(path: str) -> dict:
    """Reads a Parameters JSON file, refusing it clearly when it is unreadable."""
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise KickoffRefused("parameters", f"cannot read {path}: {exc}") from None


def system_url(base_url: str = DEFAULT_BASE_URL) -> str:
    return base_url.rstrip("/") + "/$export"


def _absolute(url: str):
    """The split kick-off URL, refused unless it is absolute (a scheme and a host)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise KickoffRefused(
            "kickoff", f"{_printable(url)!r} is not an absolute URL (it needs a scheme and a host: https://host/...)"
        )
    return parts


def _json_kind(value: object) -> str:
    return {dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "value")


def _post_value(name: str, entry: dict) -> str:
    values = [(k, v) for k, v in entry.items() if k.startswith("value")]
    if len(values) != 1:
        raise KickoffRefused(name, "needs exactly one value[x]")
    key, value = values[0]
    if name == "patient":
        if key != "valueReference" or not isinstance(value, dict) or not value.get("reference"):
            raise KickoffRefused("patient", "must be a valueReference with a reference")
        return value["reference"]
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str):
        raise KickoffRefused(name, f"{key} must be a string value")
    return value


def _level(path: str) -> tuple[ExportLevel, Optional[str]]:
    segments = [unquote(s) for s in path.split("/")]
    if not segments or segments[-1] != "$export":
        raise KickoffRefused("kickoff", f"the URL path must end with $export, got {path!r}")
    before = segments[:-1]
    if before[-1:] == ["Patient"]:
        return ExportLevel.PATIENT, None
    if len(before) >= 2 and before[-2] == "Group":
        if not FHIR_ID.match(before[-1]):
            raise KickoffRefused("kickoff", f"{before[-1]!r} is not a valid Group id")
        return ExportLevel.GROUP, before[-1]
    # Anything else that addresses a resource type or instance is not an $export
    # endpoint; taking it for the system level would export more than was asked for.
    if before[-1:] == ["Group"]:
        raise KickoffRefused("kickoff", "Group/$export needs a Group id: Group/[id]/$export")
    if any(segment in RESOURCE_TYPES for segment in before[-2:]):
        raise KickoffRefused("kickoff", f"{path!r} is not a Bulk Data $export endpoint")
    return ExportLevel.SYSTEM, None


def _build(
    level: ExportLevel,
    group_id: Optional[str],
    url: str,
    params: dict[str, list[str]],
    strict: bool,
) -> ExportRequest:
    # Repeated parameters are equivalent to one comma-joined value (IG v3).
    joined = {name: ",".join(values) for name, values in params.items()}
    ignored = []
    for name, value in joined.items():
        if name == "patient" and level is ExportLevel.SYSTEM:
            raise KickoffRefused("patient", "is allowed only in Patient- and Group-level exports")
        if name not in _KNOWN:
            reason = "is not a Bulk Data kickoff parameter"
            shown = _printable(name)
            if strict:
                raise KickoffRefused(
                    shown, f"{reason} (refused under strict handling, the default; lenient handling ignores it)"
                )
            ignored.append(f"{shown}={_printable(value)} ({reason})")
    output_format = ",".join(dict.fromkeys(params.get("_outputFormat", [NDJSON_FORMATS[0]])))
    if output_format not in NDJSON_FORMATS + PARQUET_FORMATS:
        accepted = ", ".join(NDJSON_FORMATS + PARQUET_FORMATS)
        hint = ""
        if " " in output_format and output_format.replace(" ", "+") in NDJSON_FORMATS + PARQUET_FORMATS:
            hint = " (a '+' in a URL query must be encoded as %2B: application/fhir%2Bndjson)"
        raise KickoffRefused("_outputFormat", f"{output_format!r} is not one of {accepted}{hint}")
    since, until = _instant(joined, "_since"), _instant(joined, "_until")
    if since and until and instant_key(since) >= instant_key(until):
        raise KickoffRefused("_since", f"{since} is not earlier than _until {until}")
    if since and instant_key(since) > instant_key(now_instant()):
        raise KickoffRefused("_since", f"{since} is in the future: nothing can have changed after it yet")
    types = _types(joined.get("_type"))
    associated = _associated(params.get("includeAssociatedData", []), strict, ignored)
    if level is ExportLevel.PATIENT and "Group" in types:
        raise KickoffRefused(
            "_type",
            "Group is not exported at Patient level: a Group's member list names patients of other "
            "compartments (a Group-level export, Group/[id]/$export, can export that Group)",
        )
    organize = _organize(joined.get("organizeOutputBy"), output_format)
    partial = joined.get("allowPartialManifests", "false")
    if partial not in ("true", "false"):
        raise KickoffRefused("allowPartialManifests", "must be true or false")
    return ExportRequest(
        level=level,
        group_id=group_id,
        organize_output_by=organize,
        allow_partial_manifests=partial == "true",
        request_url=url,
        types=types,
        elements=_elements(joined.get("_elements"), types),
        type_filters=_type_filters(params.get("_typeFilter", []), types),
        since=since,
        until=until,
        patients=_patients(params.get("patient", [])),
        output_format=output_format,
        include_associated_data=associated,
        ignored=tuple(ignored),
    )


def _organize(value: Optional[str], output_format: str) -> Optional[str]:
    """`organizeOutputBy`: only Patient (its blocks are the Patient compartment), into NDJSON. Never
    ignored: files organized otherwise than asked would be read wrongly."""
    if value is None or value == "":
        return None
    if value not in ORGANIZE_TYPES:
        raise KickoffRefused("organizeOutputBy", f"{_printable(value)!r} is not supported; use "
                             + " or ".join(ORGANIZE_TYPES))
    if output_format not in NDJSON_FORMATS:
        raise KickoffRefused("organizeOutputBy", "needs NDJSON output: a Parquet part holds one type")
    return value


def _associated(values: list[str], strict: bool, ignored: list[str]) -> tuple[str, ...]:
    """The `includeAssociatedData` values this engine adds (the IG's Provenance ones); others are
    refused, or under lenient handling ignored and named."""
    chosen = []
    for value in (v.strip() for text in values for v in text.split(",")):
        if value in ASSOCIATED_DATA:
            chosen.append(value)
            continue
        reason = f"{_printable(value)!r} is not supported; use {' or '.join(ASSOCIATED_DATA)}"
        if strict:
            raise KickoffRefused("includeAssociatedData",
                                 f"{reason} (refused under strict handling, the default; lenient handling ignores it)")
        ignored.append(f"includeAssociatedData={_printable(value)} ({reason})")
    return tuple(dict.fromkeys(chosen))


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
    exportable = COMPARTMENT_TYPES | frozenset(referenced)
    if request.level is ExportLevel.PATIENT:
        exportable = exportable - {"Group"}
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


def _printable(text: str) -> str:
    """Unknown names and values may hold anything; keep messages on one line."""
    return text if text.isprintable() else repr(text)


def _instant(params: dict[str, str], name: str) -> Optional[str]:
    value = params.get(name)
    if value is None:
        return None
    if "," in value:
        raise KickoffRefused(name, "was given more than once")
    try:
        instant_key(value)
    except InvalidInstant as exc:
        hint = ""
        if " " in value:
            hint = " (a '+' offset in a URL query must be encoded as %2B)"
        raise KickoffRefused(name, f"{exc}{hint}") from None
    return value


def _patients(references: list[str]) -> tuple[str, ...]:
    """The `patient` references as patient ids; each must be a Patient reference."""
    ids = []
    for reference in references:
        patient = patient_reference_id(reference)
        if patient is None or reference.startswith("urn:") or not FHIR_ID.match(patient):
            raise KickoffRefused("patient", f"{_printable(reference)!r} is not a Patient reference (Patient/[id])")
        ids.append(patient)
    return tuple(dict.fromkeys(ids))


def _elements(value: Optional[str], types: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return ()
    try:
        spec = parse_elements(value, types)
    except ElementsRefused as exc:
        raise KickoffRefused("_elements", exc.reason) from None
    if types:
        # `Device.status` with `_type=Patient` would apply to nothing, while every Patient
        # would be cut to its mandatory elements: a client's mistake, refused.
        for entry in spec.entries:
            head, dot, _ = entry.partition(".")
            if dot and head not in types:
                listed = ",".join(types)
                raise KickoffRefused("_elements", f"{entry!r} names {head}, which _type ({listed}) does not list")
    return tuple(spec.entries)


def _type_filters(values: list[str], types: tuple[str, ...]) -> tuple[TypeFilter, ...]:
    """Every `_typeFilter` query, compiled once here so that a filter is never stored unapplied."""
    queries = [query for value in values for query in _NEXT_QUERY.split(value)]
    try:
        compile_type_filters(queries, types)
    except TypeFilterRefused as exc:
        raise KickoffRefused("_typeFilter", str(exc).removeprefix("_typeFilter ")) from None
    return tuple(TypeFilter(resource_type=q.split("?", 1)[0], query=q.split("?", 1)[1]) for q in queries)


def _types(value: Optional[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    names = [n.strip() for n in value.split(",")]
    for name in names:
        if name not in RESOURCE_TYPES:
            raise KickoffRefused("_type", f"{name!r} is not an R4 resource type")
    return tuple(dict.fromkeys(names))


__all__: Iterable[str] = ("KickoffRefused", "check_level", "parse_get", "parse_post", "load_parameters", "system_url")
