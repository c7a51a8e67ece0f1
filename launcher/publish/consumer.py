"""The reference Bulk Publish consumer (`bulk-export pull`): follows a publication into a local NDJSON dataset.

It follows the IG's retrieval flow: the root, its pages, the update pages; at
`#pending` it polls that page with `If-None-Match`, every `updateCadence` (or
`interval`); `#closed`, or a page gone (404), starts again from the root with an
empty dataset; a chain that simply ends is followed by polling the root, and a
changed root starts again. 5xx answers and transport errors are retried with
exponential backoff (doubling from `first_delay_s`, capped at the polling
interval), without end unless `retries` bounds them: a publisher's outage is
waited out, as polling waits out a quiet chain. Each page is applied as the IG
says: its `output` files in order (latest `Type/id` wins), then its `deleted`
files. The dataset is `<into>/<Type>.ndjson`, one resource per line as
published; where it stands is `<into>/.pull.json`. Both are written when the
walk reaches a stop (a marker or the chain's end), so a pull that dies part-way
replays from the last stop, which gives the same dataset.
Reads `http(s)://` URLs (httpx), `file://` URLs and local paths. `stopping` (an
Event; `bulk-export pull` sets it on SIGTERM or SIGINT) ends the polling at once.

The dataset is held in memory while pulling (a dict of the latest line per
`Type/id`): a reference consumer, not a loader for datasets larger than memory.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Callable, NamedTuple, Optional

import httpx
import orjson

from launcher.publish import pages
from launcher.publish.folder import ROOT_NAME
from transforms.errors import ExportError, Unavailable

STATE_NAME = ".pull.json"
DEFAULT_INTERVAL_S = 60.0


class Fetched(NamedTuple):
    status: int
    body: bytes
    etag: Optional[str]


class Reader:
    """GETs a URL of a publication: over HTTP (conditional, with backoff on 5xx) or from a local file.
    `retries`: how many times a failed GET is tried again (None: until it answers); `say` hears each retry."""

    def __init__(self, client: Optional[httpx.Client] = None, token: Optional[str] = None,
                 retries: Optional[int] = None, first_delay_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] = lambda _: None):
        self.client = client or httpx.Client(timeout=60, follow_redirects=True)
        self.token, self.retries, self.first_delay_s, self.sleep = token, retries, first_delay_s, sleep
        self.say = say
        self.max_delay_s = DEFAULT_INTERVAL_S

    def get(self, url: str, etag: Optional[str] = None) -> Fetched:
        if not url.startswith(("http://", "https://")):
            return _local(url, etag)
        headers = {"If-None-Match": etag} if etag else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        delay, attempt = self.first_delay_s, 0
        while True:
            try:
                response = self.client.get(url, headers=headers)
                if response.status_code < 500:
                    return Fetched(response.status_code, response.content, response.headers.get("etag"))
                problem = f"{response.status_code}"
            except httpx.TransportError as exc:
                problem = type(exc).__name__
            if self.retries is not None and attempt >= self.retries:
                raise Unavailable(f"GET {url}: {problem} after {attempt + 1} attempts")
            attempt += 1
            self.say(f"GET {url}: {problem}; retry {attempt} in {delay:g} s")
            self.sleep(delay)
            delay = min(delay * 2, max(self.max_delay_s, self.first_delay_s))


def _local(url: str, etag: Optional[str]) -> Fetched:
    path = url.removeprefix("file://")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return Fetched(404, b"", None)
    tag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    return Fetched(304, b"", tag) if tag == etag else Fetched(200, data, tag)


def root_url(where: str) -> str:
    """The root's URL: `where` itself, or for a local publication folder its `$bulk-publish`."""
    local = where.removeprefix("file://")
    if not where.startswith(("http://", "https://")) and os.path.isdir(local):
        return "file://" + os.path.join(os.path.abspath(local), ROOT_NAME)
    return where


class Dataset:
    """The local dataset: the latest line of each `Type/id`, saved as `<Type>.ndjson` files."""

    def __init__(self, folder: str):
        self.folder = folder
        self.resources: dict[str, dict[str, bytes]] = {}
        os.makedirs(folder, exist_ok=True)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".ndjson"):
                with open(os.path.join(folder, name), "rb") as f:
                    for line in f.read().splitlines():
                        self.upsert(line)

    def upsert(self, line: bytes) -> None:
        body = orjson.loads(line)
        self.resources.setdefault(body["resourceType"], {})[body["id"]] = line

    def delete_from(self, line: bytes) -> int:
        """Deletes what one `deleted` line (a transaction Bundle of `DELETE Type/id`) names; how many it named."""
        entries = orjson.loads(line).get("entry") or ()
        for entry in entries:
            rtype, _, rid = entry["request"]["url"].partition("/")
            self.resources.get(rtype, {}).pop(rid, None)
        return len(entries)

    def save(self) -> None:
        for rtype, by_id in self.resources.items():
            if by_id:
                _write(os.path.join(self.folder, f"{rtype}.ndjson"), b"".join(line + b"\n" for line in by_id.values()))
        for name in os.listdir(self.folder):
            if name.endswith(".ndjson") and not self.resources.get(name[:-len(".ndjson")]):
                os.remove(os.path.join(self.folder, name))


def page_line(url: str, added: int, deleted: int, transaction_time: str) -> str:
    """The line said for a page that changed the dataset."""
    return f"  {url}: {added} resource(s) in, {deleted} deleted (transactionTime {transaction_time})"


class PullStopped(Exception):
    """`stopping` was set while a GET waited to be retried."""


