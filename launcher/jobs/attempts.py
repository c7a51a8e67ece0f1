"""Running a recorded job on this machine: its attempts (the first, or a resumed one), watched in a child process.

The walk is: the kickoff has been validated -> runner options are checked ->
the job is recorded `accepted` with `transactionTime` frozen (refused if the
tenant already has `max_active` jobs; `launcher.jobs.start.record_job`, the sequence the
Flex Template shares) -> `in-progress` -> the pipeline runs in
a child process while this launcher renews the job's lease -> its last step
claims `complete`. Any failure marks the job `error` with a clear message and
removes its partial output, so a failed job never leaves a manifest behind. A
cancel stops the child and removes the output. `resume_export` runs a job
again whose launcher died or whose engine was lost (`EngineLost`: such a job is
recorded resumable), from an empty folder, as its next attempt.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional, Sequence

from launcher.core.audit import SERIOUS_FAILURE
from launcher.core.names import job_output_dir, source_bytes
from launcher.jobs.process import ExportFailed, JobCancelled, LeaseLost, RunControl, describe, new_lease, run_and_watch
from launcher.jobs.source_snapshot import open_snapshot, release
from launcher.jobs.start import JobStart, RecordedJob, pipeline_inputs, record_job
from launcher.jobs.store_sink import JobStore
from launcher.kickoff.patients import resolve_patients
from launcher.stores import InvalidJobState, JobNotFound, Lease, StoredJob
from pipelines.job import ExportJob
from pipelines.models import ExportStatus
from pipelines.settings import ExportSettings
from pipelines.workers import WorkerChoice, choose_workers, estimated_chunks, machine_cores, multi_process_min_bytes
from transforms.errors import EngineLost
from transforms.storage.files import create_file, is_local, local_folder, remove_tree
from transforms.storage.pg_source import is_postgres
from transforms.storage.source_files import match_source

_LOG = logging.getLogger(__name__)


def start_export(start: JobStart, control: RunControl) -> StoredJob:
    """Records a job for `start`, runs it to the end on this machine, and returns it.

    With a `schedule`, `_since` is that schedule's last completed `transactionTime`.
    """
    return run_recorded(start.store, control, record_export(start, control))


def check_runner_options(beam_args: tuple[str, ...] | list[str]) -> None:
    """Refuses an unknown runner, runner options that lose data or a bad worker threshold, before any job exists
    or is touched.

    No runner options are the defaults, which `pipelines.options` accepts: then the runner is not checked and
    this process does not import Beam (the pipeline's process, forked from the fork server, has it).
    """
    multi_process_min_bytes()
    if not beam_args:
        return
    from pipelines.options import check_runner_args  # imports Beam: only when there is something to ask it

    check_runner_args(beam_args)


def record_export(start: JobStart, control: RunControl) -> RecordedJob:
    """Validates and records a job (refused at the tenant's cap), audits its kickoff; runs nothing."""
    check_runner_options(start.beam_args)
    return record_job(start, control)


def run_recorded(store: JobStore, control: RunControl, recorded: RecordedJob) -> StoredJob:
    """Runs a recorded job's first attempt to its end on this machine; returns it complete."""
    job, request, patients, lease, beam_args, snapshot = recorded
    try:
        return _run_attempt(store, control, job, request, beam_args, lease, 1, lambda: patients)
    finally:
        release(snapshot)


def resume_export(store: JobStore, control: RunControl, tenant: str, job_id: str,
                  owner: Optional[str] = None, beam_args: tuple[str, ...] = ()) -> StoredJob:
    """Runs again, as its next attempt, a job whose launcher stopped or whose engine was lost; returns it
    complete.

    The job keeps its request and `transactionTime`; its folder is emptied
    first, and the attempt writes its parts to a temporary folder of its own,
    so parts of two attempts never mix. `beam_args`, if any, replace the
    recorded runner options for this attempt (e.g. another Dask scheduler).
    """
    if beam_args:
        check_runner_options(beam_args)
    lease = new_lease(control.lease_s)
    record = store.claim_resume(tenant, job_id, owner, lease, control.max_active)
    spec = store.run_spec(job_id)
    settings = ExportSettings(**spec["settings"])
    # A PostgreSQL source is read from a new snapshot, under the job's frozen transactionTime.
    snapshot = open_snapshot(settings.source)
    try:
        job = ExportJob(job_id, record.transaction_time, settings, tenant, record.attempt,
                        snapshot.snapshot if snapshot else "")
        remove_tree(job_output_dir(job.job_dir, tenant, job_id))

        def patients():
            return resolve_patients(record.request, settings.source, settings.source_format, record.transaction_time)

        return _run_attempt(store, control, job, record.request, beam_args or tuple(spec["beam_args"]), lease,
                            record.attempt, patients)
    finally:
        release(snapshot)


def _run_attempt(store, control, job, request, beam_args, lease: Lease, attempt: int, patients) -> StoredJob:
    """Runs one attempt of a recorded job; records `error` and cleans up if it does not complete."""
    try:
        if attempt == 1:
            store.mark_in_progress(job.job_id)
        # A table's size is not the bytes read: no total, and no size to choose its processes by.
        files = None if is_postgres(job.settings.source) else match_source(job.settings.source)
        size = None if files is None else source_bytes(files)
        if size is not None:
            store.set_total_bytes(job.job_id, size)
        _check_writable(job.job_dir, job.settings.output)
        with _local_workers(control, job, beam_args, size, files) as run_args:
            argv, sink = pipeline_inputs(store, job, request, patients(), run_args, attempt)
            run_and_watch(argv, sink, store, job.tenant, job.job_id, lease, control.lease_s, control.on_progress,
                          nice=control.nice)
        try:
            record = store.get(job.tenant, job.job_id)
            if record.status is ExportStatus.CANCELLED:
                raise JobCancelled(job.job_id)
            if record.status is not ExportStatus.COMPLETE or record.attempt != attempt:
                raise RuntimeError(f"pipeline finished but the job is {record.status.value} (attempt {record.attempt})")
            control.audit.record("complete", record)
        finally:  # the completion claim kept this lease, so that a delete waits for the record above
            store.release_lease(job.job_id, lease.holder)
        return record
    except JobCancelled:
        _remove_output(job.job_dir)
        store.release_lease(job.job_id, lease.holder)
        raise
    except LeaseLost:
        raise  # the job's status and folder now belong to whoever took it over: touch neither
    except JobNotFound as exc:  # deleted while it ran (a DELETE that raced with its end): as a cancel
        _remove_output(job.job_dir)
        raise JobCancelled(job.job_id) from exc
    except BaseException as exc:
        # Ctrl-C (KeyboardInterrupt) or SystemExit must not leave the job `in-progress` forever.
        interrupted = not isinstance(exc, Exception)
        message = f"interrupted ({type(exc).__name__})" if interrupted else describe(exc)
        resumable = isinstance(exc, EngineLost)  # the job itself did nothing wrong: it may run again
        if resumable:
            message += f"; `bulk-export resume {job.job_id}` runs it again"
        try:
            store.fail(job.job_id, message, resumable=resumable, attempt=attempt)
        except InvalidJobState:
            current = store.get(job.tenant, job.job_id)
            if current.attempt != attempt or current.status is ExportStatus.ERROR:
                # Reaped (its output removed) and maybe resumed by another launcher meanwhile.
                raise LeaseLost(f"job {job.job_id} was taken over while this launcher ran attempt {attempt}"
                                f" ({current.status.value}, attempt {current.attempt}); it failed: {message}") from exc
            if current.status is ExportStatus.COMPLETE:  # keep the cause: the job itself finished
                raise RuntimeError(f"job {job.job_id} is complete, but its run then failed: {message}") from exc
            if current.status is not ExportStatus.CANCELLED:
                raise
            _remove_output(job.job_dir)  # a cancel won the race with this failure
            store.release_lease(job.job_id, lease.holder)
            raise JobCancelled(job.job_id) from exc
        _remove_output(job.job_dir)
        control.audit.record("error", store.get(job.tenant, job.job_id), SERIOUS_FAILURE, message)
        if interrupted:
            raise
        raise ExportFailed(job.job_id, message) from exc


@contextlib.contextmanager
def _local_workers(control: RunControl, job: ExportJob, beam_args: Sequence[str], size: Optional[int],
                   files: Optional[list[tuple[str, int]]]) -> Iterator[tuple[str, ...]]:
    """This attempt's runner options: the user's, plus the local runner's processes `choose_workers` picks
    (within the server's worker budget, held until the block ends). The recorded options stay the user's."""
    chunks = None if files is None else estimated_chunks(files, job.settings.chunk_bytes)
    cores = machine_cores()

    def choose(allowance: Optional[int]) -> WorkerChoice:
        return choose_workers(beam_args, size, chunks, cores, allowance)

    budget = control.workers
    with budget.hold(choose) if budget else contextlib.nullcontext((choose(None), 0)) as (choice, held):
        if not choice.workers:
            _LOG.info("job %s: the runner's processes are as its options say (%s)", job.job_id, choice.reason)
        else:
            processes = "one process" if choice.workers == 1 else f"{choice.workers} forked worker processes"
            shared = f"; {held} of the server's {budget.total} worker processes held" if budget else ""
            _LOG.info("job %s: %s, because %s%s", job.job_id, processes, choice.reason, shared)
        yield (*beam_args, *choice.beam_args)


def _check_writable(job_dir: str, output_root: str) -> None:
    """Creates the job's new folder and writes a probe in it, never through a link below `output_root`."""
    if not is_local(job_dir):
        return
    try:
        folder, name = os.path.split(job_dir.rstrip("/"))
        parent = local_folder(folder, output_root, create=True)
        try:
            os.mkdir(name, dir_fd=parent)
        finally:
            os.close(parent)
        probe = os.path.join(job_dir, ".write-probe")
        with create_file(probe, root=output_root):
            pass
        os.remove(probe)
    except OSError as exc:
        raise OSError(f"output folder {job_dir} is not writable: {exc.strerror or exc}") from exc


def _remove_output(job_dir: str, attempts: int = 4, first_delay_s: float = 0.2) -> None:
    """Removes a failed or cancelled job's output, retrying with a growing pause.

    The job has already failed: a removal that still fails is logged (the job id and
    the exception's type, never a file's contents) and does not replace its first error.
    """
    import time

    job_id = os.path.basename(job_dir.rstrip("/"))
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            remove_tree(job_dir)
            if attempt > 1:
                _LOG.warning("job %s: its output was removed at attempt %d of %d", job_id, attempt, attempts)
            return
        except Exception as exc:  # the job already failed; keep its first error
            if attempt == attempts:
                _LOG.warning("job %s: could not remove its output %s (%s), gave up after %d attempts; partial"
                             " output may remain", job_id, job_dir, type(exc).__name__, attempts)
                return
            _LOG.warning("job %s: could not remove its output %s (%s), attempt %d of %d; retrying in %.1f s",
                         job_id, job_dir, type(exc).__name__, attempt, attempts, delay)
            time.sleep(delay)
            delay *= 2.5

