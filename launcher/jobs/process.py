"""Runs one attempt of an export in a child process that the launcher can stop.

The embedded runner cannot be interrupted inside a process, so the pipeline
runs in a child (forked from a forkserver that has Beam imported, so a start
costs milliseconds). The child leads its own process group, which also holds
Beam's worker processes in multi_processing mode: stopping the job kills the
group. The child holds the read end of a "lifeline" pipe whose only writer is
the launcher; when the launcher dies, even by SIGKILL, the pipe closes and the
child kills its group, so no orphan keeps writing parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from typing import Callable, Optional

from launcher.core.audit import AuditLog
from launcher.core.beam_notice import allow_gcs
from launcher.jobs.fork_server import CONTEXT, start_process
from launcher.stores import JobStore, Lease, StoredJob, StoreUnavailable, now_ms
from pipelines.models import ExportStatus
from pipelines.workers import WorkerBudget
from transforms.errors import EngineLost, JobFailed
from transforms.storage.last_step import LOCK_ENV, wait_for_last_step

POLL_S = 0.25
STOP_GRACE_S = 5.0  # how long a stopped run may take to cancel its engine's work before it is killed
LAST_STEP_WAIT_S = 30.0  # how long a run whose launcher died may take to publish a manifest it has claimed
_LOG = logging.getLogger(__name__)
_CTX = CONTEXT


DEFAULT_MAX_ACTIVE = 4
DEFAULT_LEASE_S = 30.0
ProgressCallback = Callable[[StoredJob], None]


class ExportFailed(JobFailed, RuntimeError):
    """The job was recorded and then failed; the store holds the same message."""

    def __init__(self, job_id: str, message: str):
        super().__init__(message)
        self.job_id = job_id

    def cli_message(self, verbose: bool = False) -> str:
        # The job exists (status `error`); name it so `status JOB` can be asked.
        return f"job {self.job_id} failed: {self}" + ("" if verbose else " (-v shows Beam's log)")


@dataclasses.dataclass(frozen=True)
class RunControl:
    """How this launcher runs jobs: the cap, its lease, where it audits and reports."""

    audit: AuditLog
    max_active: Optional[int] = DEFAULT_MAX_ACTIVE  # None: no cap (a Flex Template launcher)
    lease_s: float = DEFAULT_LEASE_S
    on_progress: Optional[ProgressCallback] = None
    # Added to the pipeline processes' niceness: a server runs them at +10, so it keeps answering.
    nice: int = 0
    # The local runner's processes shared by this launcher's concurrent exports (a server's); None: each
    # export may use the machine's cores.
    workers: Optional[WorkerBudget] = None


class JobCancelled(JobFailed, RuntimeError):
    """The job was cancelled while this launcher ran it."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id


class LeaseLost(JobFailed, RuntimeError):
    """Another store client decided this launcher was gone and took the job over."""


def describe(exc: BaseException) -> str:
    """A one-line message for a failure, without Beam's wrapping and stack dumps."""
    text = str(exc).strip() or type(exc).__name__
    # Beam re-raises worker errors with the original message embedded.
    for line in text.splitlines():
        match = re.search(r"(?:SourceError|MembershipRefused|OSError|PermissionError|FileNotFoundError): (.+)", line)
        if match:
            return re.sub(r" \[while running .*\]$", "", match.group(1))
    first = text.splitlines()[0]
    return re.sub(r" \[while running .*\]$", "", first)


def new_lease(seconds: float) -> Lease:
    """A lease for this launcher process, valid for `seconds` from now."""
    holder = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"
    return Lease(holder, now_ms() + int(seconds * 1000))


def warm_fork_server(timeout_s: float = 300.0) -> None:
    """Starts the fork server and waits until it has imported what it preloads, by forking one run that
    does nothing: afterwards a run starts in milliseconds."""
    start_process(os.getpid, (), "warm-up", _CTX).join(timeout_s)


class PipelineProcess:
    """One pipeline run in a child process; `wait` polls it, `stop` ends it and its workers."""

    def __init__(self, argv: list[str], sink: object, nice: int = 0):
        lifeline, self._lifeline = _CTX.Pipe(duplex=False)
        self._results, results = _CTX.Pipe(duplex=False)
        # The lock of the run's last step (`transforms.storage.last_step`), made here so that `stop` removes it
        # whatever ended the run (a run SIGKILLed from outside cannot).
        fd, self._last_step = tempfile.mkstemp(prefix="bulk-export-last-step-")
        os.close(fd)
        self._process = start_process(
            _child_main, (argv, sink, lifeline, results, LogSetup.here(), nice, self._last_step), "export", _CTX)
        lifeline.close()
        results.close()
        self.failure: Optional[str] = None
        self.engine_lost = False  # whether the run failed because its engine was lost (`EngineLost`)

    def wait(self, timeout: float) -> bool:
        """True once the run has ended; then `failure` is None or its one-line message."""
        if not self._results.poll(timeout):
            return False
        try:
            self.failure, self.engine_lost = self._results.recv() or (None, False)
        except EOFError:
            self._process.join(5)
            self.failure = f"the pipeline process died (exit code {self._process.exitcode})"
        self._process.join(30)
        return True

    def stop(self) -> None:
        """Ends the run and every process it started; idempotent. The run is first asked to cancel
        its engine's work (on Dask, its futures), for at most `STOP_GRACE_S`, then killed."""
        if self._process.pid is not None and self._process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._process.pid, signal.SIGTERM)
                self._process.join(STOP_GRACE_S)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.join(30)
        self._lifeline.close()
        self._results.close()
        with contextlib.suppress(OSError):
            os.unlink(self._last_step)


