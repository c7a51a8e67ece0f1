"""How many processes the local runner uses when the user did not say: one, or forked workers for a large source.

Beam-free, and the one place this is decided: `launcher.jobs.attempts` asks it
at the start of each attempt (so a resume decides again), with the source's
size, this machine's cores and what a server's worker budget (`WorkerBudget`)
still allows. Explicit `--direct_running_mode` / `--direct_num_workers` flags
and any other runner are left as given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from typing import Callable, Iterator, Optional, Sequence

from pipelines.settings import LOCAL_RUNNER
from transforms.errors import Refused

# A source of at least this many bytes runs on forked workers, a smaller one in one process.
# Measured from the shell on the shared 2-core machine (benchmarks/README.md, "The default uses the machine
# (issue 28)"): `bulk-export export` of realistic data, one process against 2 forked workers in alternating
# pairs, best of 3, three series at load averages 3-9 (too noisy to pin the crossover). Two workers cost
# 0.3-0.8 s more CPU at every size and lost at 4 and 20 MB in every series (load 3: 4.4 / 6.2 s at 4 MB,
# 6.6 / 8.0 s at 20 MB); at 40 and 79 MB the winner changed between series; at 118 and 393 MB they won in
# two series of three (load 3: 5.2 / 4.6 s at 118 MB; load 3-4: 8.9 / 6.7 s at 393 MB) and tied in the
# third. One process spends about 12 ms of CPU per MB, so halving it pays for the workers' ~0.5 s from
# about 80-100 MB.
MULTI_PROCESS_MIN_BYTES = 100_000_000
# Overrides MULTI_PROCESS_MIN_BYTES for a machine whose crossover lies elsewhere (README, "Runner options").
MIN_BYTES_ENV = "BULK_EXPORT_MULTI_PROCESS_MIN_BYTES"
DIRECT_FLAGS = ("--direct_running_mode", "--direct_num_workers")
LOCAL_RUNNERS = ("DirectRunner", LOCAL_RUNNER)


@dataclasses.dataclass(frozen=True)
class WorkerChoice:
    """The local runner's processes for one attempt: `workers` (1: one process) and why, or not ours to choose."""

    workers: int  # 0: the user's flags or another runner decide; 1: one process (in_memory); 2+: forked workers
    reason: str

    @property
    def beam_args(self) -> tuple[str, ...]:
        """The Beam options to add to the user's for this choice (none for one process or when not ours)."""
        if self.workers < 2:
            return ()
        return ("--direct_running_mode=multi_processing", f"--direct_num_workers={self.workers}")


def _flag_value(beam_args: Sequence[str], name: str) -> Optional[str]:
    """The last value given to `name` in `beam_args` (`--name=value` or `--name value`), else None."""
    value = None
    for i, arg in enumerate(beam_args):
        if arg == name:
            value = beam_args[i + 1] if i + 1 < len(beam_args) else ""
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


def multi_process_min_bytes() -> int:
    """The source size from which forked workers pay: `$BULK_EXPORT_MULTI_PROCESS_MIN_BYTES`, else measured."""
    value = os.environ.get(MIN_BYTES_ENV, "").strip()
    if not value:
        return MULTI_PROCESS_MIN_BYTES
    if not value.isdigit():
        raise Refused(f"${MIN_BYTES_ENV} must be a number of bytes, not {value!r}")
    return int(value)


def choose_workers(beam_args: Sequence[str], source_bytes: Optional[int], chunks: Optional[int], cores: int,
                   allowance: Optional[int] = None, min_bytes: Optional[int] = None) -> WorkerChoice:
    """The local runner's processes for a source of `source_bytes` (None: unknown, e.g. a PostgreSQL table)
    in about `chunks` work items, on `cores` cores, with at most `allowance` processes (None: `cores`), from
    `min_bytes` of source on (None: `multi_process_min_bytes()`)."""
    runner = _flag_value(beam_args, "--runner")
    if runner is not None and runner not in LOCAL_RUNNERS:
        return WorkerChoice(0, f"--runner={runner}")
    if any(_flag_value(beam_args, flag) is not None for flag in DIRECT_FLAGS):
        return WorkerChoice(0, "the runner options given")
    if source_bytes is None:
        return WorkerChoice(1, "the source's size is not known")
    min_bytes = multi_process_min_bytes() if min_bytes is None else min_bytes
    size = _megabytes(source_bytes)
    if source_bytes < min_bytes:
        return WorkerChoice(1, f"the source ({size}) is smaller than {_megabytes(min_bytes)}")
    limit = cores if allowance is None else min(cores, allowance)
    workers = min(limit, chunks) if chunks is not None else limit
    if workers < 2:
        why = (f"it is {chunks} chunk" if chunks is not None and chunks < 2 else "this machine has one core"
               if cores < 2 else "only 1 worker process is free" if limit == 1 else "no worker process is free")
        return WorkerChoice(1, f"the source ({size}) is large, but {why}")
    return WorkerChoice(workers, f"the source ({size}) is at least {_megabytes(min_bytes)}")


def estimated_chunks(files: Sequence[tuple[str, int]], chunk_bytes: int) -> int:
    """How many work items the read makes of `(path, size)` files, about: a gzip or Bundle file is one, an
    NDJSON file one per `chunk_bytes` (Avro and Parquet files are counted as NDJSON: at most this many)."""
    return sum(1 if path.endswith((".gz", ".json")) else -(-size // chunk_bytes) for path, size in files if size)


def machine_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


class WorkerBudget:
    """Worker processes shared by concurrent exports: each takes what `choose_workers` allows of what is
    still free, and gives it back when its run ends. Thread-safe. An export always gets its one process,
    so with more exports running than `total` the processes held pass it by those single ones."""

    def __init__(self, total: int):
        if total < 1:
            raise ValueError(f"a worker budget must be at least 1, not {total}")
        self.total = total
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        with self._lock:
            return self._held

    @contextlib.contextmanager
    def hold(self, choose: Callable[[int], WorkerChoice]) -> Iterator[tuple[WorkerChoice, int]]:
        """Calls `choose(free processes)` and holds what it chose (none when not ours to choose) until the
        block ends; yields the choice and the processes held by every export once it took its own."""
        with self._lock:
            choice = choose(max(self.total - self._held, 0))
            taken = choice.workers
            self._held += taken
            held = self._held
        try:
            yield choice, held
        finally:
            with self._lock:
                self._held -= taken
