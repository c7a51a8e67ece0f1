"""The job stores' schema and its migrations, one definition for SQLite and PostgreSQL.

Each migration is a list of statements that both databases accept, plus an
optional Python backfill. `schema_version` holds the version reached; a store
applies the missing migrations, in one transaction, the first time it is used.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from launcher.stores.client_queries import (
    ASSERTIONS_INDEX,
    ASSERTIONS_TABLE,
    CLIENTS_TABLE,
    SERVER_KEYS_RETIREMENT,
    SERVER_KEYS_TABLE,
)
from launcher.stores.engine_jobs import RUNNER_JOB_COLUMN
from launcher.stores.published import PAGES_TABLE, PUBLISHED_TABLE
from launcher.stores.schedule_queries import SCHEDULES_TABLE
from transforms.fhir.instant import instant_key

_TERMINAL = ("complete", "error", "cancelled")


class Migration(NamedTuple):
    """Statements that take the schema to `version`, and a backfill run after them."""

    version: int
    statements: tuple[str, ...]
    backfill: Optional[Callable] = None


def _ended_ms_from_completed_at(db) -> None:
    """Jobs finished before version 2 get their end time from `completed_at`."""
    marks = ", ".join("?" for _ in _TERMINAL)
    rows = db.execute(
        f"SELECT job_id, completed_at, created_at FROM jobs WHERE status IN ({marks})", _TERMINAL
    ).fetchall()
    for row in rows:
        ended = instant_ms(row["completed_at"] or row["created_at"])
        db.execute("UPDATE jobs SET ended_ms = ? WHERE job_id = ?", (ended, row["job_id"]))


def instant_ms(instant: str) -> int:
    """Milliseconds since the epoch of a FHIR instant."""
    key = instant_key(instant)
    return key.seconds * 1000 + int((key.fraction + "000")[:3])


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE IF NOT EXISTS jobs (
                job_id TEXT PRIMARY KEY,
                tenant TEXT NOT NULL,
                owner TEXT,
                level TEXT NOT NULL,
                request_json TEXT NOT NULL,
                request_url TEXT NOT NULL,
                transaction_time TEXT NOT NULL,
                fhir_version TEXT NOT NULL,
                status TEXT NOT NULL,
                created_at TEXT NOT NULL,
                started_at TEXT,
                completed_at TEXT,
                output_dir TEXT NOT NULL,
                error_message TEXT,
                bad_records INTEGER NOT NULL DEFAULT 0,
                manifest_json TEXT
            )""",
            "CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, status, created_at)",
            """CREATE TABLE IF NOT EXISTS type_progress (
                job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
                type TEXT NOT NULL,
                exported BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (job_id, type)
            )""",
        ),
    ),
    Migration(
        2,
        (
            # Which run of the job is current; reports of an older run are ignored.
            "ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1",
            # What `resume` needs to run the job again: settings and Beam options, as JSON.
            "ALTER TABLE jobs ADD COLUMN run_spec TEXT",
            # The launcher that runs the job holds a lease and renews it; an expired
            # lease means that launcher is gone.
            "ALTER TABLE jobs ADD COLUMN lease_holder TEXT",
            "ALTER TABLE jobs ADD COLUMN lease_expires_ms BIGINT",
            "ALTER TABLE jobs ADD COLUMN ended_ms BIGINT",
            "ALTER TABLE jobs ADD COLUMN resumable INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN total_bytes BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN read_bytes BIGINT NOT NULL DEFAULT 0",
            "CREATE INDEX IF NOT EXISTS jobs_by_end ON jobs (ended_ms)",
        ),
        _ended_ms_from_completed_at,
    ),
    # The last completed run's transactionTime per (tenant, schedule): see `launcher.jobs.schedules`.
    Migration(3, (SCHEDULES_TABLE,)),
    # SMART Backend Services: registered clients, used assertion ids, the access-token signing key.
    Migration(4, (CLIENTS_TABLE, ASSERTIONS_TABLE, ASSERTIONS_INDEX, SERVER_KEYS_TABLE)),
    # The engine's own id of a submitted job (Dataflow), so a cancel reaches it: `launcher.jobs.dataflow`.
    Migration(5, (RUNNER_JOB_COLUMN,)),
    # allowPartialManifests: files published while an export runs, and the manifest pages served.
    Migration(6, (PUBLISHED_TABLE, PAGES_TABLE)),
    # Key rotation: several access-token keys, each active or retiring until `retires_ms`.
    Migration(7, (SERVER_KEYS_RETIREMENT,)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
