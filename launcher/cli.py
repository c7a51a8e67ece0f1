"""The `bulk-export` command line: export, status, manifest, list, cancel, delete,
cleanup, resume, sample-data. The job commands' handlers are in `launcher.commands`.

Exit codes: 0 success; 1 the job failed, was cancelled or was not found, or the
command does not apply to its state; 2 refused: a bad kickoff or command line
(no job was created) or a value the command cannot use; 3 too many concurrent exports for the tenant
(HTTP 429; nothing was started).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from launcher import commands, kickoff
from launcher.durations import parse_duration
from launcher.lifecycle import DEFAULT_CLEANUP_BATCH
from launcher.names import check_job_id, check_tenant
from launcher.runner import DEFAULT_LEASE_S, DEFAULT_MAX_ACTIVE, ExportFailed, JobCancelled, LeaseLost
from launcher.stores import InvalidJobState, JobNotFound, TooManyActiveExports
from pipelines.settings import DEFAULTS, UnsafeRunnerOptions
from transforms.read.source_formats import SOURCE_FORMATS

DEFAULT_STATE_DIR = ".bulk-export"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "export":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # Beam's options are spelled with underscores; a hyphenated unknown flag is a
    # typo of ours, and passing it on would silently drop what the user asked for.
    typos = [a for a in extra if a.startswith("--") and "-" in a[2:].split("=", 1)[0]]
    if typos:
        print(f"bulk-export: refused: unknown option {typos[0]}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING if not args.verbose else logging.INFO)
    if not args.verbose:
        # A failed job is reported in one line and kept in the store; Beam's own
        # tracebacks are for -v.
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    try:
        if hasattr(args, "tenant"):
            check_tenant(args.tenant)
        if getattr(args, "job_id", None) is not None:
            check_job_id(args.job_id)
        return args.handler(args, extra)
    except (kickoff.KickoffRefused, UnsafeRunnerOptions, ValueError) as exc:
        print(f"bulk-export: refused: {exc}", file=sys.stderr)
        return 2
    except ExportFailed as exc:
        # The job exists (status `error`); name it so `status JOB` can be asked.
        hint = "" if args.verbose else " (-v shows Beam's log)"
        print(f"bulk-export: job {exc.job_id} failed: {exc}{hint}", file=sys.stderr)
        return 1
    except TooManyActiveExports as exc:
        print(f"bulk-export: refused: {exc}", file=sys.stderr)
        return 3
    except (JobNotFound, InvalidJobState, JobCancelled, LeaseLost) as exc:
        print(f"bulk-export: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # start_export has already recorded an interrupted export as `error`.
        print("bulk-export: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bulk-export", description="FHIR Bulk Data $export on Apache Beam.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log Beam's progress")
    commands_ = parser.add_subparsers(dest="command", required=True)
    # No abbreviations: unknown --flags are Beam options and must never be taken for ours.

    export = commands_.add_parser(
        "export",
        allow_abbrev=False,
        help="run an export; unknown --flags are passed to Beam",
        description="Runs an export and waits for it, printing progress. Options not listed here are "
        "Beam pipeline options, e.g. --direct_running_mode=multi_processing --direct_num_workers=2.",
    )
    _job_options(export)
    export.add_argument("--source", required=True, help="NDJSON, Bundle, Avro or Parquet files: a file, glob or folder")
    export.add_argument("--output", default="exports", help="root output folder (default ./exports)")
    export.add_argument("--kickoff", help="the $export URL, GET form, e.g. 'https://x/fhir/$export?_type=Patient'")
    export.add_argument("--parameters", help="a FHIR Parameters JSON file: the POST form")
    export.add_argument("--base-url", default=kickoff.DEFAULT_BASE_URL, help="base of the request URL when --kickoff is absent")
    export.add_argument("--strict", action="store_true", help="refuse unsupported parameters (Prefer: handling=strict)")
    export.add_argument(
        "--source-format", default=DEFAULTS["source_format"], choices=SOURCE_FORMATS,
        help="auto: by file name, then by content (default)",
    )
    export.add_argument("--max-lines-per-part", type=_positive, default=DEFAULTS["max_lines_per_part"], help="default %(default)s")
    export.add_argument("--max-bytes-per-part", type=_positive, default=DEFAULTS["max_bytes_per_part"], help="default %(default)s")
    export.add_argument("--chunk-bytes", type=_positive, default=DEFAULTS["chunk_bytes"], help="NDJSON bytes per work item (default %(default)s)")
    export.add_argument(
        "--max-side-input-patients", type=_positive, default=DEFAULTS["max_side_input_patients"],
        help="Patient/Group exports: most patients kept in memory; more are joined by key (default %(default)s)",
    )
    export.add_argument(
        "--include-referenced", default=DEFAULTS["include_referenced"], metavar="TYPES",
        help="Patient/Group exports: add these types outside the compartment (e.g. Organization,Practitioner), "
        "only the resources that exported ones reference",
    )
    export.add_argument(
        "--exclude-missing-last-updated",
        dest="include_missing_last_updated",
        action="store_false",
        help="with _since/_until, drop resources that have no meta.lastUpdated (default: export them)",
    )
    export.add_argument("--schedule", metavar="NAME",
                        help="a named incremental export: _since is this schedule's last completed transactionTime")
    export.add_argument("--signed-urls", action="store_true",
                        help="gs:// output: V4 signed URLs in the manifest (requiresAccessToken false)")
    _url_options(export)
    _run_options(export)
    export.set_defaults(handler=commands.export)

    status = commands_.add_parser("status", allow_abbrev=False, help="show a job's status and per-type progress")
    _job_options(status)
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="print the job record as JSON")
    status.set_defaults(handler=commands.status)

    manifest = commands_.add_parser("manifest", allow_abbrev=False, help="print a complete job's manifest JSON")
    _job_options(manifest)
    manifest.add_argument("job_id")
    manifest.add_argument("--refresh-urls", action="store_true", help="re-sign the manifest's GCS URLs from now")
    _url_options(manifest)
    manifest.set_defaults(handler=commands.manifest)

    listing = commands_.add_parser("list", allow_abbrev=False, help="list active jobs (--all: every job)")
    _job_options(listing)
    listing.add_argument("--all", action="store_true", help="include finished jobs")
    listing.set_defaults(handler=commands.list_jobs)

    cancel = commands_.add_parser("cancel", allow_abbrev=False, help="cancel an accepted or running job")
    _job_options(cancel)
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=commands.cancel)

    delete = commands_.add_parser("delete", allow_abbrev=False, help="delete a job's output and records")
    _job_options(delete)
    delete.add_argument("job_id")
    delete.set_defaults(handler=commands.delete)

    cleanup = commands_.add_parser(
        "cleanup", allow_abbrev=False, help="delete finished jobs older than --ttl, of every tenant",
        description="Deletes the output and records of complete, failed and cancelled jobs that ended "
        "more than --ttl ago, across all tenants, in bounded batches. Safe to run from a scheduler.",
    )
    _job_options(cleanup)
    cleanup.add_argument("--ttl", type=_duration("--ttl"), default="24h", help="e.g. 24h, 90m, 7d (default 24h)")
    cleanup.add_argument("--batch-size", type=_positive, default=DEFAULT_CLEANUP_BATCH,
                         help="jobs claimed per batch (default %(default)s)")
    cleanup.set_defaults(handler=commands.cleanup)

    resume = commands_.add_parser("resume", allow_abbrev=False, help="run again a job whose launcher died")
    _job_options(resume)
    resume.add_argument("job_id")
    _run_options(resume)
    resume.set_defaults(handler=commands.resume)

    sample = commands_.add_parser("sample-data", allow_abbrev=False, help="write deterministic sample R4 NDJSON")
    sample.add_argument("--patients", type=_positive, default=100)
    sample.add_argument("--out", required=True)
    sample.add_argument("--seed", type=int, default=42)
    sample.set_defaults(handler=commands.sample_data)
    return parser


def _job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help="SQLite job store and audit log folder (default ./.bulk-export)")
    parser.add_argument("--job-store", metavar="URL",
                        help="a shared job store instead of the SQLite one: postgresql://user@host:port/db")
    parser.add_argument("--tenant", default="default", help="tenant; namespaces jobs and output folders (default: default)")
    parser.add_argument("--owner", help="owner subject; jobs of other owners are not visible")


def _url_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url-ttl", type=_seconds("--url-ttl"), default=f"{DEFAULTS['url_ttl']}s",
                        help="how long signed URLs stay valid, e.g. 1h, at most 7d (default %(default)s)")
    parser.add_argument("--signing-key", default=DEFAULTS["signing_key"], metavar="KEY_JSON",
                        help="service-account JSON key that signs URLs (default $GOOGLE_APPLICATION_CREDENTIALS)")


def _seconds(name: str):
    parse = _duration(name)
    return lambda text: int(parse(text))


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-active-per-tenant", type=_positive, default=DEFAULT_MAX_ACTIVE,
                        help="refuse a kickoff when the tenant has this many accepted or running jobs (default %(default)s)")
    parser.add_argument("--lease", type=_duration("--lease"), default=f"{DEFAULT_LEASE_S:g}s",
                        help="how long the job outlives this launcher if it dies; renewed while it runs (default %(default)s)")


def _duration(name: str):
    def parse(text: str) -> float:
        try:
            return parse_duration(text, name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


if __name__ == "__main__":
    sys.exit(main())
