"""The id index behind `read` and Group search: per tenant, one SQLite file in the state folder, listing
where each served resource of the source lies (file, byte offset, length) and each Group's name and
identifiers, so no request scans the source.

It is refreshed with the source: at most every `interval_s` (`--read-index-interval`), a request lists
the source again (names, sizes, modification times, inodes; nothing is read) and re-scans only the
files that were added or changed, dropping those removed. A restart re-scans nothing unchanged. Only
local NDJSON files are indexed (`indexable`): by name (`.ndjson`, `.jsonl`, with or without `.gz`), or
every file under `--source-format ndjson`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from typing import Iterator, NamedTuple, Optional, Sequence

from launcher.core.names import source_for_tenant
from launcher.server.source_lines import SCAN_ERRORS, Line, read_at, resource_of, scan
from transforms.storage.files import is_local
from transforms.storage.pg_source import is_postgres
from transforms.storage.source_files import LocalFile, SourceError, SourceFile, source_files
from transforms.storage.source_formats import AUTO, NDJSON, NDJSON_SUFFIXES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, device INTEGER,
                                  inode INTEGER, target TEXT, inside TEXT);
CREATE TABLE IF NOT EXISTS lines (type TEXT, id TEXT, path TEXT, offset INTEGER, length INTEGER, updated REAL,
                                  name TEXT, current INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS lines_key ON lines (type, id, current);
CREATE INDEX IF NOT EXISTS lines_path ON lines (path);
CREATE TABLE IF NOT EXISTS identifiers (line INTEGER, system TEXT, value TEXT);
CREATE INDEX IF NOT EXISTS identifiers_line ON identifiers (line);
"""
# Of several copies of one Type/id, the one served: the latest `meta.lastUpdated`, then the last listed.
_CURRENT = """
UPDATE lines SET current = (rowid IN (SELECT rowid FROM (SELECT rowid, ROW_NUMBER() OVER (PARTITION BY type, id
    ORDER BY updated DESC, path DESC, offset DESC) AS rank FROM lines) WHERE rank = 1))
"""
_GROUPS = ("FROM lines l JOIN files f ON f.path = l.path WHERE l.type = 'Group' AND l.current = 1")


class Located(NamedTuple):
    """Where one resource's bytes are."""

    path: str
    file: LocalFile
    offset: int
    length: int


class TokenValue(NamedTuple):
    """One `identifier` search value: `system|value`, `value` (any system), `|value` (no system),
    `system|` (any value of the system)."""

    any_system: bool
    system: Optional[str]
    value: Optional[str]


def indexable(source: str, source_format: str) -> bool:
    """True when `read` can serve `source`: local NDJSON files (gzip or not)."""
    return source_format in (AUTO, NDJSON) and not is_postgres(source) and is_local(source)


