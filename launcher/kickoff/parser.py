"""Kickoff parsing: a `$export` URL (GET) or a `Parameters` resource (POST) -> `ExportRequest`.

Every refusal happens here, before any job exists, as a `KickoffRefused` that
names the parameter. What this engine does not support is refused under strict
handling (`Prefer: handling=strict`, the default here), naming it. Under lenient
handling it is ignored and named (`ExportRequest.ignored_parameters`: the
manifest's `message`, and one OperationOutcome each in its `error[]`): an
unknown parameter, an `includeAssociatedData` value, a `_typeFilter` query the
engine cannot run (with every other query of its type, so the type is exported
unfiltered, never narrowed), or an `_elements` naming what cannot be selected
(all of `_elements`: every resource is exported whole). A value that cannot be
read at all, and `organizeOutputBy` (which reshapes the output), are refused
even then. At Patient and Group level a `_type` naming only types outside the
Patient compartment is refused (the IG's own example of an error); lenient
handling exports their supporting resources instead, and names `_type`.

Checks that need the job's settings or the source (without `_type`, a
`_typeFilter` or `_elements` on a type the level does not export:
`level_types.py`; Group membership:
`patients.py`) are made by the launcher before the job is recorded, and raise
the same `KickoffRefused`. A request given whole (the Flex Template's) passes
the same checks (`check_request`), and a request is changed only here
(`with_since`, `with_types`).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import orjson

from launcher.kickoff import narrowing
from pipelines.models import (
    NDJSON_FORMATS,
    PARQUET_FORMATS,
    ExportLevel,
    ExportRequest,
    IgnoredParameter,
    TypeFilter,
)
from transforms.errors import Refused
from transforms.fhir.associated import ASSOCIATED_DATA
from transforms.fhir.compartment import patient_reference_id, split_types
from transforms.fhir.elements import ElementsRefused
from transforms.fhir.instant import InvalidInstant, instant_key, now_instant
from transforms.fhir.organize import ORGANIZE_TYPES
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.references import FHIR_ID
from transforms.fhir.search.common import TypeFilterRefused

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


class KickoffRefused(Refused):
    """A kickoff the engine will not run; `str()` names the parameter and the reason."""

    def __init__(self, parameter: str, reason: str):
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.reason = reason
        if parameter == "kickoff":  # the endpoint itself, not a parameter's value
            self.issue_code = "not-supported"


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
        names = ", ".join(dict.fromkeys(_printable(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True)))
        raise KickoffRefused("kickoff", "a POST kickoff takes its parameters from the body, not the URL"
                             f" (its query: {_printable(names or parts.query)[:200]})")
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
    ignored: list[IgnoredParameter] = []
    for name, value in joined.items():
        if name == "patient":
            _check_patient_level(level)
        if name not in _KNOWN:
            reason = "is not a Bulk Data kickoff parameter"
            shown = _printable(name)
            if strict:
                raise KickoffRefused(
                    shown, f"{reason} (refused under strict handling, the default; lenient handling ignores it)"
                )
            ignored.append(IgnoredParameter(parameter=shown, reason=reason, value=_printable(value)))
    return _request(
        level, group_id, url, strict, ignored, output_formats=params.get("_outputFormat", [NDJSON_FORMATS[0]]),
        since=joined.get("_since"), until=joined.get("_until"), types=params.get("_type", []),
        associated=params.get("includeAssociatedData", []), organize=joined.get("organizeOutputBy"),
        partial=joined.get("allowPartialManifests", "false"), elements=joined.get("_elements"),
        type_filters=narrowing.split_type_filters(params.get("_typeFilter", [])), patients=params.get("patient", []),
    )


def check_request(request: ExportRequest) -> ExportRequest:
    """A request given whole instead of by a kickoff (the Flex Template's `--request`), held field by field
    to the checks a strict POST kickoff to its URL passes: the CLI's refusals, exactly.

    Returns it as that kickoff gives it, keeping its URL; like the Parameters body this replaced, it
    carries no `allowPartialManifests`.
    """
    parts = urlsplit(request.request_url)
    endpoint = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    level, group_id = _level(_absolute(endpoint).path)
    if request.patients:
        _check_patient_level(level)
    checked = _request(
        level, group_id, request.request_url, True, [], output_formats=[request.output_format],
        since=request.since, until=request.until, types=list(request.types),
        associated=list(request.include_associated_data), organize=request.organize_output_by, partial="false",
        elements=request.elements or None, type_filters=request.type_filters,
        patients=[f"Patient/{p}" for p in request.patients],  # the references a Parameters body would hold
    )
    if (level, group_id) != (request.level, request.group_id):
        raise KickoffRefused("request", f"level {request.level.value} does not match {endpoint}")
    return checked


def with_since(request: ExportRequest, since: str) -> ExportRequest:
    """`request` with `_since` set (a schedule's next run: its last completed `transactionTime`)."""
    return ExportRequest.model_validate({**request.model_dump(), "since": since})


def with_types(request: ExportRequest, types: tuple[str, ...]) -> ExportRequest:
    """`request` with `_type` set (the types an access token covers, for a kickoff without `_type`)."""
    return request.model_copy(update={"types": types})


def _check_patient_level(level: ExportLevel) -> None:
    if level is ExportLevel.SYSTEM:
        raise KickoffRefused("patient", "is allowed only in Patient- and Group-level exports")


def _request(
    level: ExportLevel, group_id: Optional[str], url: str, strict: bool, ignored: list[IgnoredParameter], *,
    output_formats: list[str], since: Optional[str], until: Optional[str], types: list[str], associated: list[str],
    organize: Optional[str], partial: str, elements: Union[str, Sequence[str], None],
    type_filters: Iterable[TypeFilter], patients: list[str],
) -> ExportRequest:
    """The request the checked parameters make; every check of a value is made here, in one order."""
    output_format = ",".join(dict.fromkeys(output_formats))
    if output_format not in NDJSON_FORMATS + PARQUET_FORMATS:
        accepted = ", ".join(NDJSON_FORMATS + PARQUET_FORMATS)
        hint = ""
        if " " in output_format and output_format.replace(" ", "+") in NDJSON_FORMATS + PARQUET_FORMATS:
            hint = " (a '+' in a URL query must be encoded as %2B: application/fhir%2Bndjson)"
        raise KickoffRefused("_outputFormat", f"{output_format!r} is not one of {accepted}{hint}")
    since, until = _instant(since, "_since"), _instant(until, "_until")
    if since and until and instant_key(since) >= instant_key(until):
        raise KickoffRefused("_since", f"{since} is not earlier than _until {until}")
    if since and instant_key(since) > instant_key(now_instant()):
        raise KickoffRefused("_since", f"{since} is in the future: nothing can have changed after it yet")
    types = _types(types)
    associated = _associated(associated, strict, ignored)
    if level is ExportLevel.PATIENT and "Group" in types:
        raise KickoffRefused(
            "_type",
            "Group is not exported at Patient level: a Group's member list names patients of other "
            "compartments (a Group-level export, Group/[id]/$export, can export that Group)",
        )
    _check_supporting_only(level, types, strict, ignored)
    organize = _organize(organize, output_format)
    if partial not in ("true", "false"):
        raise KickoffRefused("allowPartialManifests", "must be true or false")
    try:
        elements = narrowing.elements(elements, types, strict, ignored)
    except ElementsRefused as exc:
        raise KickoffRefused("_elements", exc.reason) from None
    try:
        type_filters = narrowing.type_filters(type_filters, types, strict, ignored)
    except TypeFilterRefused as exc:
        raise KickoffRefused("_typeFilter", str(exc).removeprefix("_typeFilter ")) from None
    return ExportRequest(
        level=level,
        group_id=group_id,
        organize_output_by=organize,
        allow_partial_manifests=partial == "true",
        request_url=url,
        types=types,
        elements=elements,
        type_filters=type_filters,
        since=since,
        until=until,
        patients=_patients(patients),
        output_format=output_format,
        include_associated_data=associated,
        ignored_parameters=tuple(ignored),
    )


def _check_supporting_only(level: ExportLevel, types: tuple[str, ...], strict: bool,
                           ignored: list[IgnoredParameter]) -> None:
    """At Patient and Group level, a `_type` naming only types outside the Patient compartment: refused
    under strict handling (IG v3: a client that "asks for only resource types that are outside the Patient
    Compartment"); under lenient handling their supporting resources alone are exported, and `_type` named."""
    if level is ExportLevel.SYSTEM or not types or split_types(types)[0]:
        return
    listed = ", ".join(types)
    level_name = f"a {level.value.capitalize()}-level export"
    if strict:
        raise KickoffRefused(
            "_type", f"names only types outside the Patient compartment ({listed}), which {level_name} exports "
                     "only as supporting resources of its patients' data: name a compartment type (such as "
                     "Patient) beside them, or send Prefer: handling=lenient to receive only those supporting "
                     "resources")
    ignored.append(IgnoredParameter(parameter="_type", reason=(
        f"names only types outside the Patient compartment ({listed}), which strict handling refuses; exported "
        f"instead are only the resources of those types that the covered patients' compartment resources "
        f"reference or that reference a covered patient")))


def _organize(value: Optional[str], output_format: str) -> Optional[str]:
    """`organizeOutputBy`: one of `ORGANIZE_TYPES`, into NDJSON (whether the export holds that type is
    the launcher's check, `pipelines.plan.organize_refusal`). Never ignored, even under lenient
    handling: files organized otherwise than asked would be read wrongly."""
    if value is None or value == "":
        return None
    if value not in ORGANIZE_TYPES:
        supported = ", ".join(ORGANIZE_TYPES[:-1]) + " or " + ORGANIZE_TYPES[-1]
        raise KickoffRefused("organizeOutputBy", f"{_printable(value)!r} is not supported; use {supported}")
    if output_format not in NDJSON_FORMATS:
        raise KickoffRefused("organizeOutputBy", "needs NDJSON output: a Parquet part holds one type")
    return value


def _associated(values: list[str], strict: bool, ignored: list[IgnoredParameter]) -> tuple[str, ...]:
    """The `includeAssociatedData` values this engine adds (the IG's Provenance ones); others are
    refused, or under lenient handling ignored and named."""
    chosen = []
    for value in (v.strip() for text in values for v in text.split(",")):
        if value in ASSOCIATED_DATA:
            chosen.append(value)
            continue
        supported = f"is not supported; use {' or '.join(ASSOCIATED_DATA)}"
        if strict:
            raise KickoffRefused("includeAssociatedData", f"{_printable(value)!r} {supported} (refused under strict "
                                 "handling, the default; lenient handling ignores it)")
        ignored.append(IgnoredParameter(parameter="includeAssociatedData", reason=f"a value {supported}",
                                        value=_printable(value)))
    return tuple(dict.fromkeys(chosen))


def _printable(text: str) -> str:
    """Unknown names and values may hold anything; keep messages on one line."""
    return text if text.isprintable() else repr(text)


def _instant(value: Optional[str], name: str) -> Optional[str]:
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


def _types(values: list[str]) -> tuple[str, ...]:
    """`_type`'s names (each value comma-separated), each an R4 resource type."""
    if not values:
        return ()
    names = [n.strip() for value in values for n in value.split(",")]
    for name in names:
        if name not in RESOURCE_TYPES:
            raise KickoffRefused("_type", f"{name!r} is not an R4 resource type")
    return tuple(dict.fromkeys(names))


__all__: Iterable[str] = (
    "KickoffRefused", "check_request", "parse_get", "parse_post", "load_parameters", "system_url",
    "with_since", "with_types",
)
