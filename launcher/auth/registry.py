"""The client registry in the job store: registered Backend Services clients, used assertion ids, server keys.

A client belongs to one tenant; its exports are that tenant's, owned by its
client id. Its registered scopes are the most it may ever be granted. The
`jti` of every accepted client assertion is kept until the assertion
expires, in the store, so a replay is refused across restarts and server
instances. The key that signs access tokens is kept here too, so every
instance sharing the store accepts the others' tokens.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Optional

import orjson

from launcher.names import check_tenant

CLIENTS_TABLE = """CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    scopes TEXT NOT NULL,
    jwks_url TEXT,
    jwks_json TEXT,
    created_at TEXT NOT NULL
)"""
ASSERTIONS_TABLE = """CREATE TABLE IF NOT EXISTS used_assertions (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
)"""
ASSERTIONS_INDEX = "CREATE INDEX IF NOT EXISTS used_assertions_by_expiry ON used_assertions (expires_ms)"
SERVER_KEYS_TABLE = """CREATE TABLE IF NOT EXISTS server_keys (
    name TEXT PRIMARY KEY,
    private_pem TEXT NOT NULL,
    created_at TEXT NOT NULL
)"""
_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:@/+-]{0,127}")


class ClientExists(ValueError):
    """A client id that is registered already."""


def check_client_id(client_id: str) -> str:
    if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
        raise ValueError("--client-id must be 1-128 letters, digits or ._~:@/+- , starting with a letter or digit")
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
            raise ValueError("a client has either a JWKS or a jwks_url")
        if self.jwks is not None and not self.jwks.get("keys"):
            raise ValueError("a client's JWKS needs at least one key")

    def to_json_dict(self) -> dict:
        """What `clients list --json` prints: public keys and URLs only."""
        return {"client_id": self.client_id, "tenant": self.tenant, "scope": self.scopes,
                "jwks_url": self.jwks_url, "kids": [k["kid"] for k in self.jwks["keys"]] if self.jwks else None,
                "created_at": self.created_at}


def _client(row: dict) -> Client:
    jwks = orjson.loads(row["jwks_json"]) if row["jwks_json"] is not None else None
    return Client(row["client_id"], row["tenant"], row["scopes"], row["jwks_url"], jwks, row["created_at"])


class ClientQueries:
    """The registry's part of a SQL job store (mixed into `SqlJobStore`)."""

    def add_client(self, client: Client) -> None:
        with self._tx() as db:
            inserted = db.execute(
                "INSERT INTO clients (client_id, tenant, scopes, jwks_url, jwks_json, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO NOTHING",
                (client.client_id, client.tenant, client.scopes, client.jwks_url,
                 orjson.dumps(client.jwks).decode() if client.jwks is not None else None, client.created_at),
            ).rowcount
        if not inserted:
            raise ClientExists(f"client {client.client_id!r} is registered already (remove it first)")

    def client(self, client_id: str) -> Optional[Client]:
        with self._tx(write=False) as db:
            row = db.execute("SELECT * FROM clients WHERE client_id = ?", (client_id,)).fetchone()
        return _client(row) if row else None

    def clients(self, tenant: Optional[str] = None) -> list[Client]:
        """Every registered client, or those of `tenant`, by client id."""
        where, args = ("WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        with self._tx(write=False) as db:
            rows = db.execute(f"SELECT * FROM clients {where} ORDER BY client_id", args).fetchall()
        return [_client(row) for row in rows]

    def remove_client(self, client_id: str) -> bool:
        """Removes the client; its access tokens stop working at once. False if it was not registered."""
        with self._tx() as db:
            return bool(db.execute("DELETE FROM clients WHERE client_id = ?", (client_id,)).rowcount)

    def use_assertion(self, client_id: str, jti: str, expires_ms: int) -> bool:
        """Records that the assertion `jti` was used; False if it had been already (a replay)."""
        with self._tx() as db:
            db.execute("DELETE FROM used_assertions WHERE expires_ms < ?", (int(time.time() * 1000),))
            return bool(db.execute(
                "INSERT INTO used_assertions (client_id, jti, expires_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (client_id, jti) DO NOTHING", (client_id, jti, expires_ms),
            ).rowcount)

    def server_key(self, name: str, make: Callable[[], str], created_at: str) -> str:
        """The private key (PEM) stored as `name`; the first caller stores `make()`, every other reads it."""
        with self._tx() as db:
            row = db.execute("SELECT private_pem FROM server_keys WHERE name = ?", (name,)).fetchone()
            if row:
                return row["private_pem"]
            db.execute("INSERT INTO server_keys (name, private_pem, created_at) VALUES (?, ?, ?)"
                       " ON CONFLICT (name) DO NOTHING", (name, make(), created_at))
            return db.execute("SELECT private_pem FROM server_keys WHERE name = ?", (name,)).fetchone()["private_pem"]