class ReadIndex:
    """One tenant's index of its source (`source` with `{tenant}` filled in)."""

    def __init__(self, path: str, source: str, source_format: str, interval_s: float):
        self.source, self._format, self._interval_s = source, source_format, interval_s
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # one statement or transaction at a time on the connection
        self._refreshing = threading.Lock()
        self._checked = -float("inf")

    def refresh(self, force: bool = False) -> None:
        """Brings the index up to the source when `interval_s` has passed since the last check (or `force`)."""
        with self._refreshing:
            if not force and time.monotonic() - self._checked < self._interval_s:
                return
            self._checked = time.monotonic()
            wanted = {f.path: (f, _signature(f)) for f in self._listed()}
            with self._lock:
                stored = {row[0]: row[1:] for row in self._db.execute("SELECT * FROM files")}
            changed = [(f, signature) for path, (f, signature) in wanted.items() if stored.get(path) != signature]
            removed = [path for path in stored if path not in wanted]
            if not changed and not removed:
                return
            scanned = [(f, signature, lines) for f, signature in changed if (lines := _scan(f)) is not None]
            with self._lock, self._transaction():
                for path in removed + [f.path for f, _ in changed]:
                    self._db.execute("DELETE FROM identifiers WHERE line IN (SELECT rowid FROM lines WHERE path = ?)",
                                     (path,))
                    self._db.execute("DELETE FROM lines WHERE path = ?", (path,))
                    self._db.execute("DELETE FROM files WHERE path = ?", (path,))
                for f, signature, lines in scanned:
                    self._insert(f.path, signature, lines)
                self._db.execute(_CURRENT)

    def locate(self, resource_type: str, resource_id: str) -> Optional[Located]:
        with self._lock:
            row = self._db.execute(
                "SELECT l.path, f.device, f.inode, f.target, f.inside, l.offset, l.length FROM lines l JOIN files f"
                " ON f.path = l.path WHERE l.type = ? AND l.id = ? AND l.current = 1", (resource_type, resource_id),
            ).fetchone()
        return None if row is None else _located(row)

    def read(self, resource_type: str, resource_id: str) -> Optional[bytes]:
        """The resource's bytes as the source has them, or None when the source has no such resource.

        A file changed since the last check may no longer hold the line at its offset: the index is
        then refreshed at once and the read tried again."""
        for attempt in range(2):
            found = self.locate(resource_type, resource_id)
            if found is None:
                return None
            content = _read(found)
            if content is not None and resource_of(content) == (resource_type, resource_id):
                return content
            if attempt == 0:
                self.refresh(force=True)
        return None

    def types(self) -> set[str]:
        """The types the source holds at least one resource of."""
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT DISTINCT type FROM lines")}

    def groups(self, identifiers: Sequence[Sequence[TokenValue]], names: Sequence[Sequence[str]],
               offset: int, count: int) -> tuple[int, list[str]]:
        """The Groups matching every `identifiers` and `names` parameter (each one's values ORed; a name
        matches when the Group's starts with it, both casefolded without accents): their total, and
        the ids of `count` of them, by id, from `offset`."""
        where, args = [], []
        for values in identifiers:
            tests = [_token_test(v, args) for v in values]
            where.append(f"EXISTS (SELECT 1 FROM identifiers i WHERE i.line = l.rowid AND ({' OR '.join(tests)}))")
        for values in names:
            where.append("(" + " OR ".join("substr(l.name, 1, ?) = ?" for _ in values) + ")")
            for value in values:
                args += [len(value), value]
        condition = "".join(f" AND {test}" for test in where)
        with self._lock:
            total = self._db.execute(f"SELECT count(*) {_GROUPS}{condition}", args).fetchone()[0]
            rows = self._db.execute(f"SELECT l.id {_GROUPS}{condition} ORDER BY l.id LIMIT ? OFFSET ?",
                                    [*args, count, offset]).fetchall()
        return total, [row[0] for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _listed(self) -> list[SourceFile]:
        try:
            files = source_files(self.source).files
        except SourceError:  # no source (yet) for this tenant: nothing to read
            return []
        return [f for f in files if f.local is not None and (self._format == NDJSON or _ndjson_name(f.path))]

    def _insert(self, path: str, signature: tuple, lines: list[Line]) -> None:
        self._db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", (path, *signature))
        for line in lines:
            cursor = self._db.execute("INSERT INTO lines (type, id, path, offset, length, updated, name)"
                                      " VALUES (?, ?, ?, ?, ?, ?, ?)", (line.type, line.id, path, line.offset,
                                                                       line.length, line.updated, line.name))
            self._db.executemany("INSERT INTO identifiers VALUES (?, ?, ?)",
                                 [(cursor.lastrowid, system, value) for system, value in line.identifiers])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


class ReadIndexes:
    """The read indexes of every tenant this server serves, each made at its first use."""

    def __init__(self, state_dir: str, source: str, source_format: str, interval_s: float):
        self._folder = os.path.join(state_dir, "read-index")
        self._source, self._format, self._interval_s = source, source_format, interval_s
        self._indexes: dict[str, ReadIndex] = {}
        self._lock = threading.Lock()

    def supported(self, tenant: str) -> bool:
        return indexable(source_for_tenant(self._source, tenant), self._format)

    def fresh(self, tenant: str) -> Optional[ReadIndex]:
        """`tenant`'s index, refreshed when its check is due; None when its source cannot be indexed."""
        if not self.supported(tenant):
            return None
        with self._lock:
            index = self._indexes.get(tenant)
            if index is None:
                source = os.path.abspath(source_for_tenant(self._source, tenant))
                name = f"{tenant}-{hashlib.sha256(source.encode()).hexdigest()[:16]}.sqlite3"
                index = self._indexes[tenant] = ReadIndex(os.path.join(self._folder, name), source, self._format,
                                                          self._interval_s)
        index.refresh()
        return index

    def close(self) -> None:
        with self._lock:
            for index in self._indexes.values():
                index.close()
            self._indexes.clear()


def _ndjson_name(path: str) -> bool:
    return path.removesuffix(".gz").endswith(NDJSON_SUFFIXES)


def _signature(f: SourceFile) -> tuple:
    """What tells a file changed: its size, modification time and identity."""
    assert f.local is not None
    try:
        mtime = os.stat(f.local.target or f.path).st_mtime_ns
    except OSError:
        mtime = -1
    return f.size, mtime, f.local.device, f.local.inode, f.local.target, f.local.inside


def _scan(f: SourceFile) -> Optional[list[Line]]:
    """The file's served lines; None when it cannot be read now (it is tried again at the next check)."""
    try:
        return list(scan(f.path, f.local))
    except SCAN_ERRORS:  # NotListed and SourceError are OSErrors
        return None


def _read(found: Located) -> Optional[bytes]:
    try:
        return read_at(found.path, found.file, found.offset, found.length)
    except SCAN_ERRORS:  # NotListed and SourceError are OSErrors
        return None


def _located(row: Sequence) -> Located:
    path, device, inode, target, inside, offset, length = row
    return Located(path, LocalFile(device, inode, target, inside), offset, length)


def _token_test(value: TokenValue, args: list) -> str:
    if value.any_system:
        args.append(value.value)
        return "i.value = ?"
    if value.value is None:
        args.append(value.system)
        return "i.system = ?"
    if value.system is None:
        args.append(value.value)
        return "(i.system IS NULL AND i.value = ?)"
    args += [value.system, value.value]
    return "(i.system = ? AND i.value = ?)"

