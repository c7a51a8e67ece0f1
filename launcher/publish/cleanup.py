"""The grace-period sweep: files and pages no live page lists are removed once unlisted for the grace.

Live is what the chain from the current root reaches: its pages and every file they
list. Anything else under `manifests/` and `files/` (an old chain's pages and files,
a superseded root's extra pages, what a run that died left unlinked) is marked with
the time it was first seen unlisted (`.publish/unlisted.json`) and removed by a
sweep at least the grace period later (with the gzip copy `serve` may keep beside a file). So a file is never removed while a live page
lists it, nor sooner than the grace after it stopped being listed. Leftover work
folders of runs that died are removed. Runs under the publication's lock.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Optional

from launcher.publish import pages
from launcher.publish.folder import FILES, MANIFESTS, MARKS_NAME, ROOT_NAME, WORK_NAME, PublicationFolder
from transforms.storage.files import remove_tree
from transforms.storage.layout import gzip_cache_path


def live_files(folder: PublicationFolder) -> set[str]:
    """The folder-relative paths of the live pages and of every file they list."""
    live = {ROOT_NAME}
    for rel, body in folder.chain():
        live.add(rel)
        live.update(folder.rel_of(url) for url in pages.listed_urls(body))
    return live


def sweep(folder: PublicationFolder, grace_s: float, now: Optional[float] = None) -> list[str]:
    """Removes what has been unlisted for `grace_s` or more; marks what is newly unlisted. Returns the
    removed paths. The caller holds the publication's lock."""
    now = time.time() if now is None else now
    live = live_files(folder)
    marks = (folder.load_private(MARKS_NAME) or {}).get("firstUnlisted", {})
    kept, removed = {}, []
    for rel in sorted(_published(folder) - live):
        first = marks.get(rel, now)
        if now - first >= grace_s:
            os.remove(folder.local(rel))
            with contextlib.suppress(FileNotFoundError):  # the server's gzip copy of it, if it made one
                os.remove(gzip_cache_path(folder.local(rel)))
            removed.append(rel)
        else:
            kept[rel] = first
    folder.save_private(MARKS_NAME, {"firstUnlisted": kept})
    _remove_empty_folders(folder.local(FILES))
    remove_tree(folder.private(WORK_NAME))
    return removed


def _published(folder: PublicationFolder) -> set[str]:
    found = set()
    for top in (MANIFESTS, FILES):
        for dirpath, _, names in os.walk(folder.local(top)):
            for name in names:
                if not name.startswith("."):  # a temporary page being written
                    found.add(os.path.relpath(os.path.join(dirpath, name), folder.path))
    return found


def _remove_empty_folders(top: str) -> None:
    for dirpath, _, _ in os.walk(top, topdown=False):
        if dirpath != top and not os.listdir(dirpath):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
