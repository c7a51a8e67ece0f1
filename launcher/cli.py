"""The `bulk-export` command line: export, status, manifest, list, cancel, delete,
cleanup, resume, serve, clients, sample-data. The job commands' handlers are in `launcher.commands`.

Exit codes (the same table is in README.md):

    0    success; `status` of a job that is accepted, in progress or complete
    1    about a job named or run: it failed (`error`) or was cancelled (`export`,
         `resume`, and `status`, which still prints it), it is not found (another
         tenant's or owner's jobs look the same), or the command does not fit it
         (cancelling a complete job, `manifest --refresh-urls` of local output)
    2    refused before any job was touched: a bad kickoff, a bad command line or
         option value (argparse's own errors too); nothing was created or changed
    3    the tenant has `--max-active-per-tenant` jobs already (HTTP 429); nothing started
    4    the job store, the state folder or a file could not be used: e.g. a read-only
         `--state-dir` for a command that writes, an unreachable database, a store of
         a newer schema, permission denied
    130  interrupted (Ctrl-C); an export already recorded is marked `error`
    141  stdout was closed early (`status | head -1`): stopped quietly, as a process
         ended by SIGPIPE would be

Under `--json`, every error is one JSON object on stderr: {"error": "...", "code": N}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import NoReturn, Optional, Sequence

from launcher import commands, kickoff
from launcher.auth import clients_cli
from launcher.durations import parse_duration
from launcher.lifecycle import DEFAULT_CLEANUP_BATCH
from launcher.names import check_job_id, check_tenant
from launcher.runner import DEFAULT_LEASE_S, DEFAULT_MAX_ACTIVE, ExportFailed, JobCancelled, LeaseLost
from launcher.server import main as server_main
from launcher.stores import InvalidJobState, JobNotFound, StoreUnavailable, TooManyActiveExports
from pipelines.settings import DEFAULTS, UnsafeRunnerOptions
from transforms.read.source_formats import SOURCE_FORMATS

DEFAULT_STATE_DIR = ".bulk-export"
EXIT_OK, EXIT_JOB, EXIT_REFUSED, EXIT_TOO_MANY, EXIT_STORE = 0, 1, 2, 3, 4
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141


class _UsageError(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser, self.message = parser, message


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors `main` reports (as JSON under `--json`) before exiting with 2."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self, message)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = _parse(argv)
        return _run(args, extra)
    except BrokenPipeError:  # also `--help | head -1`
        return _stdout_closed()


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The parsed arguments; a usage error is reported (as JSON under `--json`) and exits with 2."""
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in ("export", "serve"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args, extra
    except _UsageError as exc:
        if "--json" in argv:
            _print_json_error(f"{exc.parser.prog}: error: {exc.message}", EXIT_REFUSED)
        else:
            exc.parser.print_usage(sys.stderr)
            print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
        raise SystemExit(EXIT_REFUSED) from None


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    # Beam's options are spelled with underscores; a hyphenated unknown flag is a
    # typo of ours, and passing it on would silently drop what the user asked for.
    typos = [a for a in extra if a.startswith("--") and "-" in a[2:].split("=", 1)[0]]
    if typos:
        return _fail(args, EXIT_REFUSED, f"refused: unknown option {typos[0]}")
    logging.basicConfig(level=logging.WARNING if not args.verbose else logging.INFO)
    if not args.verbose:
        # A failed job is reported in one line and kept in the store; Beam's own
        # tracebacks are for -v.
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
        # A job store's reconnect attempts: the launcher says once that the store is out of reach.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        if hasattr(args, "tenant"):
            check_tenant(args.tenant)
        if getattr(args, "job_id", None) is not None:
            check_job_id(args.job_id)
        code = args.handler(args, extra)
        sys.stdout.flush()  # here, so a closed pipe is caught now, not at exit
        return code
    except (kickoff.KickoffRefused, UnsafeRunnerOptions, ValueError) as exc:
        return _fail(args, EXIT_REFUSED, f"refused: {exc}")
    except ExportFailed as exc:
        # The job exists (status `error`); name it so `status JOB` can be asked.
        hint = "" if args.verbose else " (-v shows Beam's log)"
        return _fail(args, EXIT_JOB, f"job {exc.job_id} failed: {exc}{hint}")
    except TooManyActiveExports as exc:
        return _fail(args, EXIT_TOO_MANY, f"refused: {exc}")
    except (JobNotFound, InvalidJobState, JobCancelled, LeaseLost) as exc:
        return _fail(args, EXIT_JOB, str(exc))
    except StoreUnavailable as exc:
        return _fail(args, EXIT_STORE, str(exc))
    except BrokenPipeError:
        raise
    except OSError as exc:  # a state folder, audit log or output the command cannot read or write
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(args, EXIT_STORE, f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        # start_export has already recorded an interrupted export as `error`.
        return _fail(args, EXIT_INTERRUPTED, "interrupted")


def _fail(args: argparse.Namespace, code: int, message: str) -> int:
    """Reports an error in one line on stderr (a JSON object under `--json`) and returns its exit code."""
    if getattr(args, "json", False):
        _print_json_error(message, code)
    else:
        print(f"bulk-export: {message}", file=sys.stderr)
    return code


def _print_json_error(message: str, code: int) -> None:
    print(json.dumps({"error": message, "code": code}), file=sys.stderr)


def _stdout_closed() -> int:
    """The reader of stdout went away (`| head`): stop quietly, as SIGPIPE would, without a traceback."""
    try:
        # What is still buffered can never be written; point stdout at /dev/null so the
        # interpreter's last flush does not fail again at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (e.g. redirected in-process)
        pass
    return EXIT_BROKEN_PIPE


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bulk-export", description="FHIR Bulk Data $export on Apache Beam.")
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
    _settings_options(export)
    export.add_argument("--kickoff", help="the $export URL, GET form, e.g. 'https://x/fhir/$export?_type=Patient'")
    export.add_argument("--parameters", help="a FHIR Parameters JSON file: the POST form")
    export.add_argument("--base-url", default=kickoff.DEFAULT_BASE_URL, help="base of the request URL when --kickoff is absent")
    handling = export.add_mutually_exclusive_group()
    handling.add_argument("--lenient", action="store_true",
                          help="ignore unsupported kickoff parameters, naming each on stderr (Prefer: handling=lenient);"
                          " by default they are refused")
    handling.add_argument("--strict", dest="lenient", action="store_false",
                          help="refuse unsupported parameters (Prefer: handling=strict): the default")
    export.add_argument("--schedule", metavar="NAME",
                        help="a named incremental export: _since is this schedule's last completed transactionTime")
    _run_options(export)
    export.set_defaults(handler=commands.export)

    serve = commands_.add_parser(
        "serve", allow_abbrev=False, help="serve FHIR Bulk Data $export over HTTP (kick-off, status, files)",
        description="A long-running FHIR Bulk Data server (IG v3) in front of the engine. The export options "
        "are every kick-off's defaults; options not listed here are Beam pipeline options. See docs/server.md.",
    )
    _job_options(serve)
    _settings_options(serve)
    _run_options(serve)
    server_main.add_arguments(serve)
    serve.set_defaults(handler=server_main.serve)

    status = commands_.add_parser("status", allow_abbrev=False, help="show a job's status and per-type progress",
                                  description="Exits 1 for a job that failed or was cancelled (its status is still shown).")
    _job_options(status, all_owners=True)
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="print the job record as JSON")
    status.set_defaults(handler=commands.status)

    manifest = commands_.add_parser("manifest", allow_abbrev=False, help="print a complete job's manifest JSON")
    _job_options(manifest, all_owners=True)
    manifest.add_argument("job_id")
    manifest.add_argument("--refresh-urls", action="store_true", help="re-sign the manifest's GCS URLs from now")
    manifest.add_argument("--page", type=_positive, metavar="N",
                          help="page N of an allowPartialManifests export's manifest (ready while it runs)")
    _url_options(manifest)
    manifest.set_defaults(handler=commands.manifest)

    listing = commands_.add_parser("list", allow_abbrev=False, help="list active jobs (--all: every job)")
    _job_options(listing, all_owners=True)
    listing.add_argument("--all", action="store_true", help="include finished jobs")
    listing.set_defaults(handler=commands.list_jobs)

    cancel = commands_.add_parser("cancel", allow_abbrev=False, help="cancel an accepted or running job")
    _job_options(cancel, all_owners=True)
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=commands.cancel)

    delete = commands_.add_parser("delete", allow_abbrev=False, help="delete a job's output and records")
    _job_options(delete, all_owners=True)
    delete.add_argument("job_id")
    delete.set_defaults(handler=commands.delete)

    cleanup = commands_.add_parser(
        "cleanup", allow_abbrev=False, help="delete finished jobs older than --ttl, of the tenant and owner",
        description="Deletes the output and records of complete, failed and cancelled jobs that ended "
        "more than --ttl ago, in bounded batches: those of --tenant (default: default) and --owner (none: "
        "jobs without an owner). --all-tenants and --all-owners widen the sweep. Safe to run from a scheduler.",
    )
    _job_options(cleanup, all_owners=True, all_tenants=True)
    cleanup.add_argument("--ttl", type=_duration("--ttl"), default="24h", help="e.g. 24h, 90m, 7d (default 24h)")
    cleanup.add_argument("--batch-size", type=_positive, default=DEFAULT_CLEANUP_BATCH,
                         help="jobs claimed per batch (default %(default)s)")
    cleanup.set_defaults(handler=commands.cleanup)

    resume = commands_.add_parser("resume", allow_abbrev=False, help="run again a job whose launcher died")
    _job_options(resume)
    resume.add_argument("job_id")
    _run_options(resume)
    resume.set_defaults(handler=commands.resume)

    clients_cli.add_parser(commands_, _store_options)

    sample = commands_.add_parser("sample-data", allow_abbrev=False, help="write deterministic sample R4 NDJSON")
    sample.add_argument("--patients", type=_positive, default=100)
    sample.add_argument("--out", required=True)
    sample.add_argument("--seed", type=int, default=42)
    sample.set_defaults(handler=commands.sample_data)
    return parser


