"""The job store contract and its one SQL implementation, shared by SQLite and PostgreSQL.

Every lifecycle transition is a guarded `UPDATE ... WHERE status IN (...)`, so
a job reaches exactly one terminal state even when a cancel and the pipeline's
completion race from different processes or machines. A dialect subclass only
says how to open a transaction, how to serialise kickoffs of one tenant, and
how to skip rows another store client has locked.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional

import orjson

from launcher.stores.client_queries import ClientQueries
from launcher.stores.contract import (
    ANY_OWNER,
    InvalidJobState,
    JobNotFound,
    JobStore,
    Lease,
    Owner,
    StoredJob,
    StoreUnavailable,
    TooManyActiveExports,
    now_ms,
    owner_sql,
    read_stored,
)
from launcher.stores.engine_jobs import RunnerJobQueries
from launcher.stores.lease_queries import LeaseQueries
from launcher.stores.published import PublishedQueries
from launcher.stores.schedule_queries import ScheduleQueries
from launcher.stores.schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE, instant_ms
from pipelines.models import ExportRequest, ExportStatus, Manifest, TypeProgress
from transforms.fhir.instant import now_instant

ACTIVE = (ExportStatus.ACCEPTED.value, ExportStatus.IN_PROGRESS.value)
TERMINAL = (ExportStatus.COMPLETE.value, ExportStatus.ERROR.value, ExportStatus.CANCELLED.value)
_ACTIVE_SQL = "status IN ('accepted', 'in-progress')"
_SCHEMA_CHECK = threading.Lock()


class SqlJobStore(ScheduleQueries, ClientQueries, RunnerJobQueries, PublishedQueries, LeaseQueries):
    """`JobStore` in SQL that SQLite and PostgreSQL both accept (`?` placeholders)."""

    url: str
    # Appended to SELECTs that claim rows; PostgreSQL skips rows other clients hold.
    claim_suffix = ""
    # Appended to SELECTs whose answer a later statement of the transaction relies on; PostgreSQL
    # locks the rows read (SQLite's writers are serialised already).
    lock_suffix = ""
    # True when a read never waits on a network, only on a local file (SQLite's WAL readers wait for no
    # writer): `serve` then answers a status poll on its event loop instead of in a worker thread.
    quick_reads = False

    _ready = False
    # A read-only store (`open_store(..., read_only=True)` on a store that cannot be written) is
    # neither migrated nor written: it serves `status`, `list` and `manifest` as they are.
    read_only = False

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[Any]:
        """A transaction whose `execute(sql, args)` returns a cursor of dict rows; migrates on first use.

        Its body runs SQL and nothing slow (no file, network or pipeline work, no waiting on another
        process): a write transaction locks every other writer out of a SQLite store while it lasts."""
        if self.read_only:
            if write:
                raise StoreUnavailable(f"job store {self.url} is read-only here; this command needs to write to it")
        elif not self._ready:
            with _SCHEMA_CHECK:
                if not self._ready and not self._schema_current():
                    with self._open(write=True) as db:
                        self._migrate(db)
                self._ready = True
        with self._open(write) as db:
            yield db

    def _open(self, write: bool) -> contextlib.AbstractContextManager:
        """A transaction on a new connection (or a kept one: `keep_connections`)."""
        raise NotImplementedError

    def keep_connections(self) -> None:
        """Reuses connections between transactions, for a long-lived process (PostgreSQL's pool does already)."""

    def _schema_current(self) -> bool:
        """Whether the schema is this code's, by a read (no migration, so no write lock, needed)."""
        return False

    def _lock_tenant(self, db: Any, tenant: str) -> None:
        """Serialises kickoffs of one tenant, so the concurrency cap cannot be overrun."""

    def _lock_schema(self, db: Any) -> None:
        """Serialises migrations between store clients."""

    def _migrate(self, db: Any) -> None:
        self._lock_schema(db)
        db.execute(VERSION_TABLE)
        row = db.execute("SELECT version FROM schema_version").fetchone()
        current = row["version"] if row else 0
        if current > SCHEMA_VERSION:
            raise StoreUnavailable(f"job store {self.url} has schema version {current}; this code knows {SCHEMA_VERSION}")
        for migration in MIGRATIONS:
            if migration.version > current:
                for statement in migration.statements:
                    db.execute(statement)
                if migration.backfill is not None:
                    migration.backfill(db)
        if row is None:
            db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        elif current != SCHEMA_VERSION:
            db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def create(self, record, *, run_spec=None, lease=None, max_active=None, total_bytes=0) -> None:
        row = (  # made before the transaction, which runs only SQL
            record.job_id, record.tenant, record.owner, record.level.value,
            record.request.model_dump_json(), record.request_url, record.transaction_time,
            record.fhir_version, record.status.value, record.created_at, record.output_dir,
            orjson.dumps(run_spec).decode() if run_spec is not None else None,
            lease.holder if lease else None, lease.expires_ms if lease else None, total_bytes,
        )
        with self._tx() as db:
            if max_active is not None:
                self._lock_tenant(db, record.tenant)
                self._check_cap(db, record.tenant, max_active)
            db.execute(
                "INSERT INTO jobs (job_id, tenant, owner, level, request_json, request_url, transaction_time,"
                " fhir_version, status, created_at, output_dir, run_spec, lease_holder, lease_expires_ms,"
                " total_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def _check_cap(self, db, tenant: str, max_active: int) -> None:
        active = self._count_active(db, tenant)
        if active >= max_active:
            raise TooManyActiveExports(
                f"too many concurrent exports for tenant {tenant}: {active} accepted or in-progress"
                f" (--max-active-per-tenant {max_active}); retry when one has finished"
            )

    def get(self, tenant, job_id, owner: Owner = ANY_OWNER) -> StoredJob:
        with self._tx(write=False) as db:
            return self._record(db, self._visible(db, tenant, job_id, owner))

    def list(self, tenant, owner: Owner = ANY_OWNER, include_terminal=False) -> list[StoredJob]:
        query, args = "SELECT * FROM jobs WHERE tenant = ?", [tenant]
        query += owner_sql(owner, args)
        if not include_terminal:
            query += f" AND {_ACTIVE_SQL}"
        with self._tx(write=False) as db:
            rows = db.execute(query + " ORDER BY created_at, job_id", args).fetchall()
            return [self._record(db, row) for row in rows]

    def status(self, job_id) -> ExportStatus:
        with self._tx(write=False) as db:
            return ExportStatus(self._row(db, job_id, "status")["status"])

    def owned_by(self, job_id, attempt=None) -> bool:
        with self._tx(write=False) as db:
            row = self._row(db, job_id, "status, attempt")
        live = row["status"] in (*ACTIVE, ExportStatus.COMPLETE.value)
        return live and (attempt is None or row["attempt"] == attempt)

    def completed_by(self, job_id, attempt=None) -> bool:
        with self._tx(write=False) as db:
            row = self._row(db, job_id, "status, attempt")
        return row["status"] == ExportStatus.COMPLETE.value and (attempt is None or row["attempt"] == attempt)

    def mark_in_progress(self, job_id) -> None:
        with self._tx() as db:
            self._transition(db, job_id, ACTIVE[:1], ExportStatus.IN_PROGRESS, "started_at = ?", (now_instant(),))

    def set_total_bytes(self, job_id, nbytes) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET total_bytes = ? WHERE job_id = ?", (nbytes, job_id))

    def add_progress(self, job_id, counts, attempt=None) -> None:
        with self._tx() as db:
            if self._is_running(db, job_id, attempt):
                for resource_type, n in counts.items():
                    db.execute(
                        "INSERT INTO type_progress (job_id, type, exported) VALUES (?, ?, ?) ON CONFLICT (job_id, type)"
                        " DO UPDATE SET exported = type_progress.exported + excluded.exported",
                        (job_id, resource_type, n),
                    )

    def add_read_bytes(self, job_id, nbytes, attempt=None) -> None:
        with self._tx() as db:
            if self._is_running(db, job_id, attempt):
                db.execute("UPDATE jobs SET read_bytes = read_bytes + ? WHERE job_id = ?", (nbytes, job_id))

    def _is_running(self, db, job_id: str, attempt: Optional[int]) -> bool:
        # A late report (a retried worker, an older attempt) must not change a finished job's counts;
        # the lock keeps completion from committing between this check and the report's update.
        row = self._row(db, job_id, "status, attempt", self.lock_suffix)
        return row["status"] == ExportStatus.IN_PROGRESS.value and attempt in (None, row["attempt"])

    def complete(self, job_id, manifest, bad_records, attempt=None, keep_lease=False) -> None:
        totals: dict[str, int] = {}
        for entry in manifest.output:
            totals[entry.type] = totals.get(entry.type, 0) + (entry.count or 0)
        stored = manifest.model_dump_json(by_alias=True, exclude_none=True)  # a long manifest: before the transaction
        with self._tx() as db:
            self._transition(
                db, job_id, ACTIVE[1:], ExportStatus.COMPLETE,
                "completed_at = ?, ended_ms = ?, manifest_json = ?, bad_records = ?, read_bytes = total_bytes"
                + ("" if keep_lease else ", lease_holder = NULL"),
                (now_instant(), now_ms(), stored, bad_records), attempt,
            )
            self._advance_schedule(db, job_id)
            if manifest.output_organized_by:  # files of blocks name no type: the writers' own counts stay
                return
            # The manifest's counts are exact; they replace the running progress.
            db.execute("DELETE FROM type_progress WHERE job_id = ?", (job_id,))
            for resource_type, n in totals.items():
                db.execute("INSERT INTO type_progress (job_id, type, exported) VALUES (?, ?, ?)",
                           (job_id, resource_type, n))

    def fail(self, job_id, message, resumable=False, attempt=None) -> None:
        with self._tx() as db:
            self._transition(
                db, job_id, ACTIVE, ExportStatus.ERROR,
                "completed_at = ?, ended_ms = ?, error_message = ?, resumable = ?, lease_holder = NULL",
                (now_instant(), now_ms(), message, int(resumable)), attempt,
            )

    def cancel(self, tenant, job_id, owner: Owner = ANY_OWNER) -> StoredJob:
        # The lease stays: the launcher running the job releases it once its output is gone.
        with self._tx() as db:
            self._visible(db, tenant, job_id, owner)
            self._transition(db, job_id, ACTIVE, ExportStatus.CANCELLED, "completed_at = ?, ended_ms = ?",
                             (now_instant(), now_ms()), verb="be cancelled")
            return self._record(db, self._row(db, job_id))

    def delete(self, tenant, job_id, owner: Owner = ANY_OWNER) -> StoredJob:
        with self._tx() as db:
            record = self._record(db, self._visible(db, tenant, job_id, owner))
            if not record.status.is_terminal:
                raise InvalidJobState(f"job {job_id} is {record.status.value}; cancel it before deleting it")
            db.execute("DELETE FROM type_progress WHERE job_id = ?", (job_id,))
            self._forget_published(db, job_id)
            db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
            return record

    def manifest(self, tenant, job_id, owner: Owner = ANY_OWNER) -> Manifest:
        with self._tx(write=False) as db:
            row = self._visible(db, tenant, job_id, owner)
        if row["status"] != ExportStatus.COMPLETE.value:
            raise InvalidJobState(f"job {job_id} is {row['status']}; it has no manifest")
        return read_stored(Manifest.model_validate_json, row["manifest_json"], f"job {job_id}'s manifest")

    def run_spec(self, job_id) -> dict:
        with self._tx(write=False) as db:
            text = self._row(db, job_id, "run_spec")["run_spec"]
        if not text:
            raise InvalidJobState(f"job {job_id} was recorded without its run settings; it cannot be resumed")
        return read_stored(orjson.loads, text, f"job {job_id}'s run settings")

    @staticmethod
    def _count_active(db, tenant: str) -> int:
        row = db.execute(f"SELECT COUNT(*) AS n FROM jobs WHERE tenant = ? AND {_ACTIVE_SQL}", (tenant,)).fetchone()
        return int(row["n"])

    def reap_expired(self, now=None) -> list[StoredJob]:
        """Marks `error` every active job whose launcher stopped renewing its lease."""
        now = now_ms() if now is None else now
        with self._tx() as db:
            rows = db.execute(
                f"SELECT job_id, lease_expires_ms FROM jobs WHERE {_ACTIVE_SQL} AND lease_expires_ms < ?"
                + self.claim_suffix,
                (now,),
            ).fetchall()
            reaped = []
            for row in rows:
                job_id = row["job_id"]
                message = (f"the launcher running this job stopped renewing its lease (expired"
                           f" {_ago(now, row['lease_expires_ms'])}); `bulk-export resume {job_id}` runs it again")
                self._transition(db, job_id, ACTIVE, ExportStatus.ERROR,
                                 "completed_at = ?, ended_ms = ?, error_message = ?, resumable = 1, lease_holder = NULL",
                                 (now_instant(), now, message))
                reaped.append(self._record(db, self._row(db, job_id)))
            return reaped

    def claim_resume(self, tenant, job_id, owner, lease, max_active=None) -> StoredJob:
        with self._tx() as db:
            row = self._visible(db, tenant, job_id, owner)
            if not row["resumable"]:
                raise InvalidJobState(f"job {job_id} is {row['status']}; only a job whose launcher stopped"
                                      " or whose engine was lost can be resumed")
            if max_active is not None:
                self._lock_tenant(db, tenant)
                self._check_cap(db, tenant, max_active)
            self._transition(
                db, job_id, (ExportStatus.ERROR.value,), ExportStatus.IN_PROGRESS,
                "attempt = attempt + 1, started_at = ?, completed_at = NULL, ended_ms = NULL, error_message = NULL,"
                " resumable = 0, read_bytes = 0, lease_holder = ?, lease_expires_ms = ?",
                (now_instant(), lease.holder, lease.expires_ms), verb="be resumed",
            )
            db.execute("DELETE FROM type_progress WHERE job_id = ?", (job_id,))
            self._forget_published(db, job_id)  # the attempt's folder starts empty
            return self._record(db, self._row(db, job_id))

    def _visible(self, db, tenant: str, job_id: str, owner: Owner) -> dict:
        """The job's row if `tenant` and `owner` may see it: ANY_OWNER sees every job of the
        tenant, None only jobs without an owner, a name only that owner's jobs."""
        row = db.execute("SELECT * FROM jobs WHERE job_id = ? AND tenant = ?", (job_id, tenant)).fetchone()
        if row is None or (owner is not ANY_OWNER and row["owner"] != owner):
            raise JobNotFound(f"job {job_id} not found")
        return row

    @staticmethod
    def _row(db, job_id: str, columns: str = "*", suffix: str = "") -> dict:
        row = db.execute(f"SELECT {columns} FROM jobs WHERE job_id = ?{suffix}", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"job {job_id} not found")
        return row

    def _transition(self, db, job_id, sources, target, assignments, values, attempt=None, verb=None) -> None:
        marks = ", ".join("?" for _ in sources)
        query = f"UPDATE jobs SET status = ?, {assignments} WHERE job_id = ? AND status IN ({marks})"
        args = [target.value, *values, job_id, *(s.value if isinstance(s, ExportStatus) else s for s in sources)]
        if attempt is not None:
            query += " AND attempt = ?"
            args.append(attempt)
        if db.execute(query, args).rowcount != 1:
            row = self._row(db, job_id, "status, attempt")
            if attempt is not None and row["attempt"] != attempt:
                raise InvalidJobState(f"job {job_id} has been restarted (attempt {row['attempt']}, not {attempt})")
            raise InvalidJobState(f"job {job_id} is {row['status']}; it cannot {verb or 'become ' + target.value}")

    @staticmethod
    def _record(db, row: dict) -> StoredJob:
        progress = db.execute(
            "SELECT type, exported FROM type_progress WHERE job_id = ? ORDER BY type", (row["job_id"],)
        ).fetchall()
        fields = {name: row[name] for name in StoredJob.model_fields if name in row and name not in _COMPUTED}
        return read_stored(lambda row: StoredJob(
            **fields,
            request=ExportRequest.model_validate_json(row["request_json"]),
            resumable=bool(row["resumable"]),
            progress=[TypeProgress(type=p["type"], exported=p["exported"]) for p in progress],
        ), row, f"job {row['job_id']}")


_COMPUTED = ("request", "resumable", "progress")


def _ago(now: int, then: Optional[int]) -> str:
    return "at an unknown time" if then is None else f"{max(0, now - then) // 1000} s ago"


__all__ = [
    "ACTIVE", "ANY_OWNER", "TERMINAL", "InvalidJobState", "JobNotFound", "JobStore", "Lease", "SqlJobStore", "StoredJob",
    "StoreUnavailable", "TooManyActiveExports", "instant_ms", "now_ms",
]
