"""The client registry's SQL, mixed into the SQL job store: clients, used assertion ids, server keys.

`server_keys` holds the access-token signing keys, one row per key, named by
its `kid`: `retires_ms` NULL is an active key; a time is a retiring key that
verifies tokens until then and signs none. A deleted row is a revoked key.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import orjson

from launcher.auth.clients import Client, ClientExists, client_from_row

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
SERVER_KEYS_RETIREMENT = "ALTER TABLE server_keys ADD COLUMN retires_ms BIGINT"
_KEYS_IN_FORCE = ("SELECT name, private_pem, created_at, retires_ms FROM server_keys"
                  " WHERE retires_ms IS NULL OR retires_ms > ? ORDER BY created_at DESC, name DESC")


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
        return client_from_row(row) if row else None

    def clients(self, tenant: Optional[str] = None) -> list[Client]:
        """Every registered client, or those of `tenant`, by client id."""
        where, args = ("WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        with self._tx(write=False) as db:
            rows = db.execute(f"SELECT * FROM clients {where} ORDER BY client_id", args).fetchall()
        return [client_from_row(row) for row in rows]

    def remove_client(self, client_id: str) -> bool:
        """Removes the client; its access tokens stop working at once. False if it was not registered."""
        with self._tx() as db:
            return bool(db.execute("DELETE FROM clients WHERE client_id = ?", (client_id,)).rowcount)

    def assertion_used(self, client_id: str, jti: str) -> bool:
        """Whether the assertion `jti` was used already (recorded and not expired yet)."""
        with self._tx(write=False) as db:
            return db.execute("SELECT 1 FROM used_assertions WHERE client_id = ? AND jti = ? AND expires_ms >= ?",
                              (client_id, jti, int(time.time() * 1000))).fetchone() is not None

    def use_assertion(self, client_id: str, jti: str, expires_ms: int) -> bool:
        """Records that the assertion `jti` was used; False if it had been already (a replay)."""
        with self._tx() as db:
            db.execute("DELETE FROM used_assertions WHERE expires_ms < ?", (int(time.time() * 1000),))
            return bool(db.execute(
                "INSERT INTO used_assertions (client_id, jti, expires_ms) VALUES (?, ?, ?)"
                " ON CONFLICT (client_id, jti) DO NOTHING", (client_id, jti, expires_ms),
            ).rowcount)

    def server_key(self, name: str, make: Callable[[], str], created_at: str) -> str:
        """The private key (PEM) stored as `name`; the first caller stores `make()`, every other reads it.
        `make()` (a key generation) runs outside any transaction; of two racing first callers, one key wins."""
        query = "SELECT private_pem FROM server_keys WHERE name = ?"
        with self._tx(write=False) as db:
            row = db.execute(query, (name,)).fetchone()
        if row:
            return row["private_pem"]
        made = make()
        with self._tx() as db:
            db.execute("INSERT INTO server_keys (name, private_pem, created_at) VALUES (?, ?, ?)"
                       " ON CONFLICT (name) DO NOTHING", (name, made, created_at))
            return db.execute(query, (name,)).fetchone()["private_pem"]

    def signing_keys(self, now_ms: int) -> list[dict]:
        """The access-token keys in force at `now_ms` (rows: name, private_pem, created_at, retires_ms), newest
        first; `retires_ms` None marks an active key."""
        with self._tx(write=False) as db:
            return [dict(row) for row in db.execute(_KEYS_IN_FORCE, (now_ms,)).fetchall()]

    def add_first_signing_key(self, name: str, private_pem: str, created_at: str) -> bool:
        """Stores an active key unless one exists; False if one did (it is then used instead)."""
        with self._tx() as db:
            if db.execute("SELECT name FROM server_keys WHERE retires_ms IS NULL").fetchone():
                return False
            db.execute("INSERT INTO server_keys (name, private_pem, created_at) VALUES (?, ?, ?)",
                       (name, private_pem, created_at))
            return True

    def rotate_signing_key(self, name: str, private_pem: str, created_at: str, now_ms: int,
                           retire_ms: Optional[int]) -> list[str]:
        """Stores the new active key `name`. Every other key retires by `retire_ms` at the latest, or is deleted
        at once when it is None (revoked); keys retired already are deleted. The names of the deleted keys."""
        with self._tx() as db:
            if retire_ms is None:
                dropped = db.execute("SELECT name FROM server_keys").fetchall()
                db.execute("DELETE FROM server_keys")
            else:
                dropped = db.execute("SELECT name FROM server_keys WHERE retires_ms <= ?", (now_ms,)).fetchall()
                db.execute("DELETE FROM server_keys WHERE retires_ms <= ?", (now_ms,))
                db.execute("UPDATE server_keys SET retires_ms = ? WHERE retires_ms IS NULL OR retires_ms > ?",
                           (retire_ms, retire_ms))
            db.execute("INSERT INTO server_keys (name, private_pem, created_at) VALUES (?, ?, ?)",
                       (name, private_pem, created_at))
        return [row["name"] for row in dropped]
