"""The handlers of `bulk-export`'s commands: each takes the parsed arguments and returns an exit code.

Every job command opens the store named by `--job-store` (or the SQLite store
in `--state-dir`) and first recovers jobs whose launcher died, so a crashed
run is reported as `error` by whichever command looks next.
"""

from __future__ import annotations

import argparse
import json
import os

from launcher import kickoff
from launcher.audit import AuditLog
from launcher.lifecycle import cancel_job, cleanup_expired, delete_job, recover_abandoned
from launcher.progress import ProgressDisplay
from launcher.runner import RunControl
from launcher.stores import JobStore, StoredJob, open_store
from pipelines.settings import ExportSettings
from transforms.write.layout import MANIFEST_NAME


def _open(args: argparse.Namespace, recover: bool = True) -> tuple[JobStore, AuditLog]:
    store, audit = open_store(args.job_store or args.state_dir), AuditLog(args.state_dir)
    if recover:  # export recovers after validating the kickoff: a refusal touches no file
        recover_abandoned(store, audit)
    return store, audit


def _control(args: argparse.Namespace, audit: AuditLog, display: ProgressDisplay) -> RunControl:
    return RunControl(audit, args.max_active_per_tenant, args.lease, display)


def export(args: argparse.Namespace, beam_args: list[str]) -> int:
    request = _request(args)
    settings = ExportSettings.from_namespace(args)
    from launcher.jobs import start_export  # runs a pipeline: the one command that imports Beam

    store, audit = _open(args, recover=False)
    display = ProgressDisplay()
    try:
        record = start_export(store, _control(args, audit, display), request, settings, args.tenant, args.owner,
                              tuple(beam_args), args.schedule)
    finally:
        display.close()
    _print_complete(record)
    return 0


def resume(args: argparse.Namespace, _: list[str]) -> int:
    from launcher.jobs import resume_export

    store, audit = _open(args)
    display = ProgressDisplay()
    try:
        record = resume_export(store, _control(args, audit, display), args.tenant, args.job_id, args.owner)
    finally:
        display.close()
    _print_complete(record)
    return 0


def _print_complete(record: StoredJob) -> None:
    total = sum(p.exported for p in record.progress)
    summary = f"job {record.job_id} complete: {_count(total, 'resource')} in {_count(len(record.progress), 'type')}"
    if record.bad_records:
        summary += f", {_count(record.bad_records, 'bad record')}"
    print(summary)
    print(f"manifest: {os.path.join(record.output_dir, MANIFEST_NAME)}")


def _request(args: argparse.Namespace):
    if args.parameters:
        body = kickoff.load_parameters(args.parameters)
        return kickoff.parse_post(body, args.kickoff or kickoff.system_url(args.base_url), args.strict)
    return kickoff.parse_get(args.kickoff or kickoff.system_url(args.base_url), args.strict)


def status(args: argparse.Namespace, _: list[str]) -> int:
    store, _audit = _open(args)
    record = store.get(args.tenant, args.job_id, args.owner)
    if args.json:
        print(record.model_dump_json(indent=2))
        return 0
    print(f"job {record.job_id}: {record.status.value}")
    print(f"  level {record.level.value}, tenant {record.tenant}, owner {record.owner or '-'}")
    print(f"  request {record.request_url}")
    print(f"  transactionTime {record.transaction_time}")
    if record.attempt > 1:
        print(f"  attempt {record.attempt}")
    if record.fraction is not None and not record.status.is_terminal:
        print(f"  progress {record.fraction:.0%} of the source read")
    for progress in record.progress:
        print(f"  {progress.type:<28}{progress.exported:>12,}")
    if record.bad_records:
        print(f"  bad records {record.bad_records:,} (see the manifest's error files)")
    if record.error_message:
        print(f"  error: {record.error_message}")
    return 0


def manifest(args: argparse.Namespace, _: list[str]) -> int:
    store, _audit = _open(args)
    document = store.manifest(args.tenant, args.job_id, args.owner)
    if args.refresh_urls:
        from launcher.signing import refresh_urls  # signs with google-auth

        document = refresh_urls(document, args.url_ttl, args.signing_key)
    print(json.dumps(document.to_json_dict(), indent=2))
    return 0


def list_jobs(args: argparse.Namespace, _: list[str]) -> int:
    store, _audit = _open(args)
    for record in store.list(args.tenant, args.owner, include_terminal=args.all):
        total = sum(p.exported for p in record.progress)
        print(f"{record.job_id}  {record.status.value:<12}{record.level.value:<8}{record.created_at}  {total:,}")
    return 0


def cancel(args: argparse.Namespace, _: list[str]) -> int:
    store, audit = _open(args)
    cancel_job(store, audit, args.tenant, args.job_id, args.owner)
    print(f"job {args.job_id} cancelled")
    return 0


def delete(args: argparse.Namespace, _: list[str]) -> int:
    store, audit = _open(args)
    delete_job(store, audit, args.tenant, args.job_id, args.owner)
    print(f"job {args.job_id} deleted")
    return 0


def cleanup(args: argparse.Namespace, _: list[str]) -> int:
    store, audit = _open(args)
    removed = cleanup_expired(store, audit, args.ttl, args.batch_size)
    print(f"removed {_count(len(removed), 'expired job')}")
    for record in removed:
        print(f"  {record.tenant}/{record.job_id}  {record.status.value}")
    return 0


def sample_data(args: argparse.Namespace, _: list[str]) -> int:
    from launcher.sample_data import generate

    counts = generate(args.out, args.patients, args.seed)
    print(f"wrote {sum(counts.values()):,} resources to {args.out}: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


__all__ = ["cancel", "cleanup", "delete", "export", "list_jobs", "manifest", "resume", "sample_data", "status"]
