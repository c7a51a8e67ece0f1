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
from typing import Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from launcher.jobs import prepare_job
from launcher.store import StoreJobSink, open_store
from pipelines.export import run
from pipelines.models import ExportRequest
from pipelines.options import ExportOptions, ExportSettings
from transforms.select.covered_patients import write_patients


def submit(argv: Sequence[str]) -> str:
    """Records and submits one export from pipeline options; returns its job id once submitted."""
    options = PipelineOptions(list(argv)).view_as(ExportOptions)
    if not options.job_store:
        raise ValueError("--job_store: a submitted job needs a store its workers reach (postgresql://...)")
    if not options.request:
        raise ValueError("missing pipeline option: --request")
    store = open_store(options.job_store)
    job, request, members, record = prepare_job(
        store,
        ExportRequest.model_validate_json(options.request),
        ExportSettings.from_namespace(options),
        options.tenant,
        schedule=options.schedule,
        job_id=options.job_id,
        transaction_time=options.transaction_time,
    )
    store.create(
        record,
        run_spec={"settings": dataclasses.asdict(job.settings), "beam_args": [], "schedule": options.schedule or None},
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
