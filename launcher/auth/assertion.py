"""Client assertions (RFC 7523, `private_key_jwt`): the JWT a Backend Services client signs to get a token.

The assertion must be signed, with RS256/384/512 or ES256/384/512 matching
the key its `kid` selects among the client's registered keys; `alg: none` and
HMAC are refused before any key is looked at. `iss` and `sub` are the
registered client id, `aud` is the token URL, `exp` is in the future and at
most five minutes ahead, and its `jti` has never been used for a token: the
store records it when a token is issued for it (`TokenService`), never when a
request is refused, and keeps it until `exp`. A `jku` header must be the client's registered `jwks_url`:
no URL from a token is ever fetched. PyJWT checks the signature and claims.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional

import jwt
from jwt import PyJWK

from launcher.auth.clients import Client
from launcher.auth.keys import SIGNING_ALGORITHMS, JwksCache, KeysRefused, algorithms_for
from transforms.errors import Refused

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIFETIME_S = 300
LEEWAY_S = 5  # clock skew allowed on exp
_REQUIRED = ["iss", "sub", "aud", "exp", "jti"]


class TokenRefused(Refused):
    """A refused token request: the RFC 6749 `error` code, its description and HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400, client: Optional[Client] = None):
        super().__init__(description)
        self.error, self.description, self.http_status, self.client = error, description, status, client


class Assertion(NamedTuple):
    """A verified assertion: its client, and the `jti` to record (until `expires_ms`) once a token is issued."""

    client: Client
    jti: str
    expires_ms: int


def _invalid_client(description: str, client: Optional[Client] = None) -> TokenRefused:
    return TokenRefused("invalid_client", description, 401, client)


def replayed(client: Client) -> TokenRefused:
    """The refusal of an assertion a token was issued for already."""
    return _invalid_client("the assertion's jti was used already (a replay)", client)


def verify_assertion(assertion: str, token_url: str, find_client: Callable[[str], Optional[Client]],
                     jwks: JwksCache, jti_used: Callable[[str, str], bool]) -> Assertion:
    """The verified assertion, or `TokenRefused` (`invalid_client`) saying why not. Its `jti` is only
    checked against those recorded (`jti_used`): the caller records it when it issues a token."""
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise _invalid_client("client_assertion is not a signed JWT") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in SIGNING_ALGORITHMS:
        raise _invalid_client(f"the assertion's alg must be one of {', '.join(SIGNING_ALGORITHMS)}")
    if not isinstance(kid, str) or not kid:
        raise _invalid_client("the assertion's header has no kid")
    issuer = unverified.get("iss")
    client = find_client(issuer) if isinstance(issuer, str) and issuer else None
    if client is None:
        raise _invalid_client("the assertion's iss is not a registered client")
    key = _key(client, header, kid, jwks)
    if alg not in algorithms_for(key):
        raise _invalid_client(f"the key {kid!r} does not sign {alg}", client)
    claims = _verified(assertion, key, alg, token_url, client)
    if claims["sub"] != client.client_id:
        raise _invalid_client("the assertion's sub must equal its iss, the client id", client)
    now = time.time()
    if not isinstance(claims["exp"], (int, float)) or claims["exp"] > now + MAX_LIFETIME_S + LEEWAY_S:
        raise _invalid_client(f"the assertion's exp is more than {MAX_LIFETIME_S} s ahead", client)
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= 255:
        raise _invalid_client("the assertion's jti must be a string of 1-255 characters", client)
    if jti_used(client.client_id, jti):
        raise replayed(client)
    return Assertion(client, jti, int((claims["exp"] + LEEWAY_S) * 1000))


def _key(client: Client, header: dict, kid: str, jwks: JwksCache) -> dict:
    """The registered key `kid` of `client`, refusing a `jku` other than its registered `jwks_url`."""
    jku = header.get("jku")
    if jku is not None and (client.jwks_url is None or jku != client.jwks_url):
        raise _invalid_client("the assertion's jku is not the client's registered jwks_url", client)
    if client.jwks is not None:
        key = next((k for k in client.jwks["keys"] if k["kid"] == kid), None)
    else:
        try:
            key = jwks.key(client.jwks_url, kid)
        except KeysRefused as exc:
            raise _invalid_client(str(exc), client) from None
    if key is None:
        raise _invalid_client(f"the client has no key with kid {kid[:40]!r}", client)
    return key


def _verified(assertion: str, key: dict, alg: str, token_url: str, client: Client) -> dict:
    """The verified claims. `aud` must name the token URL and nothing else: the string, or a list of it alone
    (RFC 7519 4.1.3 makes the string the one-audience case of the list); PyJWT alone would take any list
    holding it, so an assertion made for several servers would be accepted here."""
    try:
        claims = jwt.decode(assertion, PyJWK.from_dict(key, algorithm=alg), algorithms=[alg], audience=token_url,
                            issuer=client.client_id, leeway=LEEWAY_S, options={"require": _REQUIRED})
        if claims["aud"] not in (token_url, [token_url]):
            raise jwt.InvalidAudienceError("aud names another audience too")
        return claims
    except jwt.ExpiredSignatureError:
        raise _invalid_client("the assertion has expired", client) from None
    except jwt.InvalidAudienceError:
        raise _invalid_client(f"the assertion's aud must be the token URL, {token_url}", client) from None
    except jwt.MissingRequiredClaimError as exc:
        raise _invalid_client(f"the assertion lacks the {exc.claim} claim", client) from None
    except jwt.InvalidSignatureError:
        raise _invalid_client("the assertion's signature does not verify", client) from None
    except jwt.PyJWTError as exc:
        raise _invalid_client(f"the assertion is invalid ({type(exc).__name__})", client) from None
