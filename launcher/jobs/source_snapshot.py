"""One consistent view of a PostgreSQL source for a whole export, and its `transactionTime`.

The launcher opens a `REPEATABLE READ` transaction on the source, exports its
snapshot (`pg_export_snapshot()`) for every reader of the pipeline to join, and
keeps it open until the job ends. A job whose launcher died cannot be joined
any more: its readers fail clearly and the job can be resumed, from a new
snapshot under its frozen `transactionTime`.

`transactionTime` is taken so that incremental runs chained on it (`_since` =
the previous run's `transactionTime`) see every change exactly once: it is just
before both the snapshot and the start of every transaction still open when
the snapshot is taken. A row the snapshot cannot see was written by such a
transaction or a later one, so its `last_updated` is after `transactionTime`
(when writers set `last_updated` at or after their transaction's start, e.g.
`DEFAULT now()`), and the next run exports it; a row the snapshot sees but
updated after `transactionTime` is left out by the SQL and exported next time.
"""

from __future__ import annotations

import datetime as dt
from typing import Optional

from transforms.storage.pg_source import APPLICATION_NAME, ReadAt, begin, connect, is_postgres, parse_source

# Other open transactions, except exports' own (read-only: they write nothing).
_OLDEST_OPEN = """
SELECT least(clock_timestamp(), (
    SELECT min(xact_start) FROM pg_stat_activity
    WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
      AND application_name <> %s))
"""


class SourceSnapshot:
    """An exported snapshot of a PostgreSQL source, held open until `close()`; and its `transactionTime`."""

    def __init__(self, source: str, hold: bool = True):
        """`hold=False` only takes the `transactionTime` (a Flex Template's launcher ends before its
        workers start, so no snapshot could be joined)."""
        pg = parse_source(source)
        self._conn = connect(pg)
        try:
            (oldest,) = self._conn.execute(_OLDEST_OPEN, (APPLICATION_NAME,)).fetchone()
            self.transaction_time = _instant_before(oldest)
            self.snapshot = ""
            if hold:
                begin(self._conn, ReadAt(self.transaction_time))
                (self.snapshot,) = self._conn.execute("SELECT pg_export_snapshot()").fetchone()
            else:
                self.close()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Ends the transaction: the snapshot can no longer be joined."""
        if self._conn is not None and not self._conn.closed:
            self._conn.close()

    def __enter__(self) -> "SourceSnapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_snapshot(source: str, hold: bool = True) -> Optional[SourceSnapshot]:
    """The source's snapshot when it is a PostgreSQL source, else None."""
    return SourceSnapshot(source, hold) if is_postgres(source) else None


def release(snapshot: Optional[SourceSnapshot]) -> None:
    """Ends a held snapshot, if there is one."""
    if snapshot is not None:
        snapshot.close()


def _instant_before(moment: dt.datetime) -> str:
    """A FHIR instant (UTC, milliseconds) strictly before `moment`."""
    moment = moment.astimezone(dt.timezone.utc).replace(microsecond=moment.microsecond // 1000 * 1000)
    moment -= dt.timedelta(milliseconds=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