class Consumer:
    """Pulls the publication at `root` into `into`; `say` reports each step, `applied(url, added, deleted,
    transactionTime)` each page applied (by default a line said for a page that changed something)."""

    def __init__(self, root: str, into: str, reader: Reader, say: Callable[[str], None] = print,
                 interval_s: Optional[float] = None,
                 applied: Optional[Callable[[str, int, int, str], None]] = None):
        self.root, self.into, self.reader, self.say = root_url(root), into, reader, say
        self.interval_s = interval_s
        self.applied = applied or self._say_page
        self.stopping = threading.Event()
        self.reader.sleep = self._wait_to_retry
        if interval_s is not None:
            self.reader.max_delay_s = interval_s
        self.dataset = Dataset(into)
        self.state = _load(os.path.join(into, STATE_NAME))

    def run(self, once: bool = False) -> None:
        """Follows the publication; with `once`, returns at the first stop where nothing new is ready;
        without, polls until `stopping` is set."""
        fresh = self.state is None or self.state.get("root") != self.root
        if fresh:
            self._restart()
        while not self.stopping.is_set():
            if self._poll():
                continue  # it moved on: poll again at once, where it stands now
            if once or self.stopping.wait(self._interval()):
                return

    def _wait_to_retry(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise PullStopped("stopped while waiting to retry")

    def _say_page(self, url: str, added: int, deleted: int, transaction_time: str) -> None:
        if added or deleted:
            self.say(page_line(url, added, deleted, transaction_time))

    def _restart(self) -> None:
        self.dataset.resources.clear()
        fetched = self._get(self.root)
        self.say(f"reading the root {self.root}")
        self._follow(self.root, fetched)

    def _poll(self) -> bool:
        """One conditional GET where the consumer stands; True when it moved on."""
        cursor, etag = self.state["cursor"], self.state.get("etag")
        fetched = self.reader.get(cursor, etag)
        if fetched.status == 304:
            return False
        if fetched.status == 404:
            self.say(f"{cursor} is gone: starting again from the root")
            self._restart()
            return True
        body = _page(cursor, fetched)
        link = pages.next_url(body)
        if cursor == self.root:  # the chain had ended; the root changed
            self.say("the root changed: starting again from it")
            self._restart()
        elif link == pages.CLOSED:
            self.say("the chain is closed: starting again from the root")
            self._restart()
        elif link is None or link == pages.PENDING:  # only the ETag moved
            self._stop(cursor, fetched.etag, body)
            return False
        else:
            self._follow(link, self._get(link))
        return True

    def _follow(self, url: str, fetched: Fetched) -> None:
        """Applies the page at `url` and those after it, to the chain's stop."""
        while True:
            body = _page(url, fetched)
            self._apply(url, body)
            link = pages.next_url(body)
            if link == pages.CLOSED:
                self.say("the chain is closed: starting again from the root")
                self.dataset.resources.clear()
                url, fetched = self.root, self._get(self.root)
            elif link is None:
                root = self._get(self.root) if url != self.root else fetched
                self._stop(self.root, root.etag, body)
                return
            elif link == pages.PENDING:
                self._stop(url, fetched.etag, body)
                return
            else:
                url, fetched = link, self._get(link)

    def _apply(self, url: str, body: dict) -> None:
        added = deleted = 0
        for entry in body.get("output") or ():
            for line in self._lines(entry["url"]):
                self.dataset.upsert(line)
                added += 1
        for entry in body.get("deleted") or ():
            for line in self._lines(entry["url"]):
                deleted += self.dataset.delete_from(line)
        self.applied(url, added, deleted, body["transactionTime"])

    def _lines(self, url: str) -> list[bytes]:
        return [line for line in self._get(url).body.splitlines() if line.strip()]

    def _stop(self, cursor: str, etag: Optional[str], body: dict) -> None:
        """Commits the dataset, then where it stands (the dataset first: a crash between them replays)."""
        self.dataset.save()
        self.reader.max_delay_s = max(self.reader.first_delay_s, self._interval_of(body.get("updateCadence")))
        self.state = {"root": self.root, "cursor": cursor, "etag": etag, "cadence": body.get("updateCadence"),
                      "transactionTime": body.get("transactionTime")}
        _write(os.path.join(self.into, STATE_NAME), orjson.dumps(self.state, option=orjson.OPT_INDENT_2))
        total = sum(len(v) for v in self.dataset.resources.values())
        self.say(f"{total} resource(s) as of {body.get('transactionTime')}; waiting at {cursor}")

    def _get(self, url: str) -> Fetched:
        fetched = self.reader.get(url)
        if fetched.status != 200:
            raise PullFailed(f"GET {url}: {fetched.status}")
        return fetched

    def _interval(self) -> float:
        return self._interval_of((self.state or {}).get("cadence"))

    def _interval_of(self, cadence: Optional[str]) -> float:
        """How long to wait between polls: `interval_s`, else the cadence, else a minute."""
        if self.interval_s is not None:
            return self.interval_s
        return pages.cadence_seconds(cadence, "updateCadence") if cadence else DEFAULT_INTERVAL_S


class PullFailed(ExportError):
    """A page or file of the publication could not be read."""


def _page(url: str, fetched: Fetched) -> dict:
    try:
        body = orjson.loads(fetched.body)
    except orjson.JSONDecodeError:
        raise PullFailed(f"{url} is not a JSON manifest page") from None
    if not isinstance(body, dict) or "transactionTime" not in body:
        raise PullFailed(f"{url} is not a Bulk Publish manifest page")
    return body


def _load(path: str) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except FileNotFoundError:
        return None


def _write(path: str, data: bytes) -> None:
    temp = f"{path}.tmp"
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
