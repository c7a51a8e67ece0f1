"""Job lifecycle on the launcher side: record a job, run its pipeline, watch it locally.

The walk is: the kickoff has been validated -> runner options are checked ->
the job is recorded `accepted` with `transactionTime` frozen (refused if the
tenant already has `max_active` jobs) -> `in-progress` -> the pipeline runs in
a child process while this launcher renews the job's lease -> its last step
claims `complete`. Any failure marks the job `error` with a clear message and
removes its partial output, so a failed job never leaves a manifest behind. A
cancel stops the child and removes the output. `resume_export` runs a job
again whose launcher died, from an empty folder, as its next attempt.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from typing import NamedTuple, Optional

from apache_beam.options.pipeline_options import PipelineOptions

from launcher.core.audit import SERIOUS_FAILURE
from launcher.core.names import (
    check_job_id,
    check_schedule,
    check_tenant,
    job_output_dir,
    source_bytes,
    tenant_settings,
)
from launcher.jobs.lifecycle import recover_abandoned
from launcher.jobs.process import ExportFailed, JobCancelled, LeaseLost, RunControl, describe, new_lease, run_and_watch
from launcher.jobs.schedules import scheduled_request
from launcher.jobs.source_snapshot import SourceSnapshot, open_snapshot, release
from launcher.jobs.store_sink import JobStore, StoreJobSink
from launcher.kickoff.level_types import check_level
from launcher.kickoff.patients import resolve_patients
from launcher.stores import InvalidJobState, Lease, StoredJob
from pipelines.export import ExportJob
from pipelines.models import ExportRequest, ExportStatus, JobRecord
from pipelines.options import ExportSettings, prepare_runner
from transforms.fhir.group import Membership
from transforms.fhir.instant import now_instant
from transforms.storage.files import is_local, remove_tree
from transforms.storage.patients_file import write_patients
from transforms.storage.pg_source import is_postgres
from transforms.storage.source_files import match_source


def start_export(
    store: JobStore,
    control: RunControl,
    request: ExportRequest,
    settings: ExportSettings,
    tenant: str = "default",
    owner: Optional[str] = None,
    beam_args: tuple[str, ...] = (),
    schedule: Optional[str] = None,
) -> StoredJob:
    """Records a job for `request`, runs it to the end on this machine, and returns it.

    With a `schedule`, `_since` is that schedule's last completed `transactionTime`.
    """
    recorded = record_export(store, control, request, settings, tenant, owner, beam_args, schedule)
    return run_recorded(store, control, recorded)


class RecordedJob(NamedTuple):
    """A job recorded `accepted` under this launcher's lease, ready to run."""

    job: ExportJob
    request: ExportRequest
    patients: Optional[Membership]
    lease: Lease
    beam_args: tuple[str, ...]
    snapshot: Optional[SourceSnapshot] = None  # a PostgreSQL source's, held until the run ends


def record_export(
    store: JobStore,
    control: RunControl,
    request: ExportRequest,
    settings: ExportSettings,
    tenant: str = "default",
    owner: Optional[str] = None,
    beam_args: tuple[str, ...] = (),
    schedule: Optional[str] = None,
) -> RecordedJob:
    """Validates and records a job (refused at the tenant's cap), audits its kickoff; runs nothing."""
    prepare_runner(PipelineOptions(list(beam_args)))  # refuses unsafe options before a job exists
    job, request, patients, record, snapshot = prepare_job(store, request, settings, tenant, owner, schedule)
    try:
        recover_abandoned(store, control.audit)  # a dead launcher's job must not hold a place under the cap
        lease = new_lease(control.lease_s)
        store.create(
            record,
            run_spec={"settings": dataclasses.asdict(job.settings), "beam_args": list(beam_args), "schedule": schedule},
            lease=lease,
            max_active=control.max_active,
        )
    except BaseException:
        release(snapshot)
        raise
    control.audit.record("kickoff", store.get(tenant, job.job_id))
    return RecordedJob(job, request, patients, lease, tuple(beam_args), snapshot)


def run_recorded(store: JobStore, control: RunControl, recorded: RecordedJob) -> StoredJob:
    """Runs a recorded job's first attempt to its end on this machine; returns it complete."""
    job, request, patients, lease, beam_args, snapshot = recorded
    try:
        return _run_attempt(store, control, job, request, beam_args, lease, 1, lambda: patients)
    finally:
        release(snapshot)


