"""Attachments: where each R4 type holds them, and what an `Attachment.url` names.

The paths come from the R4 definitions (`r4/attachments.json`, derived by
`scripts/derive_r4.py`), never typed by hand. Beam-free: plain functions on parsed resources.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any, Iterator, NamedTuple, Optional
from urllib.parse import unquote

from transforms.fhir.r4 import load_definition

# Per type, the JSON key paths down to its Attachment elements (a list at any step is walked).
ATTACHMENT_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    name: tuple(tuple(path) for path in paths)
    for name, paths in load_definition("attachments.json")["resourceTypes"].items()
}
BINARY = "Binary"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_BINARY_REF = re.compile(r"^Binary/([A-Za-z0-9\-.]{1,64})$")  # a FHIR id


class Target(NamedTuple):
    """What an `Attachment.url` names: `kind` is `binary` (`value` the Binary's id), `path` (a path
    relative to the source root), `absolute` (a URL with a scheme: left as it is), or `refused`
    (`value` says why it is not served)."""

    kind: str
    value: str = ""


ABSOLUTE = Target("absolute")


def attachments(resource_type: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every Attachment of a resource of `resource_type`, as the dict inside `body` (changing it
    changes the resource)."""
    for path in ATTACHMENT_PATHS.get(resource_type, ()):
        yield from _walk(body, path)


def _walk(node: Any, path: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    if type(node) is list:
        for item in node:
            yield from _walk(item, path)
        return
    if type(node) is not dict:
        return
    if not path:
        yield node
        return
    child = node.get(path[0])
    if child is not None:
        yield from _walk(child, path[1:])


def target(url: str) -> Target:
    """What `url` names. A relative path is percent-decoded and must stay below the source root:
    no absolute path, no `..`, `.` or hidden segment (`.name`), no empty segment, backslash or NUL."""
    if _SCHEME.match(url):
        return ABSOLUTE
    binary = _BINARY_REF.match(url)
    if binary:
        return Target("binary", binary.group(1))
    path = unquote(url.split("#", 1)[0].split("?", 1)[0])
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return Target("refused", "not a path relative to the source (absolute, empty or with a backslash)")
    if any(not segment or segment.startswith(".") for segment in path.split("/")):
        return Target("refused", "a relative path that could leave the source or names a hidden file "
                      "(`..`, `.name` or an empty segment)")
    return Target("path", path)


def attachment_hash(digest: bytes) -> str:
    """`Attachment.hash`: the SHA-1 of the content, base64-encoded (FHIR R4)."""
    return base64.b64encode(digest).decode("ascii")


def decoded_data(attachment: dict[str, Any]) -> Optional[bytes]:
    """The content of an Attachment's inline `data` (base64); None when it has none or it is not base64."""
    data = attachment.get("data")
    if type(data) is not str:
        return None
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except ValueError:
        return None


def sha1(content: bytes) -> bytes:
    return hashlib.sha1(content).digest()
