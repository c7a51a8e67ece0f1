"""The Flex Template's entry point: validate, record the job, submit the pipeline, return without waiting.

Dataflow runs `python -m launcher.jobs.submit <template parameters> <Dataflow options>`
in the launcher container. The request is validated by the same kickoff
parser as the CLI's, the job goes into the shared job store
(`--job_store postgresql://...`) as `in-progress` under a lease, and a
`kickoff` AuditEvent is written. No launcher watches the job afterwards: the
pipeline renews the lease as its workers report, its last step marks the job
`complete`, and if the workers stop reporting the lease lapses and the next
store client ends the job in `error`. With `--schedule`, `_since` comes from
the schedule's last completed run. `--job_id` and `--transaction_time` are
taken when given (a caller that recorded the job itself) and made here
otherwise. The store URL never carries a password (PGPASSWORD or PGPASSFILE).
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import orjson
from apache_beam.options.pipeline_options import PipelineOptions

from launcher.core.audit import SERIOUS_FAILURE, AuditLog, audit_event
from launcher.core.beam_notice import before_beam_import
from launcher.jobs.dataflow import runner_job
from launcher.jobs.start import JobStart, pipeline_inputs, record_job
from launcher.jobs.process import RunControl, describe
from launcher.jobs.store_sink import check_no_password, open_store
from launcher.kickoff import parser as kickoff
from launcher.stores import SCHEMES
from pipelines.export import run
from pipelines.models import ExportRequest
from pipelines.options import ExportOptions, ExportSettings
from transforms.errors import Refused


def submit(argv: Sequence[str]) -> str:
    """Validates, records and submits one export from pipeline options; returns its job id once submitted."""
    options = PipelineOptions(list(argv)).view_as(ExportOptions)
    if not options.job_store:
        raise Refused("--job_store: a submitted job needs a store its workers reach (postgresql://...)")
    check_no_password(options.job_store)
    if not options.request:
        raise Refused("missing pipeline option: --request")
    if not options.lease_s > 0:
        raise Refused(f"--lease_s must be positive, not {options.lease_s}")
    request = validated(ExportRequest.model_validate_json(options.request))
    store = open_store(options.job_store)
    # No cap; the lease is renewed by the pipeline's reports once this launcher has ended.
    control = RunControl(audit_log(options.audit_dir, options.job_store), max_active=None, lease_s=options.lease_s)
    start = JobStart(
        store,
        request,
        ExportSettings.from_namespace(options),
        options.tenant,
        schedule=options.schedule or None,
        job_id=options.job_id,
        transaction_time=options.transaction_time,
        hold_snapshot=False,  # this launcher ends before the workers start: no snapshot could be joined
    )
    # `start.beam_args` stays empty, so the run spec records no runner options; the template's own go to its pipeline.
    job, request, members, lease, _, _ = record_job(start, control, in_progress=True)
    try:
        job_argv, sink = pipeline_inputs(store, job, request, members, argv, 1, lease, options.lease_s)
        result = run(job_argv, sink=sink)
        engine_job = runner_job(result, PipelineOptions(job_argv))
        if engine_job is not None:  # so that a cancel reaches Dataflow's job too
            store.set_runner_job(job.job_id, engine_job)
    except Exception as exc:
        message = f"submission failed: {describe(exc)}"
        store.fail(job.job_id, message)
        control.audit.record("error", store.get(job.tenant, job.job_id), SERIOUS_FAILURE, message)
        raise
    return job.job_id


def validated(request: ExportRequest) -> ExportRequest:
    """`request` held field by field to the kickoff parser's own checks: the CLI's refusals, exactly."""
    return kickoff.check_request(request)


class _StderrAuditLog:
    """AuditEvents as one JSON line each on stderr (a Flex Template launcher's log), when no folder is given."""

    def record(self, event, job, outcome="0", description=None, agent=None) -> dict:
        resource = audit_event(event, job, outcome, description, agent)
        sys.stderr.write(orjson.dumps(resource).decode() + "\n")
        return resource


def audit_log(audit_dir: str, job_store: str):
    """The audit log: `audit_dir`, else the SQLite store's folder, else stderr."""
    if audit_dir:
        return AuditLog(audit_dir)
    return _StderrAuditLog() if job_store.startswith(SCHEMES) else AuditLog(job_store)


def main(argv: Optional[Sequence[str]] = None) -> int:
    before_beam_import()
    print(f"submitted job {submit(sys.argv[1:] if argv is None else argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
