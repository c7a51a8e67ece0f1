"""Starting a job, the same for the CLI, `serve` and the Flex Template.

`record_job` is the one sequence from a validated kickoff to a recorded job:
prepare it (`prepare_job`) -> recover abandoned jobs -> take a lease -> create
its record (refused at the tenant's cap) -> audit the kickoff. `pipeline_inputs`
is what every attempt's pipeline is given: the patients file, its argv and its
job sink. What each entry point then does with the pipeline (a watched child
process, or `pipelines.export.run` in process) stays with that entry point.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import NamedTuple, Optional

from launcher.core.names import check_job_id, check_schedule, check_tenant, tenant_settings
from launcher.jobs.lifecycle import recover_abandoned
from launcher.jobs.process import RunControl, new_lease
from launcher.jobs.schedules import scheduled_request
from launcher.jobs.source_snapshot import SourceSnapshot, open_snapshot, release
from launcher.jobs.store_sink import JobStore, StoreJobSink
from launcher.kickoff.level_types import check_level
from launcher.kickoff.patients import resolve_patients
from launcher.stores import Lease
from pipelines.job import ExportJob
from pipelines.models import ExportRequest, ExportStatus, JobRecord
from pipelines.settings import ExportSettings
from transforms.fhir.group import Membership
from transforms.fhir.instant import now_instant
from transforms.storage.patients_file import write_patients


@dataclasses.dataclass(frozen=True)
class JobStart:
    """What starting one job takes, from any entry point.

    `beam_args` are runner options: recorded for a resume and given to each
    attempt's pipeline. `job_id` and `transaction_time` are made when not given
    (a caller that chose them passes them). `hold_snapshot=False`: a PostgreSQL
    source's snapshot only gives `transactionTime` and is not held for the run.
    """

    store: JobStore
    request: ExportRequest
    settings: ExportSettings
    tenant: str = "default"
    owner: Optional[str] = None
    beam_args: tuple[str, ...] = ()
    schedule: Optional[str] = None
    job_id: Optional[str] = None
    transaction_time: Optional[str] = None
    hold_snapshot: bool = True


class RecordedJob(NamedTuple):
    """A job recorded under this launcher's lease, ready to run."""

    job: ExportJob
    request: ExportRequest
    patients: Optional[Membership]
    lease: Lease
    beam_args: tuple[str, ...]
    snapshot: Optional[SourceSnapshot] = None  # a PostgreSQL source's, held until the run ends


def record_job(start: JobStart, control: RunControl, in_progress: bool = False) -> RecordedJob:
    """Prepares and records a job (refused at `control.max_active`), audits its kickoff; runs nothing.

    `in_progress`: the job is marked `in-progress` before its kickoff is audited (a
    submitted job, which no launcher marks later); otherwise it stays `accepted`.
    """
    job, request, patients, record, snapshot = prepare_job(start)
    store = start.store
    try:
        recover_abandoned(store, control.audit)  # a dead launcher's job must not hold a place under the cap
        lease = new_lease(control.lease_s)
        store.create(
            record,
            run_spec={"settings": dataclasses.asdict(job.settings), "beam_args": list(start.beam_args),
                      "schedule": start.schedule},
            lease=lease,
            max_active=control.max_active,
        )
    except BaseException:
        release(snapshot)
        raise
    if in_progress:
        store.mark_in_progress(job.job_id)
    control.audit.record("kickoff", store.get(start.tenant, job.job_id))
    return RecordedJob(job, request, patients, lease, tuple(start.beam_args), snapshot)


def prepare_job(
    start: JobStart,
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
    tenant, request = start.tenant, start.request
    check_tenant(tenant)
    job_id = check_job_id(start.job_id or str(uuid.uuid4()))
    if start.schedule:
        request = scheduled_request(request, start.store.last_transaction_time(tenant, check_schedule(start.schedule)))
    check_level(request, start.settings.referenced_types)
    settings = tenant_settings(start.settings, tenant)
    snapshot = open_snapshot(settings.source, start.hold_snapshot)
    try:
        transaction_time = start.transaction_time or (snapshot.transaction_time if snapshot else now_instant())
        patients = resolve_patients(request, settings.source, settings.source_format, transaction_time)
    except BaseException:
        release(snapshot)
        raise
    job = ExportJob(job_id, transaction_time, settings, tenant, source_snapshot=snapshot.snapshot if snapshot else "")
    record = JobRecord(
        job_id=job.job_id,
        tenant=tenant,
        owner=start.owner,
        level=request.level,
        request=request,
        request_url=request.request_url,
        transaction_time=transaction_time,
        status=ExportStatus.ACCEPTED,
        created_at=transaction_time,
        output_dir=job.job_dir,
    )
    return job, request, patients, record, snapshot


def pipeline_inputs(
    store: JobStore,
    job: ExportJob,
    request: ExportRequest,
    members: Optional[Membership],
    beam_args: tuple[str, ...] | list[str],
    attempt: int,
    lease: Optional[Lease] = None,
    lease_s: float = 0.0,
) -> tuple[list[str], StoreJobSink]:
    """Writes the patients file, then returns the pipeline's argv and job sink for one attempt of `job`.

    With a `lease`, the sink renews it for `lease_s` at each report (a job no
    launcher watches); without, the launcher running the pipeline renews it.
    """
    if members is not None:  # the pipeline reads them instead of resolving them
        covered, outside = write_patients(job.patients_path, members, job.settings.output)
        job = dataclasses.replace(job, patients_file=covered, outside_patients=outside)
    return pipeline_argv(job, request, beam_args), StoreJobSink(store.url, job.job_id, attempt, lease, lease_s)


def pipeline_argv(job: ExportJob, request: ExportRequest, beam_args: tuple[str, ...] | list[str]) -> list[str]:
    """The pipeline's options: `beam_args` without the flags the job sets itself, then the job's, then the request."""
    own = {arg.split("=", 1)[0] for arg in job.to_argv()} | {"--request"}
    passed = [arg for arg in beam_args if arg.split("=", 1)[0] not in own]
    return [*passed, *job.to_argv(), f"--request={request.model_dump_json()}"]
