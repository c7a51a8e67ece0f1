"""How a job's progress is shown: a live bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
from typing import Optional, TextIO

from launcher.stores import StoredJob

_BAR_WIDTH = 30


def summary(job: StoredJob) -> str:
    """One line: status, overall fraction and resources written so far."""
    total = sum(p.exported for p in job.progress)
    share = "" if job.fraction is None else f" {job.fraction:.0%},"
    return f"{job.status.value}:{share} {total:,} resources written"


class ProgressDisplay:
    """Shows successive job snapshots on `stream`: redrawn in place on a TTY, one line each otherwise."""

    def __init__(self, stream: Optional[TextIO] = None):
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._drawn = False

    def __call__(self, job: StoredJob) -> None:
        if not self._tty:
            print(f"  {summary(job)}", file=self._stream, flush=True)
            return
        filled = round((job.fraction or 0.0) * _BAR_WIDTH)
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        self._stream.write(f"\r  [{bar}] {summary(job)}\x1b[K")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Ends the redrawn line, so later output starts on its own line."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
