"""Job lifecycle on the launcher side: record a job, start its pipeline, watch it locally.

The walk is: the kickoff has been validated -> runner options are checked ->
the job is recorded `accepted` with `transactionTime` frozen -> `in-progress`
-> the pipeline runs and its last step marks the job `complete`. Any failure
marks the job `error` with a clear message and removes its partial output, so
a failed job never leaves a manifest behind.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time
import uuid
from typing import Callable, Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.export import ExportJob, run
from pipelines.models import ExportRequest, ExportStatus, JobRecord
from pipelines.options import ExportSettings, prepare_runner
from transforms.fhir.instant import now_instant
from transforms.sources import match_source
from launcher.store import JobStore, StoreJobSink

_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_WATCH_EVERY_S = 2.0


class ExportFailed(RuntimeError):
    """The job was recorded and then failed; the store holds the same message."""

    def __init__(self, job_id: str, message: str):
        super().__init__(message)
        self.job_id = job_id


def check_tenant(tenant: str) -> str:
    """Tenants name folders, so they are restricted to a safe path segment."""
    if not _TENANT.match(tenant):
        raise ValueError(f"--tenant {tenant!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return tenant


def start_export(
    store: JobStore,
    state_dir: str,
    request: ExportRequest,
    settings: ExportSettings,
    tenant: str = "default",
    owner: Optional[str] = None,
    beam_args: tuple[str, ...] = (),
    on_progress: Optional[Callable[[JobRecord], None]] = None,
) -> JobRecord:
    """Records a job for `request`, runs it to the end on this machine, and returns it."""
    prepare_runner(PipelineOptions(list(beam_args)))  # refuses unsafe options before a job exists
    check_tenant(tenant)
    transaction_time = now_instant()
    # Local paths are made absolute: the manifest's URLs and error locations must
    # mean the same thing wherever they are read.
    for field in ("source", "output"):
        path = getattr(settings, field)
        if FileSystems.get_scheme(path) is None:
            settings = dataclasses.replace(settings, **{field: os.path.abspath(path)})
    job = ExportJob(str(uuid.uuid4()), transaction_time, settings, tenant)
    store.create(
        JobRecord(
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
    )
    try:
        store.mark_in_progress(job.job_id)
        match_source(settings.source)
        _check_writable(job.job_dir)
        argv = [*beam_args, *job.to_argv(), f"--request={request.model_dump_json()}"]
        _run_and_watch(argv, StoreJobSink(state_dir, job.job_id), store, tenant, job.job_id, on_progress)
        record = store.get(tenant, job.job_id)
        if record.status is not ExportStatus.COMPLETE:
            raise RuntimeError(f"pipeline finished but the job is {record.status.value}")
        return record
    except BaseException as exc:
        # Ctrl-C (KeyboardInterrupt) or SystemExit must not leave the job `in-progress` forever.
        interrupted = not isinstance(exc, Exception)
        message = f"interrupted ({type(exc).__name__})" if interrupted else describe(exc)
        store.fail(job.job_id, message)
        _remove_output(job.job_dir)
        if interrupted:
            raise
        raise ExportFailed(job.job_id, message) from exc


def describe(exc: BaseException) -> str:
    """A one-line message for a failure, without Beam's wrapping and stack dumps."""
    text = str(exc).strip() or type(exc).__name__
    # Beam re-raises worker errors with the original message embedded.
    for line in text.splitlines():
        match = re.search(r"(?:SourceError|OSError|PermissionError|FileNotFoundError): (.+)", line)
        if match:
            return re.sub(r" \[while running .*\]$", "", match.group(1))
    first = text.splitlines()[0]
    return re.sub(r" \[while running .*\]$", "", first)


def _check_writable(job_dir: str) -> None:
    if FileSystems.get_scheme(job_dir) is not None:
        return
    try:
        os.makedirs(job_dir, exist_ok=False)
        probe = os.path.join(job_dir, ".write-probe")
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise OSError(f"output folder {job_dir} is not writable: {exc.strerror or exc}") from exc


def _remove_output(job_dir: str) -> None:
    try:
        if FileSystems.exists(job_dir):
            FileSystems.delete([job_dir])
    except Exception:  # the job already failed; keep its first error
        pass


def _run_and_watch(argv, sink, store, tenant, job_id, on_progress) -> None:
    """Runs the pipeline in a thread while reporting the store's progress every few seconds."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            run(argv, sink=sink).wait_until_finish()
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    worker = threading.Thread(target=target, name=f"export-{job_id}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(_WATCH_EVERY_S)
        if worker.is_alive() and on_progress is not None:
            on_progress(store.get(tenant, job_id))
    if failure:
        raise failure[0]