def _settings_options(parser: argparse.ArgumentParser) -> None:
    """Where an export reads and writes, and its limits: `ExportSettings`, for `export` and `serve`."""
    parser.add_argument("--source", required=True, help="NDJSON, Bundle, Avro or Parquet files (a file, glob or"
                        " folder), or a PostgreSQL table: postgresql://user@host:port/db?table=NAME[&history=true]")
    parser.add_argument("--output", default="exports", help="root output folder (default ./exports)")
    parser.add_argument(
        "--source-format", default=DEFAULTS["source_format"], choices=SOURCE_FORMATS,
        help="auto: by file name, then by content (default)",
    )
    parser.add_argument("--max-lines-per-part", type=_positive, default=DEFAULTS["max_lines_per_part"], help="default %(default)s")
    parser.add_argument("--max-bytes-per-part", type=_positive, default=DEFAULTS["max_bytes_per_part"], help="default %(default)s")
    parser.add_argument("--chunk-bytes", type=_positive, default=DEFAULTS["chunk_bytes"], help="NDJSON bytes per work item (default %(default)s)")
    parser.add_argument(
        "--max-side-input-patients", type=_positive, default=DEFAULTS["max_side_input_patients"],
        help="Patient/Group exports: most patients kept in memory; more are joined by key (default %(default)s)",
    )
    parser.add_argument(
        "--include-referenced", default=DEFAULTS["include_referenced"], metavar="TYPES",
        help="Patient/Group exports: add these types outside the compartment (e.g. Organization,Practitioner), "
        "only the resources that exported ones reference",
    )
    parser.add_argument(
        "--exclude-missing-last-updated",
        dest="include_missing_last_updated",
        action="store_false",
        help="with _since/_until, drop resources that have no meta.lastUpdated (default: export them)",
    )
    parser.add_argument("--signed-urls", action="store_true",
                        help="gs:// output: V4 signed URLs in the manifest (requiresAccessToken false)")
    _url_options(parser)


def _store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help="SQLite job store and audit log folder (default ./.bulk-export)")
    parser.add_argument("--job-store", metavar="URL",
                        help="a shared job store instead of the SQLite one: postgresql://user@host:port/db")


def _job_options(parser: argparse.ArgumentParser, all_owners: bool = False, all_tenants: bool = False) -> None:
    _store_options(parser)
    tenants = parser.add_mutually_exclusive_group() if all_tenants else parser
    tenants.add_argument("--tenant", default="default", help="tenant; namespaces jobs and output folders (default: default)")
    if all_tenants:
        tenants.add_argument("--all-tenants", action="store_true", help="operator: every tenant's jobs")
    owners = parser.add_mutually_exclusive_group() if all_owners else parser
    owners.add_argument("--owner", help="owner subject; only this owner's jobs are visible (none given: only jobs"
                        " recorded without an owner)")
    if all_owners:
        owners.add_argument("--all-owners", action="store_true",
                            help="operator: every owner's jobs; audited (an operator-access event, or for cleanup"
                            " the sweep named in each job's cleanup event)")


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
