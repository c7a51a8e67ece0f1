"""The client registry in the job store: registered Backend Services clients, used assertion ids, server keys.

A client belongs to one tenant; its exports are that tenant's, owned by its
client id. Its registered scopes are the most it may ever be granted. The
`jti` of every assertion a token was issued for is kept until the assertion
expires, in the store, so a replay is refused across restarts and server
instances. The key that signs access tokens is kept here too, so every
instance sharing the store accepts the others' tokens.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

import orjson

from launcher.core.names import check_tenant
from transforms.errors import Refused

_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:@/+-]{0,127}")


class ClientExists(Refused):
    """A client id that is registered already."""


def check_client_id(client_id: str) -> str:
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise Refused("--client-id must be 1-128 letters, digits or ._~:@/+- , starting with a letter or digit")
    return client_id


@dataclasses.dataclass(frozen=True)
class Client:
    """A registered client: its tenant, its most scopes, and its keys (a JWKS, or the URL serving one)."""

    client_id: str
    tenant: str
    scopes: str  # space-separated, as `launcher.auth.scopes.parse_scopes` reads them
    jwks_url: Optional[str] = None
    jwks: Optional[dict] = None
    created_at: str = ""

    def __post_init__(self) -> None:
        check_client_id(self.client_id)
        check_tenant(self.tenant)
        if (self.jwks_url is None) == (self.jwks is None):
            raise Refused("a client has either a JWKS or a jwks_url")
        if self.jwks is not None and not self.jwks.get("keys"):
            raise Refused("a client's JWKS needs at least one key")

    def to_json_dict(self) -> dict:
        """What `clients list --json` prints: public keys and URLs only."""
        return {"client_id": self.client_id, "tenant": self.tenant, "scope": self.scopes,
                "jwks_url": self.jwks_url, "kids": [k["kid"] for k in self.jwks["keys"]] if self.jwks else None,
                "created_at": self.created_at}


def client_from_row(row: dict) -> Client:
    jwks = orjson.loads(row["jwks_json"]) if row["jwks_json"] is not None else None
    return Client(row["client_id"], row["tenant"], row["scopes"], row["jwks_url"], jwks, row["created_at"])
