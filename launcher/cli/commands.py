"""The handlers of `bulk-export`'s commands: each takes the parsed arguments and returns an exit code.

Every job command opens the store named by `--job-store` (or the SQLite store
in `--state-dir`) and first recovers jobs whose launcher died, so a crashed
run is reported as `error` by whichever command looks next. The read-only
commands (`status`, `list`, `manifest`) also work on a store this process
cannot write: they then open it read-only and recover nothing.

Owners: a job recorded with `--owner X` is visible only with `--owner X`; one
recorded without an owner only without `--owner`. `--all-owners` (an
operator's access) sees every owner's jobs, and is audited (`operator-access`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from launcher.cli.progress import ProgressDisplay
from launcher.core.audit import AuditLog
from launcher.core.names import check_locations
from launcher.jobs.lifecycle import cancel_job, cleanup_expired, delete_job, recover_abandoned
from launcher.jobs.process import RunControl
from launcher.kickoff import parser as kickoff
from launcher.stores import ANY_OWNER, InvalidJobState, JobStore, Lease, StoredJob, StoreUnavailable, open_store
from launcher.stores.contract import Owner, StoreBusy
from pipelines.models import ExportStatus
from pipelines.settings import ExportSettings
from transforms.storage.layout import MANIFEST_NAME

ALL_OWNERS_FLAG = "--all-owners"


def _open(args: argparse.Namespace, recover: bool = True, read_only: bool = False) -> tuple[JobStore, AuditLog]:
    store = open_store(args.job_store or args.state_dir, read_only=read_only)
    audit = AuditLog(args.state_dir)
    if getattr(store, "read_only", False):
        store.check_readable()
        print(f"bulk-export: note: the job store in {store.url} cannot be written here; it is shown as stored"
              " (jobs whose launcher died are not marked failed)", file=sys.stderr)
    elif recover:  # export recovers after validating the kickoff: a refusal touches no file
        try:
            recover_abandoned(store, audit)
        except StoreBusy:  # another process writes: a read answers from the last commit, and recovers next time
            if not read_only:
                raise
    return store, audit


def _owner(args: argparse.Namespace, audit: AuditLog, command: str, job_id: str | None = None) -> Owner:
    """The owner whose jobs the command may see: `--owner`, none, or (`--all-owners`) any, audited first."""
    if not getattr(args, "all_owners", False):
        return args.owner
    try:
        audit.operator_access(command, args.tenant, job_id, ALL_OWNERS_FLAG)
    except OSError as exc:  # an operator's access that cannot be audited is not made
        raise StoreUnavailable(f"cannot write the audit log {audit.path(args.tenant)}: {exc.strerror or exc};"
                               f" {ALL_OWNERS_FLAG} is only allowed when it can be audited") from None
    return ANY_OWNER


def _control(args: argparse.Namespace, audit: AuditLog, display: ProgressDisplay) -> RunControl:
    return RunControl(audit, args.max_active_per_tenant, args.lease, display)


def export(args: argparse.Namespace, beam_args: list[str]) -> int:
    request = _request(args)
    settings = ExportSettings.from_namespace(args)
    check_locations(settings, args.tenant)
    _warm_pipeline_process()
    # Runs a pipeline: the one command that imports Beam.
    from launcher.jobs.attempts import JobStart, check_runner_options, start_export

    check_runner_options(beam_args)  # before the store is opened: a refusal creates nothing
    store, audit = _open(args, recover=False)
    with ProgressDisplay(quiet=args.quiet) as display:
        start = JobStart(store, request, settings, args.tenant, args.owner, tuple(beam_args), args.schedule)
        record = start_export(start, _control(args, audit, display))
        display.finish(record, _files(store, record))
    _print_complete(record)
    return 0


def _warm_pipeline_process() -> None:
    """Starts the process the pipeline will be forked from (`launcher.jobs.process`), so that it imports
    Beam while this process does too, on another core, instead of after it."""
    from launcher.jobs.fork_server import start_fork_server

    start_fork_server()


def resume(args: argparse.Namespace, beam_args: list[str]) -> int:
    """Runs a job again; runner options given here replace the recorded ones for this attempt."""
    _warm_pipeline_process()
    from launcher.jobs.attempts import resume_export

    store, audit = _open(args)
    with ProgressDisplay(quiet=args.quiet) as display:
        record = resume_export(store, _control(args, audit, display), args.tenant, args.job_id, args.owner,
                               tuple(beam_args))
        display.finish(record, _files(store, record))
    _print_complete(record)
    return 0


def _files(store: JobStore, record: StoredJob) -> int:
    """How many resource files a complete job wrote (its manifest's `output`)."""
    return len(store.manifest(record.tenant, record.job_id).output)


def _print_complete(record: StoredJob) -> None:
    total = sum(p.exported for p in record.progress)
    summary = f"job {record.job_id} complete: {_count(total, 'resource')} in {_count(len(record.progress), 'type')}"
    if record.bad_records:
        summary += f", {_count(record.bad_records, 'bad record')}"
    print(summary)
    print(f"manifest: {os.path.join(record.output_dir, MANIFEST_NAME)}")


def _request(args: argparse.Namespace):
    """The kickoff as an `ExportRequest`: strict unless `--lenient`, which names each ignored parameter."""
    strict = not args.lenient
    if args.parameters:
        body = kickoff.load_parameters(args.parameters)
        request = kickoff.parse_post(body, args.kickoff or kickoff.system_url(args.base_url), strict=strict)
    else:
        request = kickoff.parse_get(args.kickoff or kickoff.system_url(args.base_url), strict=strict)
    for text in getattr(request, "ignored", ()):
        print(f"bulk-export: ignored: {text}", file=sys.stderr)
    return request


def _job_code(record: StoredJob) -> int:
    """1 for a job that failed or was cancelled, else 0."""
    return 1 if record.status in (ExportStatus.ERROR, ExportStatus.CANCELLED) else 0


def status(args: argparse.Namespace, _: list[str]) -> int:
    store, audit = _open(args, read_only=True)
    record = store.get(args.tenant, args.job_id, _owner(args, audit, "status", args.job_id))
    if args.json:
        print(record.model_dump_json(indent=2))
        return _job_code(record)
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
    return _job_code(record)


def manifest(args: argparse.Namespace, _: list[str]) -> int:
    store, audit = _open(args, read_only=args.page is None)  # serving a page first freezes it
    owner = _owner(args, audit, "manifest", args.job_id)
    if args.page is not None:
        return _manifest_page(store, args, owner)
    document = store.manifest(args.tenant, args.job_id, owner)
    if args.refresh_urls:
        from launcher.jobs.signing import refresh_urls  # signs with google-auth

        if any(e.url.startswith("file:") for e in document.output + document.error):
            # About this job, not the command line: exit 1, not 2.
            raise InvalidJobState(f"job {args.job_id}'s files are local (file://); --refresh-urls signs only"
                                  " gs:// output")
        document = refresh_urls(document, args.url_ttl, args.signing_key)
    print(json.dumps(document.to_json_dict(), indent=2))
    return 0


def _manifest_page(store, args: argparse.Namespace, owner) -> int:
    """`manifest --page N` of an allowPartialManifests export: the page, or exit 1 while it is not ready."""
    from launcher.jobs.manifest_pages import manifest_page, requires_token

    record = store.get(args.tenant, args.job_id, owner)
    if not record.request.allow_partial_manifests:
        raise InvalidJobState(f"job {args.job_id} was not kicked off with allowPartialManifests=true: it has one"
                              " manifest (omit --page)")
    if record.status not in (ExportStatus.IN_PROGRESS, ExportStatus.COMPLETE):
        raise InvalidJobState(f"job {args.job_id} is {record.status.value}: it has no manifest")
    here = f"{record.output_dir}/{MANIFEST_NAME}"
    page = manifest_page(store, record, owner, args.page, lambda n: f"{here}?page={n}", requires_token(store, record))
    if page is None:
        print(f"job {args.job_id}: page {args.page} is not ready"
              + (" (the manifest has fewer pages)" if record.status is ExportStatus.COMPLETE else "; try again"),
              file=sys.stderr)
        return 1
    print(json.dumps(page.to_json_dict(), indent=2))
    return 0


def list_jobs(args: argparse.Namespace, _: list[str]) -> int:
    """A header and one line per job; none: a line on stderr saying so (stdout stays the table)."""
    store, audit = _open(args, read_only=True)
    owner = _owner(args, audit, "list")
    records = store.list(args.tenant, owner, include_terminal=args.all)
    if not records:
        print(f"bulk-export: {_no_jobs(store, args, owner)}", file=sys.stderr)
        return 0
    rows = [(r.job_id, r.status.value, r.level.value, r.created_at, f"{sum(p.exported for p in r.progress):,}",
             r.owner or "-") for r in records]
    columns = ("JOB", "STATUS", "LEVEL", "CREATED", "RESOURCES", "OWNER")[:6 if owner is ANY_OWNER else 5]
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    for row in [columns, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _no_jobs(store: JobStore, args: argparse.Namespace, owner: Owner) -> str:
    """What `list` says when it lists nothing: finished jobs it left out are named, with how to see them."""
    whose = f"tenant {args.tenant}" + (f", owner {owner}" if owner and owner is not ANY_OWNER else "")
    if args.all:
        return f"no jobs of {whose}"
    finished = len(store.list(args.tenant, owner, include_terminal=True))
    return f"no active jobs of {whose}" + (f"; {_count(finished, 'finished job')} (see list --all)"
                                            if finished else "")


def _say_wait(record: StoredJob, lease: Lease, until_ms: int) -> None:
    """Tells, before `cancel` or `delete` waits, what it waits for and until when at most."""
    what = "record its completion" if record.status is ExportStatus.COMPLETE else "stop it and remove its output"
    print(f"bulk-export: waiting for the launcher running job {record.job_id} to {what}:"
          f" the job's lease is held by {lease.holder}, a launcher that may be gone, until {_instant(lease.expires_ms)}"
          f" unless it renews it; waiting at most until {_instant(until_ms)}", file=sys.stderr, flush=True)


def _instant(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def cancel(args: argparse.Namespace, _: list[str]) -> int:
    store, audit = _open(args)
    cancel_job(store, audit, args.tenant, args.job_id, _owner(args, audit, "cancel", args.job_id),
               on_wait=_say_wait)
    print(f"job {args.job_id} cancelled")
    return 0


def delete(args: argparse.Namespace, _: list[str]) -> int:
    store, audit = _open(args)
    delete_job(store, audit, args.tenant, args.job_id, _owner(args, audit, "delete", args.job_id),
               on_wait=_say_wait)
    print(f"job {args.job_id} deleted")
    return 0


def cleanup(args: argparse.Namespace, _: list[str]) -> int:
    """Expired jobs of `--tenant` and `--owner` (none: ownerless jobs); `--all-tenants`, `--all-owners` widen it."""
    store, audit = _open(args)
    tenant = None if args.all_tenants else args.tenant
    owner = ANY_OWNER if args.all_owners else args.owner
    removed = cleanup_expired(store, audit, args.ttl, args.batch_size, tenant=tenant, owner=owner)
    print(f"removed {_count(len(removed), 'expired job')}")
    for record in removed:
        print(f"  {record.tenant}/{record.job_id}  {record.status.value}")
    return 0


def warm(args: argparse.Namespace, _: list[str]) -> int:
    """Starts, stops or reports this user's warm process (`launcher.jobs.warm`)."""
    from launcher.jobs import fork_server, warm as warm_process

    if args.stop:
        pid = warm_process.stop(lambda pid: print(f"waiting for the exports that use warm process {pid} to end",
                                                   file=sys.stderr))
        print(f"stopped the warm process {pid}" if pid else f"no warm process runs {_WARM_KEY}")
        return 0
    if args.status:
        pid, used = warm_process.status()
        if pid is None:
            print(f"no warm process runs {_WARM_KEY}")
            return 1
        used_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(used))
        print(f"warm process {pid} runs {_WARM_KEY}; last used {used_at}")
        return 0
    pid, started = fork_server.start_warm(args.idle)
    if started:
        print(f"warm process {pid} ready: export and resume start from it until it has been idle {args.idle:g} s"
              " (bulk-export warm --stop ends it)")
    else:
        print(f"warm process {pid} already runs {_WARM_KEY}, with the --idle it was started with")
    return 0


_WARM_KEY = "for this interpreter, code and environment"


def sample_data(args: argparse.Namespace, _: list[str]) -> int:
    from launcher.tools.sample_data import generate

    counts = generate(args.out, args.patients, args.seed)
    print(f"wrote {sum(counts.values()):,} resources to {args.out}: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


__all__ = ["cancel", "cleanup", "delete", "export", "list_jobs", "manifest", "resume", "sample_data", "status", "warm"]
