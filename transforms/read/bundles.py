"""FHIR Bundle documents as a source: the entries of a Bundle, or the one resource a file holds.

Entries of `transaction`, `batch`, `collection` and `searchset` Bundles are
read; a `document` or `message` Bundle is itself one resource. Entry resources
have no line of their own, so they are written as compact JSON.
"""

from __future__ import annotations

from typing import Iterable

import orjson

from transforms.read.ndjson import to_resource
from transforms.records import BadRecord, Origin, Resource

CONTAINER_BUNDLES = frozenset({"transaction", "batch", "collection", "searchset"})
_UNSUPPORTED_BUNDLES = frozenset({"history", "transaction-response", "batch-response"})
WHOLE = -1  # BadRecord.index of an error about a whole document


def document_resources(origin: Origin, data: bytes) -> tuple[list[Resource], list[BadRecord]]:
    """Resources of a JSON document, and the records that could not be read."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return [], [BadRecord(origin, WHOLE, f"document is not valid JSON ({exc})")]
    if type(doc) is dict and doc.get("resourceType") == "Bundle":
        kind = doc.get("type")
        if kind in _UNSUPPORTED_BUNDLES:
            return [], [BadRecord(origin, WHOLE, f"Bundle type {kind!r} is not a source of resources")]
        if kind in CONTAINER_BUNDLES:
            entries = doc.get("entry") or []
            if type(entries) is not list:
                return [], [BadRecord(origin, WHOLE, "Bundle.entry is not a JSON array")]
            return _entries(origin, entries)
    one = to_resource(doc, b"", 0, origin)
    if isinstance(one, BadRecord):
        return [], [one._replace(index=WHOLE, reason=f"document {one.reason}")]
    return [one._replace(raw=orjson.dumps(one.body))], []


def _entries(origin: Origin, entries: Iterable) -> tuple[list[Resource], list[BadRecord]]:
    resources, bad = [], []
    for index, entry in enumerate(entries):
        body = entry.get("resource") if type(entry) is dict else None
        if body is None:
            request = entry.get("request") if type(entry) is dict else None
            method = request.get("method") if type(request) is dict else None
            detail = f" (request.method {method})" if method else ""
            bad.append(BadRecord(origin, index, f"Bundle entry has no resource{detail}"))
            continue
        parsed = to_resource(body, b"", index, origin)
        if isinstance(parsed, BadRecord):
            bad.append(parsed)
        else:
            resources.append(parsed._replace(raw=orjson.dumps(body)))
    return resources, bad
