"""A PostgreSQL source's URL and connections: `postgresql://user@host:port/db?table=NAME[&history=true]`.

Beam-free and light, so the control plane can check a `--source` and the
launcher can hold the source's snapshot (`launcher.jobs.source_snapshot`) without
importing the readers (`transforms.read.postgres`). A password never appears
in the URL: libpq reads it from `PGPASSWORD` or a password file (`PGPASSFILE`,
`~/.pgpass`), so it never reaches options, manifests or logs.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from transforms.errors import Refused

SCHEMES = ("postgresql://", "postgres://")
APPLICATION_NAME = "bulk-export"  # every connection of an export; read-only
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?\Z")


class ReadAt(NamedTuple):
    """The job's `transactionTime` and, when the launcher holds one, its exported snapshot."""

    transaction_time: str
    snapshot: str = ""


class PgSource(NamedTuple):
    """A parsed PostgreSQL source: how to connect (no password), which table, its shape, its name in errors."""

    conninfo: str
    table: str
    history: bool
    display: str  # host, port, database and table: no user, no password


class SnapshotGone(IOError):
    """The launcher's snapshot can no longer be joined; the job must be resumed."""


def is_postgres(source: str) -> bool:
    return source.startswith(SCHEMES)


# The libpq parameters that hold a secret: given in a URL, they would reach options, the store and logs.
SECRET_PARAMS = ("password", "sslpassword")


def url_secret(url: str) -> Optional[str]:
    """The secret a connection URL holds (`password`: in `user:password@` or `?password=`;
    `sslpassword`), or None. The one place that decides which parts of a URL are credentials
    (a `passfile` or `sslkey` is a path, not a secret)."""
    parts = urlsplit(url)
    if parts.password is not None:
        return "password"
    names = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    return next((name for name in SECRET_PARAMS if name in names), None)


def parse_source(source: str) -> PgSource:
    """Parses a PostgreSQL source URL; `Refused` names what is wrong, never the password."""
    parts = urlsplit(source)
    secret = url_secret(source)
    if secret == "password":
        raise Refused("--source: a PostgreSQL URL must not hold a password; set PGPASSWORD or use a password"
                      " file (PGPASSFILE, ~/.pgpass), which libpq reads")
    if secret is not None:
        raise Refused(f"--source: a PostgreSQL URL must not hold {secret}=; use a client key file without a"
                      " passphrase (sslkey=), readable only by the launcher and the workers")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    table = params.pop("table", "")
    history = params.pop("history", "false")
    if not _NAME.match(table):
        raise Refused("--source: a PostgreSQL source needs ?table=NAME (a table or view, optionally schema.name)")
    if history not in ("true", "false"):
        raise Refused("--source: history must be true or false")
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(params), ""))
    host = parts.hostname or "localhost"
    display = f"postgresql://{host}{f':{parts.port}' if parts.port else ''}{parts.path}?table={table}"
    return PgSource(conninfo, table, history == "true", display)


def connect(source: PgSource):
    """A connection to the source (psycopg, autocommit: `begin` opens the one transaction); the
    password comes from libpq's environment or password file. One that cannot be made (the server
    unreachable, the login refused) raises `SourceError`: one line, without the user."""
    import psycopg

    try:
        return psycopg.connect(source.conninfo, autocommit=True, application_name=APPLICATION_NAME)
    except psycopg.OperationalError as exc:
        from transforms.storage.source_files import SourceError  # that module imports this one

        raise SourceError(f"cannot connect to the PostgreSQL source {source.display}: {failure(exc)}") from None


def failure(exc: BaseException) -> str:
    """libpq's reason for a failed connection, on one line, without the user or role it names."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return _NAMED.sub(r"\1 (not shown)", text)


_NAMED = re.compile(r'\b(user|role) "(?:[^"]|"")*"')


def begin(conn, at: ReadAt) -> None:
    """Starts a read-only REPEATABLE READ transaction in the launcher's snapshot, if it holds one."""
    import psycopg

    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    if at.snapshot:
        try:
            conn.execute(f"SET TRANSACTION SNAPSHOT '{_snapshot_id(at.snapshot)}'")
        except psycopg.Error as exc:
            raise SnapshotGone(
                "the export's snapshot of the PostgreSQL source can no longer be joined (the launcher that held it"
                " ended); resume the job to export from a new snapshot") from exc


def _snapshot_id(snapshot: str) -> str:
    if not re.fullmatch(r"[0-9A-Fa-f-]{1,64}", snapshot):
        raise ValueError("not a PostgreSQL snapshot id")
    return snapshot
