"""Files published while an export runs (allowPartialManifests), and the manifest pages frozen so far.

Mixed into `SqlJobStore`. A part writer publishes each part the moment it is
final (`transforms.write.publish`): its row is the file's manifest entry. A
manifest page, once served, never changes (IG v3): the first request for page
k freezes which files it lists, `[first, end)` in the order files were published
and then the final manifest's others (`launcher.jobs.manifest_pages`).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

PUBLISHED_TABLE = """CREATE TABLE IF NOT EXISTS published_files (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    type TEXT,
    url TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq),
    UNIQUE (job_id, url)
)"""
PAGES_TABLE = """CREATE TABLE IF NOT EXISTS manifest_pages (
    job_id TEXT NOT NULL,
    page INTEGER NOT NULL,
    first_file INTEGER NOT NULL,
    end_file INTEGER NOT NULL,
    linked INTEGER NOT NULL,
    PRIMARY KEY (job_id, page)
)"""


class Published(NamedTuple):
    """A published file's manifest entry: `kind` is `output`, `error` or `deleted`."""

    kind: str
    type: Optional[str]
    url: str
    count: int


class PublishedQueries:
    """The allowPartialManifests part of a SQL job store."""

    def publish(self, job_id: str, attempt: int, file: Published) -> bool:
        """Records a final file of a running job's current attempt; False (nothing recorded) otherwise.
        Publishing the same URL again changes nothing."""
        with self._tx() as db:
            row = self._row(db, job_id, "status, attempt", self.lock_suffix)  # serialises publishers
            if row["status"] != "in-progress" or row["attempt"] != attempt:
                return False
            if db.execute("SELECT 1 FROM published_files WHERE job_id = ? AND url = ?", (job_id, file.url)).fetchone():
                return True
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 AS next_seq FROM published_files WHERE job_id = ?",
                             (job_id,)).fetchone()["next_seq"]
            db.execute("INSERT INTO published_files (job_id, seq, kind, type, url, count) VALUES (?, ?, ?, ?, ?, ?)",
                       (job_id, seq, file.kind, file.type, file.url, file.count))
        return True

    def published(self, job_id: str) -> list[Published]:
        """The job's published files, in the order they were published."""
        with self._tx(write=False) as db:
            rows = db.execute("SELECT kind, type, url, count FROM published_files WHERE job_id = ? ORDER BY seq",
                              (job_id,)).fetchall()
        return [Published(r["kind"], r["type"], r["url"], r["count"]) for r in rows]

    def freeze_page(self, job_id: str, page: int, first: int, end: int, linked: bool) -> tuple[int, int, bool]:
        """Page `page`: files `[first, end)`, and whether it links to a next page. Recorded now unless an
        earlier request froze it already, in which case that page's are returned."""
        with self._tx() as db:
            self._row(db, job_id, "status", self.lock_suffix)
            row = db.execute("SELECT first_file, end_file, linked FROM manifest_pages WHERE job_id = ? AND page = ?",
                             (job_id, page)).fetchone()
            if row is not None:
                return row["first_file"], row["end_file"], bool(row["linked"])
            db.execute("INSERT INTO manifest_pages (job_id, page, first_file, end_file, linked) VALUES (?, ?, ?, ?, ?)",
                       (job_id, page, first, end, int(linked)))
        return first, end, linked

    def frozen_pages(self, job_id: str) -> dict[int, tuple[int, int, bool]]:
        with self._tx(write=False) as db:
            rows = db.execute("SELECT page, first_file, end_file, linked FROM manifest_pages WHERE job_id = ?",
                              (job_id,)).fetchall()
        return {r["page"]: (r["first_file"], r["end_file"], bool(r["linked"])) for r in rows}

    def _forget_published(self, db, job_id: str) -> None:
        db.execute("DELETE FROM published_files WHERE job_id = ?", (job_id,))
        db.execute("DELETE FROM manifest_pages WHERE job_id = ?", (job_id,))