@dataclasses.dataclass(frozen=True)
class LogSetup:
    """How the launcher logs, for the pipeline's process (a fresh one, forked from the fork server) to log alike:
    its handlers' format (text or the server's JSON) and the levels of ours, Beam's and psycopg's pool."""

    formatter: Optional[logging.Formatter]
    levels: tuple[tuple[str, int], ...]

    NAMES = ("launcher", "pipelines", "transforms", "apache_beam", "psycopg.pool")

    @classmethod
    def here(cls) -> "LogSetup":
        formatter = next((h.formatter for h in logging.getLogger().handlers if h.formatter is not None), None)
        return cls(formatter, tuple((name, logging.getLogger(name).getEffectiveLevel()) for name in cls.NAMES))

    def apply(self) -> None:
        levels = dict(self.levels)
        handler = logging.StreamHandler(sys.stderr)
        if self.formatter is not None:
            handler.setFormatter(self.formatter)
        root = logging.getLogger()
        root.handlers[:] = [handler]
        # What reaches the root logger itself is Beam's: the log that the local runner's worker processes
        # relay to it (a failing bundle's traceback), which is shown only when Beam's own log is.
        root.setLevel(levels["apache_beam"])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        # A job store's reconnect attempts: the launcher says once that the store is out of reach.
        logging.getLogger("psycopg.pool").setLevel(max(levels["psycopg.pool"], logging.ERROR))


def _child_main(argv, sink, lifeline, results, log_setup: LogSetup, nice: int, last_step: str) -> None:
    os.setpgid(0, 0)
    allow_gcs()  # the fork server imported Beam without it (`launcher.jobs.fork_preload`)
    if nice:
        os.nice(nice)  # inherited by the run's worker processes
    os.environ[LOCK_ENV] = last_step  # named for the workers forked from here
    threading.Thread(target=_die_with_launcher, args=(lifeline, last_step), daemon=True).start()
    log_setup.apply()
    from pipelines.export import run

    signal.signal(signal.SIGTERM, _cancel_run)
    try:
        _RUN["result"] = run(argv, sink=sink)
        _RUN["result"].wait_until_finish()
    except BaseException as exc:  # reported to the launcher, which records it
        results.send((describe(exc), isinstance(exc, EngineLost)))
        return
    finally:
        with contextlib.suppress(OSError):
            os.unlink(last_step)
    results.send(None)


_RUN: dict = {}  # the pipeline process's running result, once the runner has returned it


def _cancel_run(signum, frame) -> None:
    """SIGTERM from the launcher: cancel what the engine runs (a Dask job's futures; the local runner,
    whose `run` returns only at the end, has nothing to cancel), then end the process group."""
    result = _RUN.get("result")
    if result is not None:
        with contextlib.suppress(Exception):  # the group is killed whatever the engine says
            result.cancel()
    with contextlib.suppress(OSError, KeyError):
        os.unlink(os.environ[LOCK_ENV])  # no step of a cancelled run begins, and no lock file is left
    os.killpg(0, signal.SIGKILL)


def _die_with_launcher(lifeline, last_step: str) -> None:
    try:
        lifeline.recv()  # the launcher never sends: this returns only when it has gone
    except (EOFError, OSError):
        pass
    wait_for_last_step(last_step, LAST_STEP_WAIT_S)  # a claimed completion gets its manifest first
    with contextlib.suppress(OSError):
        os.unlink(last_step)
    os.killpg(0, signal.SIGKILL)


def run_and_watch(
    argv: list[str],
    sink: object,
    store: JobStore,
    tenant: str,
    job_id: str,
    lease: Lease,
    lease_s: float,
    on_progress: Optional[Callable[[StoredJob], None]] = None,
    progress_every_s: float = 2.0,
    nice: int = 0,
) -> None:
    """Runs the pipeline to its end, renewing the job's lease and reporting progress.

    Stops the run at once when the job is cancelled (`JobCancelled`) or the
    lease was taken over (`LeaseLost`); a failed run raises `RuntimeError`, or `EngineLost` when
    its engine was lost.
    """
    process = PipelineProcess(argv, sink, nice)
    try:
        renew_at = time.monotonic()
        report_at = renew_at + progress_every_s
        unreachable_since: Optional[float] = None
        while not process.wait(POLL_S):
            now = time.monotonic()
            try:
                status = store.status(job_id)
                if status is ExportStatus.CANCELLED:
                    raise JobCancelled(job_id)
                if status is ExportStatus.COMPLETE:
                    continue  # the pipeline's last step claimed completion; it is exiting
                if now >= renew_at:
                    renewed = store.renew_lease(job_id, Lease(lease.holder, now_ms() + int(lease_s * 1000)))
                    # A claim that releases the lease (as a submitted run's does) may land in between.
                    if not renewed and store.status(job_id) is not ExportStatus.COMPLETE:
                        raise LeaseLost(f"job {job_id}: this launcher's lease was taken over")
                    renew_at = now + lease_s / 3
                if on_progress is not None and now >= report_at:
                    on_progress(store.get(tenant, job_id))
                    report_at = now + progress_every_s
                unreachable_since = None
            except StoreUnavailable:
                # A store restarting (or a network blip) must not fail a running export; one out of
                # reach for as long as the lease is, is gone (the lease may have lapsed meanwhile).
                if unreachable_since is None:
                    unreachable_since = now
                    _LOG.warning("job %s: the job store cannot be reached; the export goes on meanwhile", job_id)
                elif now - unreachable_since > lease_s:
                    raise
        if process.failure is not None:
            raise (EngineLost if process.engine_lost else RuntimeError)(process.failure)
    finally:
        process.stop()
