"""FHIR Bundle documents as a source: the entries of a Bundle, or the one resource a file holds.

Entries of `transaction`, `batch`, `collection` and `searchset` Bundles are
read; a `document` or `message` Bundle is itself one resource. Entry resources
have no line of their own, so they are written as compact JSON. The same rules
apply to a Bundle found on one line of an NDJSON file (`bundle_items`).

Reasons name the rule broken, never a value from the file: they are copied
into the manifest's error files.
"""

from __future__ import annotations

from typing import Iterator, Optional, Union

import orjson

from transforms.read.ndjson import json_error, to_resource
from transforms.records import BadRecord, Origin, Resource

CONTAINER_BUNDLES = frozenset({"transaction", "batch", "collection", "searchset"})
_UNSUPPORTED_BUNDLES = frozenset({"history", "transaction-response", "batch-response"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})  # the R4 http-verb codes
WHOLE = -1  # BadRecord.index of an error about a whole document
NDJSON_HINT = "it looks like NDJSON: use --source-format ndjson"


def document_resources(origin: Origin, data: bytes) -> tuple[list[Resource], list[BadRecord]]:
    """Resources of a JSON document, and the records that could not be read."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        reason = json_error(exc, "document is not valid JSON").replace(" at column", f" at line {exc.lineno} column")
        if _looks_like_ndjson(data):
            reason = f"{reason}; {NDJSON_HINT}"
        return [], [BadRecord(origin, WHOLE, reason)]
    resources, bad = [], []
    for entry, item in bundle_items(doc, b"", WHOLE, origin):
        if type(item) is BadRecord:
            bad.append(item if entry is None else item._replace(index=entry))
        elif entry is None:
            resources.append(item._replace(index=0, raw=orjson.dumps(item.body)))
        else:
            resources.append(item._replace(index=entry))
    return resources, bad


def bundle_items(doc: object, raw: bytes, index: int, origin: Origin) -> Iterator[tuple[Optional[int], Union[Resource, BadRecord]]]:
    """`(entry, item)` pairs for a JSON value read as a document: the entry resources of a
    container Bundle (`entry` its index in `Bundle.entry`, the resource written as compact
    JSON), or the value itself as one resource (`entry` None, written as `raw`); each item
    a `Resource` or the `BadRecord` saying why it is not one. Items are numbered `index`."""
    if type(doc) is dict and doc.get("resourceType") == "Bundle":
        kind = doc.get("type")
        if type(kind) is str and kind in _UNSUPPORTED_BUNDLES:  # a known code, so naming it quotes nothing else
            yield None, BadRecord(origin, index, f"Bundle type {kind!r} is not a source of resources", "Bundle")
            return
        if type(kind) is str and kind in CONTAINER_BUNDLES:
            entries = doc.get("entry") or []
            if type(entries) is not list:
                yield None, BadRecord(origin, index, "Bundle.entry is not a JSON array", "Bundle")
                return
            for number, entry in enumerate(entries):
                yield number, _entry_resource(entry, index, origin)
            return
    one = to_resource(doc, raw, index, origin)
    if type(one) is BadRecord:
        yield None, one._replace(reason=f"document {one.reason}") if index == WHOLE else one
        return
    yield None, one


def _entry_resource(entry: object, index: int, origin: Origin) -> Union[Resource, BadRecord]:
    body = entry.get("resource") if type(entry) is dict else None
    if body is None:
        request = entry.get("request") if type(entry) is dict else None
        method = request.get("method") if type(request) is dict else None
        # Only a valid http-verb code is named: anything else would quote the file.
        detail = f" (request.method {method})" if type(method) is str and method in _METHODS else ""
        return BadRecord(origin, index, f"Bundle entry has no resource{detail}")
    parsed = to_resource(body, b"", index, origin)
    if type(parsed) is BadRecord:
        return parsed
    return parsed._replace(raw=orjson.dumps(body))


def _looks_like_ndjson(data: bytes) -> bool:
    """True when the first non-empty line is a JSON object on its own and more follows."""
    lines = data.lstrip().split(b"\n", 1)
    if len(lines) < 2 or not lines[1].strip():
        return False
    try:
        return type(orjson.loads(lines[0])) is dict
    except orjson.JSONDecodeError:
        return False
