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

import time
from typing import Optional

from launcher.publish import pages
from launcher.publish.folder import MARKS_NAME, ROOT_NAME, PublicationPlace


def live_files(place: PublicationPlace) -> set[str]:
    """The relative paths of the live pages and of every file they list."""
    live = {ROOT_NAME}
    for rel, body in place.chain():
        live.add(rel)
        live.update(place.rel_of(url) for url in pages.listed_urls(body))
    return live


def sweep(place: PublicationPlace, grace_s: float, now: Optional[float] = None) -> list[str]:
    """Removes what has been unlisted for `grace_s` or more; marks what is newly unlisted. Returns the
    removed paths. The caller holds the publication's lock."""
    now = time.time() if now is None else now
    live = live_files(place)
    marks = (place.load_private(MARKS_NAME) or {}).get("firstUnlisted", {})
    kept, removed = {}, []
    for rel in sorted(set(place.published()) - live):
        first = marks.get(rel, now)
        if now - first >= grace_s:
            place.remove(rel)
            removed.append(rel)
        else:
            kept[rel] = first
    place.save_private(MARKS_NAME, {"firstUnlisted": kept})
    place.tidy()
    return removed
