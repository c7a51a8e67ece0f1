"""allowPartialManifests: the pages of an export's manifest, served while it runs and after.

A job kicked off with `allowPartialManifests=true` lists its files in pages of
at most `page_files`. The files are those its writers published while it ran
(`launcher.stores.published`), then, once it is complete, the rest of its final
manifest (error and deleted files, and any part not published early). A page is
frozen the first time it is served and never changes afterwards (IG v3): a page
served while the export runs holds the files published so far (at most
`page_files`) and links to the next page, which is not ready (None) until a
further file is published or the export completes. Every page has the same
`transactionTime`, `request`, `requiresAccessToken`, `outputOrganizedBy` and
`message`; a `link` with relation `next` leads on. Beam-free: `bulk-export
manifest --page` and the status endpoint share it.
"""

from __future__ import annotations

from typing import Callable, Optional

from launcher.stores import StoredJob
from launcher.stores.published import Published
from pipelines.models import ExportStatus, Manifest, OutputFile
from pipelines.plan import output_layout

PAGE_FILES = 1000


def manifest_page(store, record: StoredJob, owner, page: int, link: Callable[[int], str],
                  requires_access_token: bool, page_files: int = PAGE_FILES) -> Optional[Manifest]:
    """Page `page` (from 1) of a job's manifest, or None while it is not ready yet."""
    complete = record.status is ExportStatus.COMPLETE
    files = _files(store, record, owner, complete)
    frozen = store.frozen_pages(record.job_id)
    if page in frozen:
        first, end, linked = frozen[page]
    else:
        before = frozen.get(page - 1) if page > 1 else (0, 0, True)
        if before is None or not before[2]:  # the page before is not served yet, or was the last
            return None
        first = before[1]
        if len(files) <= first and not complete:
            return None
        end = first + min(len(files) - first, page_files)
        first, end, linked = store.freeze_page(record.job_id, page, first, end, not complete or end < len(files))
    if end > len(files):  # another request froze it meanwhile, having seen files published since
        files = _files(store, record, owner, complete)
    chosen = files[first:end]

    def entries(kind: str) -> list[OutputFile]:
        return [OutputFile(type=f.type, url=f.url, count=f.count) for f in chosen if f.kind == kind]

    request = record.request
    return Manifest(
        transaction_time=record.transaction_time,
        request=record.request_url,
        requires_access_token=requires_access_token,
        output_organized_by=output_layout(request).organized_by,
        output=entries("output"),
        error=entries("error"),
        deleted=entries("deleted"),
        link=[{"relation": "next", "url": link(page + 1)}] if linked else None,
        message=request.ignored_message,
    )


def _files(store, record: StoredJob, owner, complete: bool) -> list[Published]:
    """The job's files in page order: those published while it ran, then (once it is complete) the rest
    of its final manifest."""
    files = store.published(record.job_id)
    if complete:
        final = store.manifest(record.tenant, record.job_id, owner)
        listed = {f.url for f in files}
        for kind, entries in (("output", final.output), ("error", final.error), ("deleted", final.deleted)):
            files += [Published(kind, e.type, e.url, e.count or 0) for e in entries if e.url not in listed]
    return files


def requires_token(store, record: StoredJob) -> bool:
    """`requiresAccessToken` as the job's final manifest has it (from its settings)."""
    from pipelines.settings import ExportSettings

    settings = ExportSettings(**store.run_spec(record.job_id)["settings"])
    return settings.urls.requires_access_token(settings.output)


def listed_file(store, record: StoredJob, url: str) -> Optional[Published]:
    """The published file of a running job at `url`, if any (it may be downloaded before the end)."""
    return next((f for f in store.published(record.job_id) if f.url == url), None)
