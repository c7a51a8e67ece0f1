"""Leases on jobs, mixed into `SqlJobStore`: who runs or cleans a job, and the expired jobs cleaners claim.

A launcher running a job renews its lease; a cleaner claims a batch of expired
jobs under one, so concurrent cleaners never share a job. Each method is one
short transaction of SQL only.
"""

from __future__ import annotations

from typing import Optional

from launcher.stores.contract import ANY_OWNER, Lease, Owner, StoredJob, now_ms, owner_sql

_TERMINAL_SQL = "status IN ('complete', 'error', 'cancelled')"
_FREE_LEASE_SQL = "(lease_holder IS NULL OR lease_expires_ms < ?)"


class LeaseQueries:
    """The lease part of a SQL job store."""

    claim_suffix = ""  # see `SqlJobStore.claim_suffix`

    @staticmethod
    def _expired(cutoff_ms: int, limit: int, tenant: Optional[str], owner: Owner) -> tuple[str, list]:
        query, args = f"SELECT * FROM jobs WHERE {_TERMINAL_SQL} AND ended_ms < ? AND {_FREE_LEASE_SQL}", [cutoff_ms, now_ms()]
        if tenant is not None:
            query += " AND tenant = ?"
            args.append(tenant)
        query += owner_sql(owner, args)
        return query + " ORDER BY ended_ms, job_id LIMIT ?", [*args, limit]

    def claim_expired(self, cutoff_ms, limit, lease, tenant=None, owner: Owner = ANY_OWNER) -> list[StoredJob]:
        """Terminal jobs that ended before `cutoff_ms`, oldest first: of `tenant` (None: every
        tenant) and `owner` (ANY_OWNER: every owner; None: jobs without an owner). Leases them,
        so concurrent cleaners never share a job."""
        query, args = self._expired(cutoff_ms, limit, tenant, owner)
        with self._tx() as db:
            rows = db.execute(query + self.claim_suffix, args).fetchall()
            for row in rows:
                db.execute("UPDATE jobs SET lease_holder = ?, lease_expires_ms = ? WHERE job_id = ?",
                           (lease.holder, lease.expires_ms, row["job_id"]))
            return [self._record(db, row) for row in rows]

    def renew_lease(self, job_id, lease) -> bool:
        with self._tx() as db:
            cursor = db.execute("UPDATE jobs SET lease_expires_ms = ? WHERE job_id = ? AND lease_holder = ?",
                                (lease.expires_ms, job_id, lease.holder))
            return cursor.rowcount == 1

    def release_lease(self, job_id, holder) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET lease_holder = NULL WHERE job_id = ? AND lease_holder = ?", (job_id, holder))

    def is_leased(self, job_id) -> bool:
        with self._tx(write=False) as db:
            row = self._row(db, job_id, "lease_holder, lease_expires_ms")
        return row["lease_holder"] is not None and row["lease_expires_ms"] >= now_ms()

    def lease(self, job_id) -> Optional[Lease]:
        """The job's lease (holder and end) if one is held, expired or not; None when released."""
        with self._tx(write=False) as db:
            row = self._row(db, job_id, "lease_holder, lease_expires_ms")
        if row["lease_holder"] is None:
            return None
        return Lease(row["lease_holder"], int(row["lease_expires_ms"] or 0))