def prepare_job(
    store: JobStore,
    request: ExportRequest,
    settings: ExportSettings,
    tenant: str,
    owner: Optional[str] = None,
    schedule: Optional[str] = None,
    job_id: Optional[str] = None,
    transaction_time: Optional[str] = None,
    hold_snapshot: bool = True,
) -> tuple[ExportJob, ExportRequest, Optional[Membership], JobRecord, Optional[SourceSnapshot]]:
    """Everything a new job needs before it is recorded, for every entry point.

    Checks the names, applies the schedule's `_since`, refuses types the level
    cannot export given `--include-referenced` (`kickoff.check_level`), fills in
    the tenant's paths and resolves the covered patients, so a missing Group or
    unknown patient is refused before any job exists. For a PostgreSQL source it
    opens the source's snapshot, which gives `transactionTime` (`hold_snapshot=False`:
    only `transactionTime`); the caller closes it when the run ends. Returns the job,
    the (scheduled) request, its patients, the record to create and the snapshot.
    """
    check_tenant(tenant)
    job_id = check_job_id(job_id or str(uuid.uuid4()))
    if schedule:
        request = scheduled_request(request, store.last_transaction_time(tenant, check_schedule(schedule)))
    check_level(request, settings.referenced_types)
    settings = tenant_settings(settings, tenant)
    snapshot = open_snapshot(settings.source, hold_snapshot)
    try:
        transaction_time = transaction_time or (snapshot.transaction_time if snapshot else now_instant())
        patients = resolve_patients(request, settings.source, settings.source_format, transaction_time)
    except BaseException:
        release(snapshot)
        raise
    job = ExportJob(job_id, transaction_time, settings, tenant, source_snapshot=snapshot.snapshot if snapshot else "")
    record = JobRecord(
        job_id=job.job_id,
        tenant=tenant,
        owner=owner,
        level=request.level,
        request=request,
        request_url=request.request_url,
        transaction_time=transaction_time,
        status=ExportStatus.ACCEPTED,
        created_at=transaction_time,
        output_dir=job.job_dir,
    )
    return job, request, patients, record, snapshot


def resume_export(store: JobStore, control: RunControl, tenant: str, job_id: str,
                  owner: Optional[str] = None) -> StoredJob:
    """Runs again, as its next attempt, a job whose launcher stopped; returns it complete.

    The job keeps its request and `transactionTime`; its folder is emptied
    first, and the attempt writes its parts to a temporary folder of its own,
    so parts of two attempts never mix.
    """
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

        return _run_attempt(store, control, job, record.request, tuple(spec["beam_args"]), lease, record.attempt,
                            patients)
    finally:
        release(snapshot)


def _run_attempt(store, control, job, request, beam_args, lease: Lease, attempt: int, patients) -> StoredJob:
    """Runs one attempt of a recorded job; records `error` and cleans up if it does not complete."""
    try:
        if attempt == 1:
            store.mark_in_progress(job.job_id)
        if not is_postgres(job.settings.source):  # a table's size is not the bytes read: no total
            store.set_total_bytes(job.job_id, source_bytes(match_source(job.settings.source)))
        _check_writable(job.job_dir)
        members = patients()
        if members is not None:  # the pipeline reads them instead of resolving them
            job = dataclasses.replace(job, patients_file=write_patients(job.patients_path, members))
        argv = [*beam_args, *job.to_argv(), f"--request={request.model_dump_json()}"]
        sink = StoreJobSink(store.url, job.job_id, attempt)
        run_and_watch(argv, sink, store, job.tenant, job.job_id, lease, control.lease_s, control.on_progress,
                      nice=control.nice)
        record = store.get(job.tenant, job.job_id)
        if record.status is ExportStatus.CANCELLED:
            raise JobCancelled(job.job_id)
        if record.status is not ExportStatus.COMPLETE or record.attempt != attempt:
            raise RuntimeError(f"pipeline finished but the job is {record.status.value} (attempt {record.attempt})")
        control.audit.record("complete", record)
        return record
    except JobCancelled:
        _remove_output(job.job_dir)
        store.release_lease(job.job_id, lease.holder)
        raise
    except LeaseLost:
        raise  # the job's status and folder now belong to whoever took it over: touch neither
    except BaseException as exc:
        # Ctrl-C (KeyboardInterrupt) or SystemExit must not leave the job `in-progress` forever.
        interrupted = not isinstance(exc, Exception)
        message = f"interrupted ({type(exc).__name__})" if interrupted else describe(exc)
        try:
            store.fail(job.job_id, message, attempt=attempt)
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


def _check_writable(job_dir: str) -> None:
    if not is_local(job_dir):
        return
    try:
        os.makedirs(job_dir, exist_ok=False)
        probe = os.path.join(job_dir, ".write-probe")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise OSError(f"output folder {job_dir} is not writable: {exc.strerror or exc}") from exc


def _remove_output(job_dir: str, attempts: int = 4, first_delay_s: float = 0.2) -> None:
    """Removes a failed or cancelled job's output, retrying with a growing pause.

    The job has already failed: a removal that still fails is logged (the job id and
    the exception's type, never a file's contents) and does not replace its first error.
    """
    import logging  # local: only this function of the module logs
    import time

    log = logging.getLogger(__name__)
    job_id = os.path.basename(job_dir.rstrip("/"))
    delay = first_delay_s
    for attempt in range(1, attempts + 1):
        try:
            remove_tree(job_dir)
            if attempt > 1:
                log.warning("job %s: its output was removed at attempt %d of %d", job_id, attempt, attempts)
            return
        except Exception as exc:  # the job already failed; keep its first error
            if attempt == attempts:
                log.warning("job %s: could not remove its output %s (%s), gave up after %d attempts; partial"
                            " output may remain", job_id, job_dir, type(exc).__name__, attempts)
                return
            log.warning("job %s: could not remove its output %s (%s), attempt %d of %d; retrying in %.1f s",
                        job_id, job_dir, type(exc).__name__, attempt, attempts, delay)
            time.sleep(delay)
            delay *= 2.5

