"""Access tokens: short-lived JWTs the token endpoint signs and every protected request presents.

A token names its client (`sub`), the client's tenant and the granted
`scope`, and expires after `ACCESS_TOKEN_S`. It is signed (ES256) with a
key kept in the job store, created by the first server to need it, so every
instance sharing the store accepts the others' tokens.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from launcher.auth.clients import Client
from launcher.auth.scopes import Grant, ScopeRefused
from transforms.errors import Unauthorized
from transforms.fhir.instant import now_instant

ACCESS_TOKEN_S = 300
ALGORITHM = "ES256"
KEY_NAME = "access-token-es256"
_REQUIRED = ["iss", "aud", "sub", "exp", "iat", "scope", "tenant"]


class InvalidToken(Unauthorized):
    """A bearer token that is malformed, forged, expired or for another server; the message says which."""


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a valid access token speaks for: the client, its tenant, and what it may read."""

    client_id: str
    tenant: str
    grant: Grant


def _new_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class AccessTokens:
    """Issues and verifies this server's access tokens; `issuer` and `audience` are its public URLs."""

    def __init__(self, store, issuer: str, audience: str):
        pem = store.server_key(KEY_NAME, _new_key_pem, now_instant())
        self._private = serialization.load_pem_private_key(pem.encode(), password=None)
        self._public = self._private.public_key()
        self.issuer, self.audience = issuer, audience

    def issue(self, client: Client, grant: Grant) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.audience, "sub": client.client_id, "tenant": client.tenant,
                  "scope": str(grant), "iat": now, "exp": now + ACCESS_TOKEN_S, "jti": str(uuid.uuid4())}
        return jwt.encode(claims, self._private, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(token, self._public, algorithms=[ALGORITHM], audience=self.audience,
                                issuer=self.issuer, options={"require": _REQUIRED})
            return Principal(claims["sub"], claims["tenant"], Grant.parse(claims["scope"]))
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the access token has expired") from None
        except (jwt.PyJWTError, ScopeRefused, TypeError, AttributeError):
            raise InvalidToken("the access token is not valid here") from None
