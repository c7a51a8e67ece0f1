"""Clients' public keys: a registered JWKS checked once, and a `jwks_url` fetched safely and cached.

A registered JWKS holds only public RSA (2048 bits or more) or EC (P-256,
P-384, P-521) keys, each with a `kid`. A key set at a `jwks_url` is fetched
only from that registered URL, within `FETCH_TIMEOUT_S` in all, a size
limit and no redirects; it is cached, and fetched again when an assertion
names a `kid` the cached set lacks (at most once per `REFRESH_MIN_S`, so
unknown kids cannot make the server hammer the client's host). A slow or
failing URL cannot tie the server up: no lock is held while fetching, one
fetch per URL is in flight at a time (a request that would need another is
refused at once), and a failure is remembered for `FAILURE_CACHE_S`, whose
requests are refused with it without a fetch.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from typing import Callable, Optional
from urllib.parse import urlsplit

import httpx
import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from transforms.errors import Refused

# Algorithms per key: RSA keys sign RS256/384/512, an EC key the one its curve defines.
RSA_ALGORITHMS = ("RS384", "RS256", "RS512")
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
SIGNING_ALGORITHMS = ("RS384", "ES384", "RS256", "RS512", "ES256", "ES512")
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
MIN_RSA_BITS = 2048
MAX_JWKS_BYTES = 64 << 10
FETCH_TIMEOUT_S = 5.0
CACHE_S = 300.0
REFRESH_MIN_S = 10.0
FAILURE_CACHE_S = 10.0


class KeysRefused(Refused):
    """A key set that cannot be registered or used; the message says why (never the key itself)."""


def algorithms_for(jwk: dict) -> tuple[str, ...]:
    """The signature algorithms `jwk` may verify: its type's (or its own `alg`, if it names one)."""
    if jwk.get("kty") == "RSA":
        allowed: tuple[str, ...] = RSA_ALGORITHMS
    elif jwk.get("kty") == "EC" and jwk.get("crv") in EC_ALGORITHMS:
        allowed = (EC_ALGORITHMS[jwk["crv"]],)
    else:
        return ()
    named = jwk.get("alg")
    return tuple(a for a in allowed if a == named) if named else allowed


def check_jwks(data: object, where: str) -> dict:
    """`data` as a key set of public signature keys, or `KeysRefused` naming `where` and the fault."""
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise KeysRefused(f"{where}: a JWKS is a JSON object with a non-empty \"keys\" list")
    kept = []
    for n, jwk in enumerate(keys):
        at = f"{where}: key {n}"
        if not isinstance(jwk, dict):
            raise KeysRefused(f"{at} is not a JSON object")
        if any(member in jwk for member in _PRIVATE_MEMBERS):
            raise KeysRefused(f"{at} holds private or secret key material; register the public key only")
        if not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            raise KeysRefused(f"{at} has no \"kid\" (SMART Backend Services selects keys by kid)")
        if any(other["kid"] == jwk["kid"] for other in kept):
            raise KeysRefused(f"{at} repeats the kid of an earlier key; each key needs its own")
        if jwk.get("use", "sig") != "sig":
            raise KeysRefused(f"{at} is not a signature key (use {jwk.get('use')!r})")
        if not algorithms_for(jwk):
            raise KeysRefused(f"{at}: only RSA and EC (P-256, P-384, P-521) keys are accepted, each for its own"
                              " algorithms")
        try:
            parsed = PyJWK.from_dict(jwk, algorithm=algorithms_for(jwk)[0])
        except (PyJWKError, ValueError, TypeError) as exc:
            raise KeysRefused(f"{at} is not a valid key: {type(exc).__name__}") from None
        if jwk["kty"] == "RSA" and parsed.key.key_size < MIN_RSA_BITS:
            raise KeysRefused(f"{at} is an RSA key of {parsed.key.key_size} bits; at least {MIN_RSA_BITS} are needed")
        kept.append(jwk)
    return {"keys": kept}


def check_jwks_url(url: str) -> str:
    """`url` if it may be fetched: https, or http to a loopback address (a local trial)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return url
    raise KeysRefused(f"--jwks-url must be an https URL (http only to a loopback address), not {url[:80]!r}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_jwks(url: str) -> dict:
    """The key set at `url`: one GET, no redirects, within the timeout and size limit."""
    deadline = time.monotonic() + FETCH_TIMEOUT_S  # in all: a body trickled byte by byte is cut short too
    try:
        with httpx.stream("GET", check_jwks_url(url), timeout=FETCH_TIMEOUT_S, follow_redirects=False,
                          headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise KeysRefused(f"the client's jwks_url answered {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise KeysRefused(f"the client's jwks_url answered more than {MAX_JWKS_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise KeysRefused(f"the client's jwks_url took more than {FETCH_TIMEOUT_S:g} s to answer")
    except httpx.HTTPError as exc:
        raise KeysRefused(f"the client's jwks_url could not be fetched: {type(exc).__name__}") from None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise KeysRefused("the client's jwks_url did not answer JSON") from None
    return check_jwks(data, "the client's jwks_url")


@dataclasses.dataclass
class _KeySet:
    """What is known of one `jwks_url`: the last set fetched, the last failure, and whether a fetch runs."""

    keys: Optional[dict] = None
    fetched_at: float = 0.0
    failure: Optional[str] = None
    failed_at: float = 0.0
    fetching: bool = False


class JwksCache:
    """Key sets fetched from registered `jwks_url`s, shared by the server's threads."""

    def __init__(self, fetch: Callable[[str], dict] = fetch_jwks, clock: Callable[[], float] = time.monotonic):
        self._fetch, self._clock = fetch, clock
        self._sets: dict[str, _KeySet] = {}
        self._lock = threading.Lock()  # guards `_sets`; never held across a fetch

    def key(self, url: str, kid: str) -> Optional[dict]:
        """The key `kid` of the set at `url`, fetching it when absent, stale, or lacking `kid`."""
        with self._lock:
            known = self._sets.setdefault(url, _KeySet())
            now = self._clock()
            found = _by_kid(known.keys, kid) if known.keys else None
            age = now - known.fetched_at
            if known.keys and age < CACHE_S and (found or age < REFRESH_MIN_S):
                return found
            if known.failure is not None and now - known.failed_at < FAILURE_CACHE_S:
                raise KeysRefused(known.failure)
            if known.fetching:
                raise KeysRefused("the client's jwks_url is being fetched already; try again shortly")
            known.fetching = True
        try:
            keys = self._fetch(url)
        except KeysRefused as exc:
            with self._lock:
                known.failure, known.failed_at = str(exc), self._clock()
            raise
        finally:
            with self._lock:
                known.fetching = False
        with self._lock:
            known.keys, known.fetched_at, known.failure = keys, now, None
        return _by_kid(keys, kid)


def _by_kid(jwks: dict, kid: str) -> Optional[dict]:
    return next((jwk for jwk in jwks["keys"] if jwk["kid"] == kid), None)
