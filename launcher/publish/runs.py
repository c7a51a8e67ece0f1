"""One `bulk-export publish` run: a snapshot (a new root and chain) or an incremental update page.

Under the publication's lock (a second run waits, then is refused: the chain never forks):
1. finish closing old chains a previous snapshot recorded (`.publish/closing.json`);
2. walk the chain from the root; a snapshot is due on the first run, on `--snapshot`, after
   `--snapshot-every` updates, once the update pages' files exceed `--snapshot-after` bytes,
   or when the chain is closed;
3. a snapshot exports everything, writes its stub (`#pending`) and its extra root pages, records
   the old chain to close, replaces `$bulk-publish`, then ends the old chain with `#closed`;
   an update exports what changed since the tail page's `transactionTime` (the schedule's rule,
   `launcher.jobs.schedules`), writes its pages (the last one `#pending`), then swaps the tail's
   `#pending` for a link to its first page. A run with no output and no deletions writes nothing;
4. sweep files outside the grace period (`launcher.publish.cleanup`).
Every page is complete on disk before any link points to it, and each replacement is atomic,
so a reader never meets a half-written page or a dangling link. A run that dies part-way leaves
only unlinked files, which the next run ignores and the sweep removes. The same steps run on a
local folder or a `gs://` prefix (`PublicationPlace`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

from launcher.jobs.schedules import scheduled_request
from launcher.publish import pages
from launcher.publish.cleanup import sweep
from launcher.publish.folder import CONFIG_NAME, FILES, MANIFESTS, ROOT_NAME, WORK_NAME, PublicationPlace
from pipelines.models import ExportLevel, ExportRequest, Manifest
from transforms.errors import Refused
from transforms.storage.files import remove_tree
from transforms.storage.layout import NDJSON_MIME

CLOSING_NAME = "closing.json"


@dataclasses.dataclass(frozen=True)
class Publication:
    """What a publication publishes and how: its request, public URL, cadence, paging, snapshots, grace."""

    name: str
    request: ExportRequest
    cadence: Optional[str] = None  # updateCadence, an ISO 8601 duration
    requires_token: bool = False
    snapshot_every: Optional[int] = None  # a fresh snapshot after this many updates
    snapshot_after: Optional[int] = None  # ... or once the updates' files exceed this many bytes
    page_files: int = 1000
    grace_s: float = 24 * 3600.0

    def __post_init__(self) -> None:
        check_request(self.request)
        if self.cadence is not None:
            pages.cadence_seconds(self.cadence)


class Exported(NamedTuple):
    """A completed export: its job id, `transactionTime`, folder and manifest."""

    job_id: str
    transaction_time: str
    output_dir: str
    manifest: Manifest


Export = Callable[[ExportRequest, str], Exported]  # (request, work folder) -> the completed export


def check_request(request: ExportRequest) -> ExportRequest:
    """A publication's request: system level, NDJSON, no window (each run sets `_since`), nothing per job."""
    if request.level is not ExportLevel.SYSTEM:
        raise Refused("a publication's request is system level ([base]/$export)")
    if request.since or request.until:
        raise Refused("a publication's request has no _since or _until: each run exports since the previous one")
    if request.output_format != NDJSON_MIME or request.organize_output_by or request.allow_partial_manifests:
        raise Refused("a publication is NDJSON, one type per file: no _outputFormat, organizeOutputBy or"
                      " allowPartialManifests")
    if request.include_associated_data:
        raise Refused("a publication does not take includeAssociatedData")
    return request


def publish(folder: PublicationPlace, publication: Publication, export: Export, snapshot: bool = False,
            lock_wait_s: float = 5.0) -> str:
    """Runs one publish step under the lock; returns a one-line summary of what it published."""
    with folder.lock(lock_wait_s):
        _check_config(folder, publication, snapshot)
        close_chains(folder)
        chain = list(folder.chain())
        tail = pages.next_url(chain[-1][1]) if chain else None
        if not chain or snapshot or tail != pages.PENDING or _snapshot_due(folder, publication, chain):
            line = _snapshot(folder, publication, export, chain)
        else:
            line = _update(folder, publication, export, chain[-1])
        folder.save_private(CONFIG_NAME, {"name": publication.name, "request": publication.request.request_url,
                                          "types": list(publication.request.types), "publicUrl": folder.public_url})
        removed = sweep(folder, publication.grace_s)
    return line + (f"; removed {len(removed)} file(s) past the grace period" if removed else "")


def _snapshot_due(place: PublicationPlace, publication: Publication, chain: list[tuple[str, dict]]) -> bool:
    """After `snapshot_every` updates, or once the files the update pages list exceed `snapshot_after` bytes."""
    root_time = chain[0][1]["transactionTime"]
    updates = [body for _, body in chain if body["transactionTime"] != root_time]
    if publication.snapshot_every and len({body["transactionTime"] for body in updates}) >= publication.snapshot_every:
        return True
    if publication.snapshot_after:
        sizes = place.published()
        listed = {place.rel_of(url) for body in updates for url in pages.listed_urls(body)}
        return sum(sizes.get(rel, 0) for rel in listed) > publication.snapshot_after
    return False


