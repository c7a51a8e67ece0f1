"""The lines of an NDJSON source file that a REST read serves: found once with their byte offsets, read
back by offset.

A line is indexed when it is a resource of a type `read` serves (`READ_TYPES`: every R4 type outside
the Patient compartment but Bundle, and Group) with a valid id. Its offset and length count the bytes
of the file's content: for a gzip file, of the decompressed stream, which a read decompresses again up
to the line (a cost of the line's depth in its file, not of the source). The bytes read back are the
line as the source has it, without its line break.
"""

from __future__ import annotations

import gzip
import re
import zlib
from typing import IO, Iterator, NamedTuple, Optional

import orjson

from transforms.fhir.compartment import COMPARTMENT_TYPES
from transforms.fhir.group import GROUP
from transforms.fhir.instant import InvalidInstant, instant_key
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.search.text import normalize
from transforms.storage.source_files import LocalFile, open_listed
from transforms.storage.source_formats import GZIP_MAGIC

# A Bundle line holds other resources (the export reads its entries), so it is not one to read.
SCAN_ERRORS = (OSError, EOFError, zlib.error)  # a file unreadable now, or a broken gzip stream
READ_TYPES: frozenset[str] = frozenset(RESOURCE_TYPES - COMPARTMENT_TYPES - {"Bundle"}) | {GROUP}
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}\Z")
_BOM = b"\xef\xbb\xbf"
_LEAD = b'{"resourceType":"'  # how a line written by a FHIR server starts
_LEAD_TYPES = {name.encode(): name in READ_TYPES for name in RESOURCE_TYPES}


class Line(NamedTuple):
    """One indexed resource: where its bytes are, when it was updated, and for a Group what its search
    reads (its name, casefolded without accents, and its identifiers as (system, value))."""

    type: str
    id: str
    offset: int
    length: int
    updated: Optional[float]  # meta.lastUpdated in seconds since the epoch; None without a valid one
    name: Optional[str] = None
    identifiers: tuple[tuple[Optional[str], str], ...] = ()


def is_resource_id(text: str) -> bool:
    """True for a FHIR R4 `id` (what a read's URL may name)."""
    return bool(_ID.match(text))


def open_content(path: str, file: LocalFile) -> IO[bytes]:
    """The listed local file's content, decompressed when it is gzip (told by its magic bytes)."""
    raw = open_listed(path, file)
    head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    return gzip.GzipFile(fileobj=raw, mode="rb") if head == GZIP_MAGIC else raw


def scan(path: str, file: LocalFile) -> Iterator[Line]:
    """Every line of the file that `read` serves. Lines that are not such a resource are passed over
    (the export reports broken ones); a line starting `{"resourceType":"<T>"` with `T` another R4 type
    is passed over unparsed."""
    with open_content(path, file) as f:
        position = 0
        for raw in f:
            start, line = position, raw
            position += len(raw)
            if start == 0 and line.startswith(_BOM):
                start, line = start + len(_BOM), line[len(_BOM):]
            content = line.strip()
            if not content or not _may_be_read(content):
                continue
            found = _line(content, start + len(line) - len(line.lstrip()))
            if found is not None:
                yield found


def read_at(path: str, file: LocalFile, offset: int, length: int) -> bytes:
    """The `length` bytes at `offset` of the file's content."""
    with open_content(path, file) as f:
        f.seek(offset)
        return f.read(length)


def resource_of(content: bytes) -> Optional[tuple[str, str]]:
    """(type, id) of the resource `content` holds, or None when it holds none."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict or type(body.get("resourceType")) is not str or type(body.get("id")) is not str:
        return None
    return body["resourceType"], body["id"]


def _may_be_read(content: bytes) -> bool:
    if content.startswith(_LEAD):
        end = content.find(b'"', len(_LEAD), len(_LEAD) + 64)
        return _LEAD_TYPES.get(content[len(_LEAD):end], True) if end > 0 else True
    return True


def _line(content: bytes, offset: int) -> Optional[Line]:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict:
        return None
    resource_type, resource_id = body.get("resourceType"), body.get("id")
    if resource_type not in READ_TYPES or type(resource_id) is not str or not is_resource_id(resource_id):
        return None
    meta = body.get("meta")
    line = Line(resource_type, resource_id, offset, len(content),
                _updated(meta.get("lastUpdated") if type(meta) is dict else None))
    if resource_type == GROUP:
        name = body.get("name")
        line = line._replace(name=normalize(name) if type(name) is str else None,
                             identifiers=_identifiers(body.get("identifier")))
    return line


def _updated(text: object) -> Optional[float]:
    try:
        key = instant_key(text)
    except InvalidInstant:
        return None
    return key.seconds + float(f"0.{key.fraction or 0}")


def _identifiers(value: object) -> tuple[tuple[Optional[str], str], ...]:
    if type(value) is not list:
        return ()
    found = []
    for identifier in value:
        if type(identifier) is dict and type(identifier.get("value")) is str:
            system = identifier.get("system")
            found.append((system if type(system) is str else None, identifier["value"]))
    return tuple(found)
