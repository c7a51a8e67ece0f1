"""How an export's (and a pull's) progress is shown: a live tqdm bar on a terminal, plain lines otherwise.

The launcher hands the display a snapshot of the job every couple of seconds
(`RunControl.on_progress`). The percentage is the source bytes read over the
bytes planned when the job started (`StoredJob.fraction`); it never goes
back, and it is 100% only once the job is complete. The rate is resources
written per second since the command started, and the ETA extrapolates the
rate at which the source is read. Off a terminal (CI, cron, a pipe) it prints
one plain line per interval (`PROGRESS_EVERY_ENV`, 10 s by default; none for an
export shorter than that), without control characters. Every export ends with
one informative line: `complete:` with its counts and time, or what stopped it.
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, Optional, TextIO

from launcher.jobs.process import JobCancelled
from launcher.stores import StoredJob
from pipelines.models import ExportStatus

if TYPE_CHECKING:
    from tqdm import tqdm

PROGRESS_EVERY_ENV = "BULK_EXPORT_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 10.0
_SHOWN_WHILE_RUNNING = 0.99  # the most a running job shows: 100% means complete


class _Tally:
    """What the snapshots so far say: the shown fraction, counts per type, elapsed time, rate and ETA."""

    def __init__(self, started: float):
        self.started = started
        self.now = started
        self.fraction: Optional[float] = None  # None: the planned bytes are unknown (a PostgreSQL source)
        self.total_bytes = 0
        self.counts: dict[str, int] = {}
        self._first_read: Optional[tuple[float, int]] = None  # (when, bytes) the rate of reading is measured from
        self._read = 0

    def see(self, job: StoredJob, now: float) -> None:
        self.now = now
        self.total_bytes = job.total_bytes
        self.counts = {p.type: p.exported for p in job.progress}
        if job.status is ExportStatus.COMPLETE:
            self.fraction = 1.0
        elif job.fraction is not None:
            shown = min(job.fraction, _SHOWN_WHILE_RUNNING)
            self.fraction = max(shown, self.fraction or 0.0)  # a report never takes it back
        self._read = max(self._read, job.read_bytes)
        if self._first_read is None or self._read == self._first_read[1]:
            self._first_read = (now, self._read)  # the last snapshot before reading went on: the ETA's start

    @property
    def written(self) -> int:
        return sum(self.counts.values())

    @property
    def elapsed(self) -> float:
        return self.now - self.started

    @property
    def rate(self) -> Optional[float]:
        """Resources written per second."""
        return self.written / self.elapsed if self.elapsed > 0 else None

    @property
    def eta(self) -> Optional[float]:
        """Seconds left at the rate the source has been read since reading got going."""
        if self._first_read is None or not self.total_bytes or self.fraction is None or self.fraction >= 1:
            return None
        since, read_then = self._first_read
        if self.now <= since or self._read <= read_then:
            return None
        per_s = (self._read - read_then) / (self.now - since)
        return max(self.total_bytes - self._read, 0) / per_s

    def percent(self) -> str:
        return f"{int((self.fraction or 0.0) * 100)}%"

    def reading(self, percent: bool = True) -> str:
        """E.g. `41% of 250 MB read, ` (without the percentage beside a bar); empty when the planned bytes
        are unknown."""
        if self.fraction is None:
            return ""
        return (f"{self.percent()} " if percent else "") + f"of {_size(self.total_bytes)} read, "

    def clock(self) -> str:
        """E.g. `12 s elapsed, ETA 17 s`."""
        eta = self.eta
        return f"{_duration(self.elapsed)} elapsed" + ("" if eta is None else f", ETA {_duration(eta)}")

    def speed(self) -> str:
        """E.g. `8,937 resources/s`."""
        return f"{self.rate or 0:,.0f} resources/s"

    def types(self) -> str:
        """The counts per type, largest first."""
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"{name} {n:,}" for name, n in ranked) or "no resources yet"


class ProgressDisplay:
    """Shows a running export on `stream` (stderr): a bar redrawn in place on a terminal, plain lines
    otherwise, and one final line. Use it as a context manager and call `finish` with the complete job;
    leaving it by an exception tells what stopped the export, never 100%. `quiet` (`-q`) shows nothing."""

    def __init__(self, stream: Optional[TextIO] = None, every_s: Optional[float] = None, quiet: bool = False):
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._tty = self._stream.isatty()
        self._every_s = _every_s() if every_s is None else every_s
        self._tally = _Tally(time.monotonic())
        self._printed_at = self._tally.started  # the first plain line comes one interval in
        self._bar: Optional[tqdm] = None
        self._types: Optional[tqdm] = None

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        if error is None or not self._tty:  # off a terminal the error line that follows is the last word
            self._close_bars()
            return
        if isinstance(error, JobCancelled):
            what = "cancelled"
        elif isinstance(error, KeyboardInterrupt):
            what = "interrupted"
        else:
            what = "failed"
        self._end(self._stopped_line(what))

    def __call__(self, job: StoredJob) -> None:
        """Takes one snapshot of the running job."""
        self._tally.see(job, time.monotonic())
        if self._quiet:
            return
        if self._tty:
            self._draw()
        elif self._tally.now - self._printed_at >= self._every_s:
            tally = self._tally
            self._print(f"  {job.status.value}: {tally.reading()}{tally.clock()}, {tally.speed()},"
                        f" {tally.written:,} resources written")
            self._printed_at = self._tally.now

    def finish(self, job: StoredJob, files: Optional[int] = None) -> None:
        """Shows the complete job at 100% and the final line: counts, files and time."""
        self._tally.see(job, time.monotonic())
        tally = self._tally
        if self._bar is not None:
            self._draw()
        made = f"{tally.written:,} resource{'' if tally.written == 1 else 's'}"
        if files is not None:
            made += f" in {files:,} file{'' if files == 1 else 's'}"
        types = "" if self._types is not None else f" ({tally.types()})" if tally.counts else ""
        self._end(f"  {job.status.value}: {made}{types}, {_duration(tally.elapsed)}, {tally.speed()}")

    def _stopped_line(self, what: str) -> str:
        tally = self._tally
        share = f" at {tally.percent()} of the source read" if tally.fraction is not None else ""
        return (f"  {what}{share} after {_duration(time.monotonic() - tally.started)},"
                f" {tally.written:,} resources written")

    def _draw(self) -> None:
        """Two lines: the bar with the bytes read and the time; the resources, their rate and each type's count."""
        from tqdm import tqdm  # only a terminal draws a bar

        tally = self._tally
        known = tally.fraction is not None
        reading = f"{tally.reading(percent=False)}{tally.clock()}"
        written = f"{tally.written:,} resources, {tally.speed()}: {tally.types()}"
        if self._bar is None:
            common = dict(file=self._stream, leave=True, **_width(self._stream))
            self._bar = tqdm(total=100 if known else None, desc=reading, position=0,
                             bar_format="  {percentage:3.0f}%|{bar:24}| {desc}" if known else "  {desc}", **common)
            self._types = tqdm(desc=written, position=1, bar_format="  {desc}", **common)
        if known:
            self._bar.n = int(tally.fraction * 100)  # tqdm's percentage is n / total: the shown one, no more
        self._bar.set_description_str(reading)
        self._types.set_description_str(written)

    def _close_bars(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._types is not None:
            self._types.close()
            self._types = None

    def _end(self, line: str) -> None:
        self._close_bars()
        self._print(line)

    def _print(self, line: str) -> None:
        if not self._quiet:
            print(line, file=self._stream, flush=True)


class PullDisplay:
    """A pull's progress on `stream` (stderr): on a terminal one tqdm line of the pages and resources applied
    so far, with what the consumer says printed above it; otherwise plain lines, one per page that changed
    the dataset. Use it as a context manager. `quiet` (`-q`) shows no page progress, only what the consumer says."""

    def __init__(self, stream: Optional[TextIO] = None, quiet: bool = False):
        self._stream = stream or sys.stderr
        self._quiet = quiet
        self._tty = self._stream.isatty()
        self._bar: Optional[tqdm] = None
        self.pages = self.added = self.deleted = 0

    def __enter__(self) -> PullDisplay:
        return self

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def say(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            self._print(text)

    def applied(self, url: str, added: int, deleted: int, transaction_time: str) -> None:
        """One page applied: `added` resources in, `deleted` deleted."""
        from launcher.publish.consumer import page_line

        self.pages, self.added, self.deleted = self.pages + 1, self.added + added, self.deleted + deleted
        if self._quiet:
            return
        if not self._tty:
            if added or deleted:
                self._print(page_line(url, added, deleted, transaction_time))
            return
        from tqdm import tqdm

        text = (f"{self.pages:,} page{'' if self.pages == 1 else 's'} applied: {self.added:,} resources in,"
                f" {self.deleted:,} deleted, as of {transaction_time}")
        if self._bar is None:
            self._bar = tqdm(desc=text, bar_format="  {desc} [{elapsed}]", file=self._stream, leave=True,
                             **_width(self._stream))
        self._bar.set_description_str(text)

    def _print(self, line: str) -> None:
        print(line, file=self._stream, flush=True)


def _width(stream: TextIO) -> dict:
    """tqdm's size: the terminal's, followed as it changes; 80 by 24 if it reports none (a bare pty)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError):
        size = os.terminal_size((0, 0))
    return {"dynamic_ncols": True} if size.columns and size.lines else {"ncols": 80, "nrows": 24}


def _every_s() -> float:
    """The interval of plain lines: `PROGRESS_EVERY_ENV` seconds, else `DEFAULT_EVERY_S`."""
    try:
        return max(float(os.environ.get(PROGRESS_EVERY_ENV, DEFAULT_EVERY_S)), 0.0)
    except ValueError:
        return DEFAULT_EVERY_S


def _duration(seconds: float) -> str:
    """`1.4 s`, `12 s`, `3 min 05 s`, `1 h 02 min`."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _size(nbytes: int) -> str:
    """`250 MB`, `1.4 GB`: decimal units, as `ls -h --si`."""
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" or nbytes >= 10 else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"
