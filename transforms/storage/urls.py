"""Download URLs of a manifest: `file://` for local files, `gs://` or V4 signed URLs for GCS.

A signed URL is made locally from a service-account key (no Google API is
called), valid for `ttl_s` seconds (V4 allows at most 7 days). It points at
`https://storage.googleapis.com`, or at the emulator when
`STORAGE_EMULATOR_HOST` is set. The key is read when signing, on the machine
that signs, and is never part of the pipeline's pickled graph.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path
from typing import Optional
from urllib.parse import quote, unquote, urlparse

import orjson

from transforms.errors import Refused
from transforms.storage import files as storage

MAX_TTL_S = 7 * 24 * 3600
DEFAULT_TTL_S = 3600
KEY_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
GCS_ENDPOINT = "https://storage.googleapis.com"


def check_ttl(ttl_s: int) -> int:
    if not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
        raise Refused(f"--url-ttl must be between 1 second and 7 days (V4 signed URLs), not {ttl_s!r} s")
    return ttl_s


def load_key(path: str = "") -> object:
    """Service-account credentials from a JSON key (any Beam path; default `$GOOGLE_APPLICATION_CREDENTIALS`)."""
    from apache_beam.io.filesystems import FileSystems
    from google.oauth2 import service_account

    path = path or os.environ.get(KEY_ENV, "")
    if not path:
        raise Refused(f"--signing-key: signed URLs need a service-account JSON key (or ${KEY_ENV})")
    try:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            info = orjson.loads(f.read())
        return service_account.Credentials.from_service_account_info(info)
    except (OSError, ValueError, KeyError) as exc:
        raise Refused(f"--signing-key {path}: not a readable service-account JSON key ({exc})") from None


def sign(path: str, ttl_s: int, credentials: object) -> str:
    """A V4 signed GET URL for the `gs://` object `path`, valid `ttl_s` seconds from now."""
    from google.cloud import storage as gcs_api

    bucket, name = storage.split(path)
    blob = gcs_api.Blob(name, gcs_api.Bucket(gcs_api.Client.create_anonymous_client(), bucket))
    return blob.generate_signed_url(
        version="v4",
        method="GET",
        expiration=dt.timedelta(seconds=check_ttl(ttl_s)),
        credentials=credentials,
        api_access_endpoint=storage.emulator_host() or GCS_ENDPOINT,
    )


def gcs_path_of(url: str) -> str:
    """The `gs://` object a manifest URL names: a `gs://` URL itself or a (signed) path-style URL."""
    if storage.is_gcs(url):
        return url
    parsed = urlparse(url)
    bucket, _, name = unquote(parsed.path).lstrip("/").partition("/")
    if parsed.scheme not in ("http", "https") or not bucket or not name:
        raise Refused(f"{url!r} names no GCS object")
    return f"gs://{bucket}/{name}"


@dataclasses.dataclass(frozen=True)
class ManifestUrls:
    """How a manifest names its files: `signed` needs GCS output and a service-account key (picklable)."""

    signed: bool = False
    ttl_s: int = DEFAULT_TTL_S
    key_path: str = ""
    base_url: str = ""  # local output served over HTTP: URLs are base_url + the path below the output root

    def __post_init__(self) -> None:
        check_ttl(self.ttl_s)

    def requires_access_token(self, output_root: str) -> bool:
        """GCS output needs a Google token unless its URLs are signed; local files need none."""
        return storage.is_gcs(output_root) and not self.signed

    def namer(self, output_root: str):
        """A function from a written file's path to its manifest URL (loads the key once)."""
        if self.signed:
            if not storage.is_gcs(output_root):
                raise Refused(f"--signed-urls needs a gs:// --output, not {output_root!r}")
            credentials = load_key(self.key_path)
            return lambda path: sign(path, self.ttl_s, credentials)
        if self.base_url and storage.is_local(output_root):
            return lambda path: served_url(path, output_root, self.base_url)
        return file_url


def file_url(path: str) -> str:
    """An absolute URL for a written file: `file://` for local paths, the path itself otherwise."""
    if storage.is_local(path):
        return Path(path).absolute().as_uri()
    return path


def served_url(path: str, output_root: str, base_url: str) -> str:
    """The URL under which a server publishes a local file: `base_url` + its path below `output_root`."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(output_root))
    if relative.startswith(".."):
        raise Refused(f"{path!r} is not under the output folder {output_root!r}")
    return f"{base_url.rstrip('/')}/{quote(relative.replace(os.sep, '/'))}"


def resign(urls: list[str], ttl_s: int, key_path: str = "", credentials: Optional[object] = None) -> list[str]:
    """Fresh signed URLs for the GCS objects that `urls` (signed or `gs://`) name."""
    credentials = credentials or load_key(key_path)
    return [sign(gcs_path_of(url), ttl_s, credentials) for url in urls]
