"""Job stores: where jobs, their lifecycle and their per-type progress are kept.

`JobStore` is the small interface the launcher uses; `SqliteJobStore` is the
embedded default, one SQLite file under `--state-dir`. Lifecycle transitions
are guarded in SQL (`UPDATE ... WHERE status IN (...)`), so a job reaches
exactly one terminal state even when several processes report on it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Iterator, Optional, Protocol

from pipelines.models import ExportRequest, ExportStatus, JobRecord, Manifest, TypeProgress
from transforms.fhir.instant import now_instant

SCHEMA_VERSION = 1
DB_NAME = "jobs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
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
);
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, status, created_at);
CREATE TABLE IF NOT EXISTS type_progress (
    job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    type TEXT NOT NULL,
    exported INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, type)
);
"""
_ACTIVE = (ExportStatus.ACCEPTED.value, ExportStatus.IN_PROGRESS.value)


class JobNotFound(LookupError):
    """No such job for this tenant and owner (another tenant's jobs look the same)."""


class InvalidJobState(RuntimeError):
    """The job is not in a state that allows the requested transition."""


class JobStore(Protocol):
    """What the launcher needs from a job store; a PostgreSQL store will implement it too."""

    def create(self, record: JobRecord) -> None: ...
    def get(self, tenant: str, job_id: str, owner: Optional[str] = None) -> JobRecord: ...
    def list(self, tenant: str, owner: Optional[str] = None, include_terminal: bool = False) -> list[JobRecord]: ...
    def mark_in_progress(self, job_id: str) -> None: ...
    def add_progress(self, job_id: str, counts: dict[str, int]) -> None: ...
    def complete(self, job_id: str, manifest: Manifest, bad_records: int) -> None: ...
    def fail(self, job_id: str, message: str) -> None: ...
    def manifest(self, tenant: str, job_id: str, owner: Optional[str] = None) -> Manifest: ...


