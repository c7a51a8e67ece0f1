"""The shared job store: PostgreSQL through psycopg 3, for several launchers and workers.

Chosen with `--job-store postgresql://...`. The SQL is `SqlJobStore`'s; this
module adds pooled connections (psycopg_pool, one small pool per store object
and process, each connection checked before use, so a restarted server costs
a reconnect, not an error), advisory locks for kickoffs and migrations, and
`FOR UPDATE SKIP LOCKED` so concurrent cleaners and reapers never claim the
same job.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator

from launcher.stores.base import SqlJobStore
from launcher.stores.contract import StoreUnavailable
from transforms.storage.pg_source import failure

SCHEMES = ("postgresql://", "postgres://")
# Advisory lock keys: one for migrations, and one per tenant (hashed) for kickoffs.
_SCHEMA_LOCK = 0x62756C6B  # "bulk"
POOL_SIZE = 4
POOL_WAIT_S = 10.0  # how long a transaction waits for a connection before the store counts as unreachable


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
        self._pool = None
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"url": self.url, "_ready": self._ready, "read_only": self.read_only}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"])
        self._ready, self.read_only = state["_ready"], state["read_only"]

    @contextlib.contextmanager
    def _open(self, write: bool) -> Iterator[_Connection]:
        import psycopg  # only users of this store need psycopg

        try:
            with self._connections().connection(timeout=POOL_WAIT_S) as conn:
                with conn.transaction():
                    yield _Connection(conn)
        except psycopg.OperationalError as exc:
            if not _is_connection_error(exc):
                raise
            # One line, not a traceback; the DSN is not repeated (it may hold a password).
            raise StoreUnavailable(f"cannot reach the PostgreSQL job store: {failure(exc)}") from None

    def _connections(self):
        """This process's pool (a forked child makes its own: a pool's threads and sockets do not fork)."""
        if self._pool is None or self._pool_pid != os.getpid():
            with self._pool_lock:
                if self._pool is None or self._pool_pid != os.getpid():
                    from psycopg.rows import dict_row
                    from psycopg_pool import ConnectionPool

                    # UTF8 on the wire whatever the server's encoding: on a SQL_ASCII server psycopg
                    # would otherwise send text parameters as bytea.
                    self._pool = ConnectionPool(
                        self.url, min_size=0, max_size=POOL_SIZE, open=True, check=ConnectionPool.check_connection,
                        kwargs={"row_factory": dict_row, "connect_timeout": 10, "client_encoding": "UTF8"},
                        reconnect_timeout=POOL_WAIT_S, num_workers=1, name="bulk-export-job-store")
                    self._pool_pid = os.getpid()
        return self._pool

    def _lock_tenant(self, db: _Connection, tenant: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?::int, hashtext(?))", (_SCHEMA_LOCK, tenant))

    def _lock_schema(self, db: _Connection) -> None:
        db.execute("SELECT pg_advisory_xact_lock(?::bigint)", (_SCHEMA_LOCK,))


def _is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` means the server could not be reached or dropped the connection (not a SQL error)."""
    from psycopg_pool import PoolTimeout

    return isinstance(exc, PoolTimeout) or getattr(exc, "sqlstate", None) in (None, "57P01", "57P02", "57P03")
