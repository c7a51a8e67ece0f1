"""The `bulk-export` argument parser: every command, its options and their help texts."""

from __future__ import annotations

import argparse
from typing import Any, Iterable, NoReturn, Optional

from launcher.cli import client_commands as clients_cli
from launcher.cli import commands
from launcher.cli import key_commands as keys_cli
from launcher.cli import publish_commands as publish_cli
from launcher.core.durations import parse_duration, parse_size
from launcher.jobs.lifecycle import DEFAULT_CLEANUP_BATCH
from launcher.jobs.process import DEFAULT_LEASE_S, DEFAULT_MAX_ACTIVE
from launcher.kickoff import parser as kickoff
from launcher.server import serve as server_main
from pipelines.declarations import MISSING, Option, declared
from pipelines.settings import ExportSettings

DEFAULT_STATE_DIR = ".bulk-export"


class UsageError(Exception):
    """A bad command line; `main` reports it and exits with 2."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser, self.message = parser, message


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors `main` reports (as JSON under `--json`) before exiting with 2.

    Every command and subcommand takes `-v` and `-q`, so they work anywhere on the line. Each parser counts
    them under a name of its own (argparse copies a subcommand's values over its parent's, so a shared name
    would drop the parent's), and `verbosity` adds them up.
    `args.parser` is the innermost parser that read the line, for the messages that name it.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        loudness = self.add_argument_group("output")
        loudness.add_argument("-v", "--verbose", action="count", dest=_VERBOSE + self.prog, default=argparse.SUPPRESS,
                              help="our log at INFO and Beam's warnings; -vv: every log, Beam's too")
        loudness.add_argument("-q", "--quiet", action="count", dest=_QUIET + self.prog, default=argparse.SUPPRESS,
                              help="errors only")
        self.set_defaults(parser=self)

    commands: dict[str, argparse.ArgumentParser]  # the top-level parser's: each command's parser

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


_VERBOSE, _QUIET = "verbose:", "quiet:"


def verbosity(args: argparse.Namespace) -> int:
    """How much to log: the number of `-v` less the number of `-q`, wherever they were given."""
    counts = vars(args)
    louder = sum(n for key, n in counts.items() if key.startswith(_VERBOSE))
    return louder - sum(n for key, n in counts.items() if key.startswith(_QUIET))


def build_parser() -> _Parser:
    parser = _Parser(prog="bulk-export", description="FHIR Bulk Data $export on Apache Beam.")
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
    add_settings_arguments(export)
    export.add_argument("--kickoff", help="the $export URL, GET form, e.g. 'https://x/fhir/$export?_type=Patient'")
    export.add_argument("--parameters", help="a FHIR Parameters JSON file: the POST form")
    export.add_argument("--base-url", default=kickoff.DEFAULT_BASE_URL, help="base of the request URL when --kickoff is absent")
    handling = export.add_mutually_exclusive_group()
    handling.add_argument("--lenient", action="store_true",
                          help="ignore unsupported kickoff parameters and the _typeFilter queries or _elements that"
                          " cannot be applied (never narrowing the export), naming each on stderr and in the"
                          " manifest's error[] (Prefer: handling=lenient); by default they are refused")
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
    add_settings_arguments(serve)
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
    add_settings_arguments(manifest, ("url_ttl", "signing_key"))
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

    resume = commands_.add_parser("resume", allow_abbrev=False,
                                  help="run again a job whose launcher died or whose engine was lost")
    _job_options(resume)
    resume.add_argument("job_id")
    _run_options(resume)
    resume.set_defaults(handler=commands.resume)

    publish_cli.add_parsers(commands_, _job_options, add_settings_arguments, _run_options, _duration, _positive, _size)
    clients_cli.add_parser(commands_, _store_options)
    keys_cli.add_parser(commands_, _store_options, _duration)

    warm = commands_.add_parser(
        "warm", allow_abbrev=False, help="keep a process with Beam imported, that later exports start from",
        description="Starts this user's warm process for this interpreter, code and environment, and returns once "
        "it is ready: `export` and `resume` fork their pipeline from it instead of importing Beam (about 1.3 s). "
        "It stops after --idle without an export, or with --stop. See docs/architecture.md#the-warm-process.")
    warm.add_argument("--idle", type=_duration("--idle"), default="30m",
                      help="stop after this long without an export (default %(default)s)")
    warm_actions = warm.add_mutually_exclusive_group()
    warm_actions.add_argument("--stop", action="store_true", help="stop it (running exports end first)")
    warm_actions.add_argument("--status", action="store_true", help="say whether one runs; exit 1 if not")
    warm.set_defaults(handler=commands.warm)

    sample = commands_.add_parser("sample-data", allow_abbrev=False, help="write deterministic sample R4 NDJSON")
    sample.add_argument("--patients", type=_positive, default=100)
    sample.add_argument("--out", required=True)
    sample.add_argument("--seed", type=int, default=42)
    sample.set_defaults(handler=commands.sample_data)
    parser.commands = commands_.choices
    return parser


def add_settings_arguments(parser: argparse.ArgumentParser, names: Optional[Iterable[str]] = None) -> None:
    """The `ExportSettings` flags (those named, else all the CLI has), made from their declarations."""
    chosen = set(names) if names is not None else None
    for spec in declared(ExportSettings):
        if spec.cli and (chosen is None or spec.name in chosen):
            parser.add_argument(spec.cli_flag, dest=spec.name, help=spec.cli_help_text, **_cli_kwargs(spec))


def _cli_kwargs(spec: Option) -> dict[str, Any]:
    if spec.type is bool:
        return {"action": "store_false" if spec.default else "store_true"}
    default = spec.on_cli_default
    kwargs: dict[str, Any] = {"required": True} if default is MISSING else {"default": default}
    kwargs["metavar"] = spec.metavar
    if spec.choices:
        kwargs["choices"] = spec.choices
    if spec.duration:
        kwargs["type"] = _seconds(spec.cli_flag)
    elif spec.positive:
        kwargs["type"] = _positive
    elif spec.type is int:
        kwargs["type"] = _not_negative
    return kwargs


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


def _seconds(name: str):
    parse = _duration(name)
    return lambda text: int(parse(text))


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-active-per-tenant", type=_positive, default=DEFAULT_MAX_ACTIVE,
                        help="refuse a kickoff when the tenant has this many accepted or running jobs (default %(default)s)")
    parser.add_argument("--lease", type=_duration("--lease"), default=f"{DEFAULT_LEASE_S:g}s",
                        help="how long the job outlives this launcher if it dies; renewed while it runs (default %(default)s)")


def _parsed_by(parse_value):
    """An argparse `type` for option `name` that `parse_value(text, name)` reads, its ValueError a usage error."""
    def for_option(name: str):
        def parse(text: str):
            try:
                return parse_value(text, name)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        return parse

    return for_option


_duration = _parsed_by(parse_duration)  # `--lease 90s`: seconds
_size = _parsed_by(parse_size)  # `--snapshot-after 500MB`: bytes


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expects a positive integer, got {text!r}")
    return value


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or a positive integer")
    return value
