"""Access tokens: short-lived JWTs the token endpoint signs and every protected request presents.

A token names its client (`sub`), the client's tenant and the granted
`scope`, and expires after `ACCESS_TOKEN_S`. It is signed (ES256) with the
store's newest active key and names it in its `kid` header; it verifies only
while that key is in force in the store (`launcher.auth.signing_keys`), so
every instance sharing the store accepts the others' tokens, and a rotated or
revoked key stops working everywhere within seconds.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import jwt

from launcher.auth.clients import Client
from launcher.auth.scopes import Grant, ScopeRefused
from launcher.auth.signing_keys import SigningKeys
from transforms.errors import Unauthorized

ACCESS_TOKEN_S = 300
ALGORITHM = "ES256"
_REQUIRED = ["iss", "aud", "sub", "exp", "iat", "scope", "tenant"]


class InvalidToken(Unauthorized):
    """A bearer token that is malformed, forged, expired or for another server; the message says which."""


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a valid access token speaks for: the client, its tenant, and what it may read."""

    client_id: str
    tenant: str
    grant: Grant


class AccessTokens:
    """Issues and verifies this server's access tokens; `issuer` and `audience` are its public URLs."""

    def __init__(self, store, issuer: str, audience: str):
        self._keys = SigningKeys(store)
        self.issuer, self.audience = issuer, audience

    def issue(self, client: Client, grant: Grant) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.audience, "sub": client.client_id, "tenant": client.tenant,
                  "scope": str(grant), "iat": now, "exp": now + ACCESS_TOKEN_S, "jti": str(uuid.uuid4())}
        kid, key = self._keys.ring().signer
        return jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})

    def verify(self, token: str) -> Principal:
        try:
            claims = self._claims(token)
            return Principal(claims["sub"], claims["tenant"], Grant.parse(claims["scope"]))
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the access token has expired") from None
        except (jwt.PyJWTError, ScopeRefused, TypeError, AttributeError):
            raise InvalidToken("the access token is not valid here") from None

    def _claims(self, token: str) -> dict:
        """The verified claims, with the key its `kid` names; a token without one (signed before tokens named
        their key) with whichever key in force signed it."""
        kid = jwt.get_unverified_header(token).get("kid")
        ring = self._keys.ring()
        if kid is None:
            keys = list(ring.verifiers.values())
        else:
            key = ring.verifiers.get(kid) or self._keys.ring(unknown_kid=True).verifiers.get(kid)
            keys = [key] if key is not None else []
        for n, key in enumerate(keys):
            try:
                return jwt.decode(token, key, algorithms=[ALGORITHM], audience=self.audience, issuer=self.issuer,
                                  options={"require": _REQUIRED})
            except jwt.InvalidSignatureError:
                if n == len(keys) - 1:
                    raise
        raise jwt.InvalidKeyError("no key in force has this kid")
