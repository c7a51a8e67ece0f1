"""The Bulk Publish manifest-chain model: pages, their `next` link, and the chain markers.

A page is the IG's BulkPublishManifest JSON object. Every page of one update
(the root snapshot, or one incremental update) carries the same `transactionTime`,
`requiresAccessToken` and `updateCadence`; only `output`, `deleted`, `outcome`
and `link` differ. The last page of a chain links to `#pending` (more will
follow) or `#closed` (consumers reset to the root). Pure data, no I/O.
"""

from __future__ import annotations

import re
from typing import Iterator, Optional

import orjson

from transforms.errors import Refused

MANIFEST_TYPE = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/BulkPublishManifest"
PENDING, CLOSED = "#pending", "#closed"
FILE_LISTS = ("output", "deleted", "outcome")
_DURATION = re.compile(r"P(?!\Z)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
                       r"(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?\Z")
_SECONDS = (365 * 86400, 30 * 86400, 7 * 86400, 86400, 3600, 60, 1)  # Y and M approximate, for polling only


def cadence_seconds(text: str, name: str = "--update-cadence") -> float:
    """Seconds in an ISO 8601 duration (`P1D`, `PT1H`, `P1W`), or `Refused` naming `name`."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    seconds = sum(float(v) * unit for v, unit in zip(match.groups(), _SECONDS) if v) if match else 0.0
    if seconds <= 0:
        raise Refused(f"{name} {text!r} must be a positive ISO 8601 duration, e.g. P1D, PT1H, P7D")
    return seconds


def page(transaction_time: str, requires_token: bool, cadence: Optional[str], files: Optional[dict] = None,
         next_url: Optional[str] = None) -> dict:
    """One manifest page: the shared fields, the non-empty file lists of `files`, and a `next` link."""
    body: dict = {"manifestType": MANIFEST_TYPE, "transactionTime": transaction_time,
                  "requiresAccessToken": requires_token}
    if cadence:
        body["updateCadence"] = cadence
    for name in FILE_LISTS:
        if files and files.get(name):
            body[name] = list(files[name])
    return with_next(body, next_url)


def with_next(body: dict, url: Optional[str]) -> dict:
    """`body` with its single `next` link set to `url` (None: no link)."""
    body = {k: v for k, v in body.items() if k != "link"}
    if url is not None:
        body["link"] = [{"relation": "next", "url": url}]
    return body


def next_url(body: dict) -> Optional[str]:
    """The page's `next` link URL, a marker (`#pending`, `#closed`) or None."""
    for link in body.get("link") or ():
        if isinstance(link, dict) and link.get("relation") == "next":
            return link.get("url")
    return None


def is_marker(url: Optional[str]) -> bool:
    return url in (PENDING, CLOSED)


def split(files: dict, per_page: int) -> list[dict]:
    """An update's files in pages of at most `per_page` entries, in order: output, deleted, outcome.
    At least one page, even when there are no files (a snapshot of an empty dataset)."""
    entries = [(name, entry) for name in FILE_LISTS for entry in files.get(name, ())]
    pages: list[dict] = []
    for start in range(0, len(entries), per_page):
        chunk: dict = {}
        for name, entry in entries[start:start + per_page]:
            chunk.setdefault(name, []).append(entry)
        pages.append(chunk)
    return pages or [{}]


def listed_urls(body: dict) -> Iterator[str]:
    """The URL of every file a page lists."""
    for name in FILE_LISTS:
        for entry in body.get(name) or ():
            yield entry["url"]


def dumps(body: dict) -> bytes:
    """A page's bytes as published: indented, so a person can read it, and stable for one body."""
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"
