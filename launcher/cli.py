"""The `bulk-export` command line: export, status, manifest, list, sample-data.

Exit codes: 0 success; 1 the job failed or was not found; 2 the kickoff or the
command line was refused (no job was created).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from launcher import kickoff
from launcher.jobs import ExportFailed, check_tenant, start_export
from launcher.store import InvalidJobState, JobNotFound, SqliteJobStore
from pipelines.models import JobRecord
from pipelines.options import DEFAULTS, ExportSettings, UnsafeRunnerOptions
from transforms.sources import SOURCE_FORMATS
from transforms.manifest import MANIFEST_NAME

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
        return args.handler(args, extra)
    except (kickoff.KickoffRefused, UnsafeRunnerOptions, ValueError) as exc:
        print(f"bulk-export: refused: {exc}", file=sys.stderr)
        return 2
    except ExportFailed as exc:
        # The job exists (status `error`); name it so `status JOB` can be asked.
        hint = "" if args.verbose else " (-v shows Beam's log)"
        print(f"bulk-export: job {exc.job_id} failed: {exc}{hint}", file=sys.stderr)
        return 1
    except (JobNotFound, InvalidJobState) as exc:
        print(f"bulk-export: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # start_export has already recorded an interrupted export as `error`.
        print("bulk-export: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bulk-export", description="FHIR Bulk Data $export on Apache Beam.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log Beam's progress")
    commands = parser.add_subparsers(dest="command", required=True)
    # No abbreviations: unknown --flags are Beam options and must never be taken for ours.

    export = commands.add_parser(
        "export",
        allow_abbrev=False,
        help="run an export; unknown --flags are passed to Beam",
        description="Runs an export and waits for it, printing progress. Options not listed here are "
        "Beam pipeline options, e.g. --direct_running_mode=multi_processing --direct_num_workers=2.",
    )
    _job_options(export)
    export.add_argument("--source", required=True, help="NDJSON/Bundle file, glob or folder")
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
        "--exclude-missing-last-updated",
        dest="include_missing_last_updated",
        action="store_false",
        help="with _since/_until, drop resources that have no meta.lastUpdated (default: export them)",
    )
    export.set_defaults(handler=_export)

    status = commands.add_parser("status", allow_abbrev=False, help="show a job's status and per-type progress")
    _job_options(status)
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="print the job record as JSON")
    status.set_defaults(handler=_status)

    manifest = commands.add_parser("manifest", allow_abbrev=False, help="print a complete job's manifest JSON")
    _job_options(manifest)
    manifest.add_argument("job_id")
    manifest.set_defaults(handler=_manifest)

    listing = commands.add_parser("list", allow_abbrev=False, help="list active jobs (--all: every job)")
    _job_options(listing)
    listing.add_argument("--all", action="store_true", help="include finished jobs")
    listing.set_defaults(handler=_list)

    sample = commands.add_parser("sample-data", allow_abbrev=False, help="write deterministic sample R4 NDJSON")
    sample.add_argument("--patients", type=_positive, default=100)
    sample.add_argument("--out", required=True)
    sample.add_argument("--seed", type=int, default=42)
    sample.set_defaults(handler=_sample_data)
    return parser


def _job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="job store folder (default ./.bulk-export)")
    parser.add_argument("--tenant", default="default", help="tenant; namespaces jobs and output folders (default: default)")
    parser.add_argument("--owner", help="owner subject; jobs of other owners are not visible")


def _export(args: argparse.Namespace, beam_args: list[str]) -> int:
    request = _request(args)
    settings = ExportSettings.from_namespace(args)
    store = SqliteJobStore(args.state_dir)
    record = start_export(
        store, args.state_dir, request, settings, args.tenant, args.owner, tuple(beam_args), _print_progress
    )
    total = sum(p.exported for p in record.progress)
    summary = f"job {record.job_id} complete: {_count(total, 'resource')} in {_count(len(record.progress), 'type')}"
    if record.bad_records:
        summary += f", {_count(record.bad_records, 'bad record')}"
    print(summary)
    print(f"manifest: {os.path.join(record.output_dir, MANIFEST_NAME)}")
    return 0


def _request(args: argparse.Namespace):
    if args.parameters:
        body = kickoff.load_parameters(args.parameters)
        return kickoff.parse_post(body, args.kickoff or kickoff.system_url(args.base_url), args.strict)
    return kickoff.parse_get(args.kickoff or kickoff.system_url(args.base_url), args.strict)


def _print_progress(record: JobRecord) -> None:
    total = sum(p.exported for p in record.progress)
    print(f"  {record.status.value}: {total:,} resources written", file=sys.stderr, flush=True)


def _status(args: argparse.Namespace, _: list[str]) -> int:
    record = SqliteJobStore(args.state_dir).get(args.tenant, args.job_id, args.owner)
    if args.json:
        print(record.model_dump_json(indent=2))
        return 0
    print(f"job {record.job_id}: {record.status.value}")
    print(f"  level {record.level.value}, tenant {record.tenant}, owner {record.owner or '-'}")
    print(f"  request {record.request_url}")
    print(f"  transactionTime {record.transaction_time}")
    for progress in record.progress:
        print(f"  {progress.type:<28}{progress.exported:>12,}")
    if record.bad_records:
        print(f"  bad records {record.bad_records:,} (see the manifest's error files)")
    if record.error_message:
        print(f"  error: {record.error_message}")
    return 0


def _manifest(args: argparse.Namespace, _: list[str]) -> int:
    manifest = SqliteJobStore(args.state_dir).manifest(args.tenant, args.job_id, args.owner)
    print(json.dumps(manifest.to_json_dict(), indent=2))
    return 0


def _list(args: argparse.Namespace, _: list[str]) -> int:
    records = SqliteJobStore(args.state_dir).list(args.tenant, args.owner, include_terminal=args.all)
    for record in records:
        total = sum(p.exported for p in record.progress)
        print(f"{record.job_id}  {record.status.value:<12}{record.level.value:<8}{record.created_at}  {total:,}")
    return 0


def _sample_data(args: argparse.Namespace, _: list[str]) -> int:
    from launcher.sample_data import generate

    counts = generate(args.out, args.patients, args.seed)
    print(f"wrote {sum(counts.values()):,} resources to {args.out}: " + ", ".join(f"{t} {n:,}" for t, n in counts.items()))
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


if __name__ == "__main__":
    sys.exit(main())
