"""The Flex Template's entry point: record the job, submit the pipeline, return without waiting.

Dataflow runs `python -m launcher.submit <template parameters> <Dataflow options>`
in the launcher container. The job goes into the shared job store
(`--job_store postgresql://...`) as `in-progress`; the pipeline's last step
marks it `complete` there from a worker, so nothing depends on this process
staying alive. With `--schedule`, `_since` comes from the schedule's last
completed run. `--job_id` and `--transaction_time` are taken when given (a
caller that recorded the job itself) and made here otherwise.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from launcher.membership import resolve_patients
from launcher.paths import check_job_id, check_tenant, tenant_settings
from launcher.schedules import check_schedule, scheduled_request
from launcher.store import StoreJobSink, open_store
from pipelines.export import ExportJob, run
from pipelines.models import ExportRequest, ExportStatus, JobRecord
from pipelines.options import ExportOptions, ExportSettings
from transforms.fhir.instant import now_instant
from transforms.patients import write_patients


def submit(argv: Sequence[str]) -> str:
    """Records and submits one export from pipeline options; returns its job id once submitted."""
    options = PipelineOptions(list(argv)).view_as(ExportOptions)
    if not options.job_store:
        raise ValueError("--job_store: a submitted job needs a store its workers reach (postgresql://...)")
    if not options.request:
        raise ValueError("missing pipeline option: --request")
    # Both name folders: refused unless each is one safe path segment.
    tenant, job_id = check_tenant(options.tenant), check_job_id(options.job_id or str(uuid.uuid4()))
    store = open_store(options.job_store)
    request = ExportRequest.model_validate_json(options.request)
    if options.schedule:
        request = scheduled_request(request, store.last_transaction_time(tenant, check_schedule(options.schedule)))
    transaction_time = options.transaction_time or now_instant()
    settings = tenant_settings(ExportSettings.from_namespace(options), tenant)
    # A missing Group or unknown patient is refused here, before any job exists.
    members = resolve_patients(request, settings.source, settings.source_format, transaction_time)
    job = ExportJob(job_id, transaction_time, settings, tenant)
    store.create(
        JobRecord(job_id=job.job_id, tenant=job.tenant, level=request.level, request=request,
                  request_url=request.request_url, transaction_time=transaction_time,
                  status=ExportStatus.ACCEPTED, created_at=transaction_time, output_dir=job.job_dir),
        run_spec={"settings": dataclasses.asdict(settings), "beam_args": [], "schedule": options.schedule or None},
    )
    store.mark_in_progress(job.job_id)
    try:
        if members is not None:
            write_patients(job.patients_path, members)
        job_flags = {arg.split("=", 1)[0] for arg in job.to_argv()}
        passed = [a for a in argv if a.split("=", 1)[0] not in job_flags | {"--request"}]
        run([*passed, *job.to_argv(), f"--request={request.model_dump_json()}"],
            sink=StoreJobSink(options.job_store, job.job_id, 1))
    except Exception as exc:
        store.fail(job.job_id, f"submission failed: {exc}")
        raise
    return job.job_id


def main(argv: Optional[Sequence[str]] = None) -> int:
    print(f"submitted job {submit(sys.argv[1:] if argv is None else argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