class SqliteJobStore:
    """The embedded job store: one SQLite file, safe across processes (WAL, busy timeout)."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, DB_NAME)
        self._ready = False  # nothing touches the disk until the store is first used

    def _ensure_schema(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        setup = sqlite3.connect(self.path, timeout=30)
        try:
            setup.executescript(_SCHEMA)  # idempotent; executescript manages its own commit
        finally:
            setup.close()
        self._ready = True
        with self._connect() as db:
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema version {row[0]}, expected {SCHEMA_VERSION}")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            self._ensure_schema()
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def create(self, record: JobRecord) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO jobs (job_id, tenant, owner, level, request_json, request_url,"
                " transaction_time, fhir_version, status, created_at, output_dir)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id,
                    record.tenant,
                    record.owner,
                    record.level.value,
                    record.request.model_dump_json(),
                    record.request_url,
                    record.transaction_time,
                    record.fhir_version,
                    record.status.value,
                    record.created_at,
                    record.output_dir,
                ),
            )

    def get(self, tenant: str, job_id: str, owner: Optional[str] = None) -> JobRecord:
        with self._connect() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE job_id = ? AND tenant = ?", (job_id, tenant)
            ).fetchone()
            if row is None or (owner is not None and row["owner"] != owner):
                raise JobNotFound(f"job {job_id} not found")
            return self._record(db, row)

    def list(self, tenant: str, owner: Optional[str] = None, include_terminal: bool = False) -> list[JobRecord]:
        query = "SELECT * FROM jobs WHERE tenant = ?"
        args: list = [tenant]
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        if not include_terminal:
            query += " AND status IN (?, ?)"
            args.extend(_ACTIVE)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY created_at, job_id", args).fetchall()
            return [self._record(db, row) for row in rows]

    def mark_in_progress(self, job_id: str) -> None:
        self._transition(
            job_id, (ExportStatus.ACCEPTED,), ExportStatus.IN_PROGRESS, "started_at = ?", (now_instant(),)
        )

    def add_progress(self, job_id: str, counts: dict[str, int]) -> None:
        with self._connect() as db:
            row = db.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"job {job_id} not found")
            if row[0] != ExportStatus.IN_PROGRESS.value:
                # A late report (e.g. a retried worker) must not change a finished job's exact counts.
                return
            db.executemany(
                "INSERT INTO type_progress (job_id, type, exported) VALUES (?, ?, ?)"
                " ON CONFLICT (job_id, type) DO UPDATE SET exported = exported + excluded.exported",
                [(job_id, t, n) for t, n in counts.items()],
            )

    def complete(self, job_id: str, manifest: Manifest, bad_records: int) -> None:
        totals: dict[str, int] = {}
        for entry in manifest.output:
            totals[entry.type] = totals.get(entry.type, 0) + (entry.count or 0)
        with self._connect() as db:
            self._transition_in(
                db,
                job_id,
                (ExportStatus.IN_PROGRESS,),
                ExportStatus.COMPLETE,
                "completed_at = ?, manifest_json = ?, bad_records = ?",
                (now_instant(), manifest.model_dump_json(by_alias=True, exclude_none=True), bad_records),
            )
            # The manifest's counts are exact; they replace the running progress.
            db.execute("DELETE FROM type_progress WHERE job_id = ?", (job_id,))
            db.executemany(
                "INSERT INTO type_progress (job_id, type, exported) VALUES (?, ?, ?)",
                [(job_id, t, n) for t, n in totals.items()],
            )

    def fail(self, job_id: str, message: str) -> None:
        self._transition(
            job_id,
            (ExportStatus.ACCEPTED, ExportStatus.IN_PROGRESS),
            ExportStatus.ERROR,
            "completed_at = ?, error_message = ?",
            (now_instant(), message),
        )

    def manifest(self, tenant: str, job_id: str, owner: Optional[str] = None) -> Manifest:
        record = self.get(tenant, job_id, owner)
        if record.status is not ExportStatus.COMPLETE:
            raise InvalidJobState(f"job {job_id} is {record.status.value}; it has no manifest")
        with self._connect() as db:
            (text,) = db.execute("SELECT manifest_json FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return Manifest.model_validate_json(text)

    def _transition(self, job_id, sources, target, assignments, values) -> None:
        with self._connect() as db:
            self._transition_in(db, job_id, sources, target, assignments, values)

    @staticmethod
    def _transition_in(db, job_id, sources, target, assignments, values) -> None:
        marks = ", ".join("?" for _ in sources)
        cursor = db.execute(
            f"UPDATE jobs SET status = ?, {assignments} WHERE job_id = ? AND status IN ({marks})",
            (target.value, *values, job_id, *(s.value for s in sources)),
        )
        if cursor.rowcount != 1:
            row = db.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"job {job_id} not found")
            raise InvalidJobState(f"job {job_id} is {row[0]}; it cannot become {target.value}")

    @staticmethod
    def _record(db: sqlite3.Connection, row: sqlite3.Row) -> JobRecord:
        progress = db.execute(
            "SELECT type, exported FROM type_progress WHERE job_id = ? ORDER BY type", (row["job_id"],)
        ).fetchall()
        return JobRecord(
            job_id=row["job_id"],
            tenant=row["tenant"],
            owner=row["owner"],
            level=row["level"],
            request=ExportRequest.model_validate_json(row["request_json"]),
            request_url=row["request_url"],
            transaction_time=row["transaction_time"],
            fhir_version=row["fhir_version"],
            status=row["status"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            output_dir=row["output_dir"],
            error_message=row["error_message"],
            bad_records=row["bad_records"],
            progress=[TypeProgress(type=t, exported=n) for t, n in progress],
        )


class StoreJobSink:
    """The pipeline's `JobSink` for one job, reporting into a SQLite store (picklable)."""

    def __init__(self, state_dir: str, job_id: str):
        self._state_dir = state_dir
        self._job_id = job_id

    def progress(self, counts: dict[str, int]) -> None:
        SqliteJobStore(self._state_dir).add_progress(self._job_id, counts)

    def complete(self, manifest: Manifest, bad_records: int) -> None:
        SqliteJobStore(self._state_dir).complete(self._job_id, manifest, bad_records)
