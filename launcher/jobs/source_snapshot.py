"""One consistent view of a PostgreSQL source for a whole export, and its `transactionTime`.

The launcher opens a `REPEATABLE READ` transaction on the source, exports its
snapshot (`pg_export_snapshot()`) for every reader of the pipeline to join, and
keeps it open until the job ends. A job whose launcher died cannot be joined
any more: its readers fail clearly and the job can be resumed, from a new
snapshot under its frozen `transactionTime`.

`transactionTime` (T) is what chains incremental runs (`_since` = the previous
run's T), so it must split the writes as the snapshot does, for writers that
stamp `last_updated` with their transaction's start (`now()`):
- never lose a change: a write the snapshot cannot see must have
  `last_updated` > T (else the next run's `_since` leaves it out too); so T is
  before the start of every transaction still open at the snapshot;
- keep each resource's state at T: a write the snapshot sees should have
  `last_updated` <= T (else the SQL leaves it out of this run, and a one-row-
  per-resource table has lost the version before it); so T is as late as that
  allows: the snapshot's own start when no transaction is open.
The transactions open at the snapshot are only known from `pg_stat_activity`,
read after it: one that ended in between is unseen. So the read is checked
(`_SETTLED`: no transaction running at the snapshot, or given an id after it,
has committed since) and taken again when the check fails; after a few tries
(a torrent of commits) T falls back to a read taken before the snapshot, which
never loses a change but may leave some to the next run (reported as late).
T has microseconds, as `last_updated` has.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

from transforms.storage.pg_source import APPLICATION_NAME, PgSource, ReadAt, begin, connect, is_postgres, parse_source

# The start of the oldest transaction open now, except exports' own (read-only: they write nothing),
# or this statement's start when there is none.
_OLDEST_OPEN = """
SELECT least(statement_timestamp(), (
    SELECT min(xact_start) FROM pg_stat_activity
    WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
      AND application_name <> %(app)s))
"""
# True when no transaction that was running at `snap` (or that got its id after it) has committed since;
# false too when too many ids were given since to check.
_SETTLED = """
WITH span AS (SELECT pg_snapshot_xmax(%(snap)s::pg_snapshot)::text::bigint AS lo,
                     pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS hi)
SELECT (SELECT hi - lo <= 100000 FROM span) AND NOT EXISTS (
    SELECT 1 FROM (SELECT pg_snapshot_xip(%(snap)s::pg_snapshot) AS x
                   UNION ALL SELECT n::text::xid8 FROM span, generate_series(lo, hi - 1) n WHERE hi - lo <= 100000) c
    WHERE pg_xact_status(c.x) = 'committed')
"""
_TRIES = 5


class SourceSnapshot:
    """An exported snapshot of a PostgreSQL source, held open until `close()`; and its `transactionTime`."""

    def __init__(self, source: str, hold: bool = True):
        """`hold=False` only takes the `transactionTime` (a Flex Template's launcher ends before its
        workers start, so no snapshot could be joined)."""
        pg = parse_source(source)
        self._conn = connect(pg)
        self.snapshot = ""
        try:
            if not hold:
                self.transaction_time = _instant_before(_oldest_open(self._conn))
                self.close()
                return
            with connect(pg) as watcher:
                self.transaction_time = _instant_before(self._take(pg, watcher))
        except BaseException:
            self.close()
            raise

    def _take(self, pg: PgSource, watcher) -> dt.datetime:
        """Takes the snapshot (`self.snapshot`) and returns the moment just after T."""
        for _ in range(_TRIES):
            before = _oldest_open(self._conn)  # never loses a change, but may be early (see above)
            started, self.snapshot, snap = _start(self._conn)
            oldest = _oldest_open(watcher)
            if _settled(watcher, snap):
                return min(started, oldest)
            self._conn.execute("ROLLBACK")
        begin(self._conn, ReadAt(""))  # the last try's `before`, with a fresh snapshot after it
        (self.snapshot,) = self._conn.execute("SELECT pg_export_snapshot()").fetchone()
        return before

    def close(self) -> None:
        """Ends the transaction: the snapshot can no longer be joined."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()

    def __enter__(self) -> "SourceSnapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _oldest_open(conn) -> dt.datetime:
    (moment,) = conn.execute(_OLDEST_OPEN, {"app": APPLICATION_NAME}).fetchone()
    return moment


def _start(conn) -> tuple[dt.datetime, str, str]:
    """Begins the export's transaction: its start, its exported snapshot and the snapshot itself."""
    begin(conn, ReadAt(""))
    return conn.execute("SELECT statement_timestamp(), pg_export_snapshot(), pg_current_snapshot()::text").fetchone()


def _settled(watcher, snap: str) -> bool:
    (settled,) = watcher.execute(_SETTLED, {"snap": snap}).fetchone()
    return bool(settled)


def open_snapshot(source: str, hold: bool = True) -> Optional[SourceSnapshot]:
    """The source's snapshot when it is a PostgreSQL source, else None."""
    return SourceSnapshot(source, hold) if is_postgres(source) else None


def release(snapshot: Optional[SourceSnapshot]) -> None:
    """Ends a held snapshot, if there is one."""
    if snapshot is not None:
        snapshot.close()


def _instant_before(moment: dt.datetime) -> str:
    """A FHIR instant (UTC, microseconds) one microsecond before `moment`."""
    moment = moment.astimezone(dt.timezone.utc) - dt.timedelta(microseconds=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