def _check_config(folder: PublicationPlace, publication: Publication, snapshot: bool) -> None:
    """A later run must publish the same request at the same URL, unless it starts over (`--snapshot`)."""
    config = folder.load_private(CONFIG_NAME)
    if config is None or snapshot:
        return
    if (config["request"], config["publicUrl"]) != (publication.request.request_url, folder.public_url):
        raise Refused(f"publication {publication.name} publishes {config['request']} at {config['publicUrl']};"
                      " to change either, start a new chain with --snapshot")


def _snapshot(folder: PublicationPlace, publication: Publication, export: Export, chain: list) -> str:
    done = export(publication.request, folder.private(WORK_NAME))
    files = _move_files(folder, done)
    run = done.job_id
    stub = f"{MANIFESTS}/{run}-stub.json"
    folder.write(stub, pages.dumps(_page(publication, done, None, pages.PENDING)))
    chunks = pages.split(files, publication.page_files)
    rels = [ROOT_NAME] + [f"{MANIFESTS}/{run}-{n}.json" for n in range(2, len(chunks) + 1)]
    _write_pages(folder, publication, done, rels, chunks, folder.url(stub))
    return (f"snapshot {done.transaction_time}: {_counted(files)} at {folder.url(ROOT_NAME)}"
            + (", previous chain closed" if chain else ""))


def _update(folder: PublicationPlace, publication: Publication, export: Export, tail: tuple[str, dict]) -> str:
    tail_rel, tail_page = tail
    since = tail_page["transactionTime"]
    done = export(scheduled_request(publication.request, since), folder.private(WORK_NAME))
    if not done.manifest.output and not done.manifest.deleted:
        remove_tree(done.output_dir)
        return f"no changes since {since}: no page written"
    files = _move_files(folder, done)
    chunks = pages.split(files, publication.page_files)
    rels = [f"{MANIFESTS}/{done.job_id}-{n}.json" for n in range(1, len(chunks) + 1)]
    _write_pages(folder, publication, done, rels, chunks, pages.PENDING)
    folder.write(tail_rel, pages.dumps(pages.with_next(tail_page, folder.url(rels[0]))))  # the link swap
    return f"update {done.transaction_time}: {_counted(files)} at {folder.url(rels[0])}"


def _write_pages(folder: PublicationPlace, publication: Publication, done: Exported, rels: list[str],
                 chunks: list[dict], last_next: str) -> None:
    """Writes one update's pages, last first, so each page exists before the one linking to it.
    A snapshot's first page is the root: written last, after the old chain is recorded for closing."""
    nexts = [folder.url(rel) for rel in rels[1:]] + [last_next]
    for rel, chunk, nxt in reversed(list(zip(rels, chunks, nexts))):
        if rel == ROOT_NAME:
            old_tail = [page_rel for page_rel, _ in folder.chain()][-1:]
            recorded = (folder.load_private(CLOSING_NAME) or {}).get("chains", [])
            folder.save_private(CLOSING_NAME, {"chains": recorded + old_tail})
        folder.write(rel, pages.dumps(_page(publication, done, chunk, nxt)))
        if rel == ROOT_NAME:
            close_chains(folder)


def close_chains(folder: PublicationPlace) -> None:
    """Ends with `#closed` every chain a snapshot recorded for closing (idempotent), then forgets them."""
    recorded = (folder.load_private(CLOSING_NAME) or {}).get("chains", [])
    for start in recorded:
        last = None
        for last in folder.chain(start):
            pass
        if last is not None and pages.next_url(last[1]) == pages.PENDING:
            folder.write(last[0], pages.dumps(pages.with_next(last[1], pages.CLOSED)))
    if recorded:
        folder.save_private(CLOSING_NAME, {"chains": []})


def _page(publication: Publication, done: Exported, files: Optional[dict], next_url: str) -> dict:
    return pages.page(done.transaction_time, publication.requires_token, publication.cadence, files, next_url)


def _move_files(folder: PublicationPlace, done: Exported) -> dict:
    """Moves the export's files to `files/<job>/` (their immutable URLs); returns the page entries."""
    entries: dict = {}
    job_dir = done.output_dir.removeprefix("file://").rstrip("/") + "/"
    for name, listed in (("output", done.manifest.output), ("deleted", done.manifest.deleted),
                         ("outcome", done.manifest.error)):
        for entry in listed:
            source = entry.url.removeprefix("file://")
            if not source.startswith(job_dir):
                raise Refused(f"{entry.url!r} is not a file of the export at {done.output_dir}")
            rel = f"{FILES}/{done.job_id}/{source[len(job_dir):]}"
            folder.adopt(source, rel)
            item = {"type": entry.type, "url": folder.url(rel), "count": entry.count}
            entries.setdefault(name, []).append({k: v for k, v in item.items() if v is not None})
    remove_tree(done.output_dir)
    return entries


def _counted(files: dict) -> str:
    return ", ".join(f"{len(files.get(name, ()))} {name} file(s)" for name in pages.FILE_LISTS)
