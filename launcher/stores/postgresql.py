"""The shared job store: PostgreSQL through psycopg 3, for several launchers and workers.

Chosen with `--job-store postgresql://...`. The SQL is `SqlJobStore`'s; this
module adds connections, advisory locks for kickoffs and migrations, and
`FOR UPDATE SKIP LOCKED` so concurrent cleaners and reapers never claim the
same job.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from launcher.stores.base import SqlJobStore
from launcher.stores.contract import StoreUnavailable

SCHEMES = ("postgresql://", "postgres://")
# Advisory lock keys: one for migrations, and one per tenant (hashed) for kickoffs.
_SCHEMA_LOCK = 0x62756C6B  # "bulk"


class _Connection:
    """Runs the stores' `?`-placeholder SQL on psycopg (which uses `%s`)."""

    def __init__(self, conn: Any):
        self._conn = conn

    def execute(self, sql: str, args=()):
        return self._conn.execute(sql.replace("?", "%s"), tuple(args))


class PostgresJobStore(SqlJobStore):
    """Jobs in a PostgreSQL database; the DSN's search_path picks the schema."""

    claim_suffix = " FOR UPDATE SKIP LOCKED"
    lock_suffix = " FOR UPDATE"

    def __init__(self, dsn: str):
        self.url = dsn

    @contextlib.contextmanager
    def _open(self, write: bool) -> Iterator[_Connection]:
        import psycopg  # only users of this store need psycopg
        from psycopg.rows import dict_row

        # UTF8 on the wire whatever the server's encoding: on a SQL_ASCII server psycopg
        # would otherwise send text parameters as bytea.
        try:
            conn = psycopg.connect(self.url, row_factory=dict_row, connect_timeout=10, client_encoding="UTF8")
        except psycopg.OperationalError as exc:
            # One line, not a traceback; the DSN is not repeated (it may hold a password).
            reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
            raise StoreUnavailable(f"cannot reach the PostgreSQL job store: {reason}") from None
        with conn:
            with conn.transaction():
                yield _Connection(conn)

    def _lock_tenant(self, db: _Connection, tenant: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?::int, hashtext(?))", (_SCHEMA_LOCK, tenant))

    def _lock_schema(self, db: _Connection) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?::bigint)", (_SCHEMA_LOCK,))
