"""A real PostgreSQL for the job store tests: `BULK_EXPORT_TEST_PG`, or a throwaway cluster.

`.ci/run` starts a server and sets `BULK_EXPORT_TEST_PG` to its DSN. Without
it, a cluster is created in a temporary folder when Debian's `initdb` and
`pg_ctl` are installed (as the `postgres` user when running as root); else the
PostgreSQL tests skip, saying why.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import contextmanager
from typing import Iterator, Optional
from urllib.parse import quote

ENV = "BULK_EXPORT_TEST_PG"


def _bin(name: str) -> Optional[str]:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A throwaway PostgreSQL cluster: its DSN, and a restart as an operator's would be."""

    def __init__(self, run, pg_ctl: str, data: str, log: str, options: str, dsn: str):
        self._run, self._pg_ctl, self._data, self._log, self._options = run, pg_ctl, data, log, options
        self.dsn = dsn

    def restart(self, down_s: float = 0.0) -> None:
        """Stops the server (fast: open connections are dropped), waits `down_s`, starts it again."""
        import time

        self._run(self._pg_ctl, "-D", self._data, "-m", "fast", "-w", "stop")
        time.sleep(down_s)
        self._run(self._pg_ctl, "-D", self._data, "-l", self._log, "-w", "-o", self._options, "start")


@contextmanager
def throwaway() -> Iterator[Optional[Cluster]]:
    """A new cluster in a temporary folder (None, with the reason in `server.reason`, if it cannot be made)."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if not initdb or not pg_ctl:
        server.reason = f"no PostgreSQL: set {ENV} or install the postgresql package (initdb, pg_ctl)"
        yield None
        return
    as_user: list[str] = []
    folder = tempfile.mkdtemp(prefix="bulk-export-pg-")
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(folder, "data"), _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, timeout=120)  # noqa: E731
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}"
    log = os.path.join(folder, "log")
    try:
        run(initdb, "--auth=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres", "-D", data)
        run(pg_ctl, "-D", data, "-l", log, "-w", "-o", options, "start")
    except (subprocess.CalledProcessError, OSError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        server.reason = f"could not start a throwaway PostgreSQL: {getattr(exc, 'stderr', b'') or exc}"
        yield None
        return
    try:
        yield Cluster(run, pg_ctl, data, log, options, f"postgresql://postgres@127.0.0.1:{port}/postgres")
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def server() -> Iterator[Optional[str]]:
    """Yields a DSN of a running server, or None (with the reason in `server.reason`)."""
    if os.environ.get(ENV):
        yield os.environ[ENV]
        return
    with throwaway() as cluster:
        yield cluster.dsn if cluster is not None else None


server.reason = ""


def fresh_schema(dsn: str) -> str:
    """A DSN whose search_path is a new, empty schema: each test gets its own tables."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in dsn else "?"
    return f"{dsn}{separator}options={quote(f'-csearch_path={schema}')}"
