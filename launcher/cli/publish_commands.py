"""`bulk-export publish NAME` and `bulk-export pull URL --into DIR`: Bulk Publish (docs/publish.md).

`publish` runs one step of a publication (a snapshot, or an incremental update
page) under the publication's lock; a second run waits `--lock-wait`, then is
refused with exit 3. `publish NAME --cleanup` only sweeps files past the grace
period. `pull` is the reference consumer. `publish NAME --config FILE` reads the options from a
JSON object whose keys are the flags without `--` (`with_config`); flags given too override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import signal
import threading
from typing import Any, Callable

import orjson

from launcher.kickoff import parser as kickoff

PUBLISH_HELP = "publish a dataset as a Bulk Publish manifest chain (one run: a snapshot or an update)"


def add_parsers(commands, job_options, settings_arguments, run_options, duration, positive, size) -> None:
    """Adds `publish` and `pull` to `commands`, with the CLI's shared option helpers."""
    publish_ = commands.add_parser(
        "publish", allow_abbrev=False, help=PUBLISH_HELP,
        description="Runs one step of publication NAME: the first run (and --snapshot, and every "
        "--snapshot-every updates) writes a snapshot root and a #pending stub; later runs export what changed "
        "since the last one and link it as a new page. Options not listed are Beam pipeline options.")
    job_options(publish_)
    settings_arguments(publish_)
    run_options(publish_)
    publish_.add_argument("name", help="the publication's name (its folder: OUTPUT/TENANT/publish/NAME)")
    publish_.add_argument("--kickoff", help="the system-level $export URL it publishes, e.g. with _type,"
                          " _typeFilter, _elements (default: every type)")
    publish_.add_argument("--public-url", help="the URL the publication's folder is served at, e.g."
                          " https://cdn.example.org/directory (default: its file:// URL)")
    publish_.add_argument("--update-cadence", metavar="DURATION",
                          help="the manifests' updateCadence, an ISO 8601 duration such as P1D or PT1H")
    publish_.add_argument("--grace", type=duration("--grace"), default="24h",
                          help="how long a file no live page lists stays available (default 24h)")
    publish_.add_argument("--snapshot-every", type=positive, metavar="N",
                          help="write a fresh snapshot (and close the chain) after N updates")
    publish_.add_argument("--snapshot-after", type=size("--snapshot-after"), metavar="SIZE",
                          help="write a fresh snapshot (and close the chain) once the update pages' files exceed"
                          " SIZE in total, e.g. 500MB")
    publish_.add_argument("--snapshot", action="store_true", help="write a fresh snapshot now; close the chain")
    publish_.add_argument("--page-files", type=positive, default=1000,
                          help="files per manifest page (default %(default)s)")
    publish_.add_argument("--requires-access-token", action="store_true",
                          help="the manifests say requiresAccessToken: true (a static host that checks tokens)")
    publish_.add_argument("--lock-wait", type=duration("--lock-wait"), default="5s",
                          help="how long to wait for a run of the same publication to end (default 5s)")
    publish_.add_argument("--lock-stale", type=duration("--lock-stale"), default="6h",
                          help="gs:// only: a lock older than this is taken to be a dead run's and taken over;"
                          " set it above the longest run (default 6h)")
    publish_.add_argument("--cleanup", action="store_true", help="only remove files past the grace period")
    publish_.add_argument("--config", metavar="FILE", help="a JSON object of options: each key a flag without"
                          " --, e.g. {\"source\": \"records/\", \"snapshot-every\": 30}; flags given too win")
    publish_.set_defaults(handler=publish)

    pull_ = commands.add_parser(
        "pull", allow_abbrev=False, help="follow a Bulk Publish publication into a local NDJSON dataset",
        description="The reference consumer: reads URL (a [base]/$bulk-publish URL, a file:// URL or a "
        "publication folder), applies each page into DIR/<Type>.ndjson, then polls for updates.")
    pull_.add_argument("url")
    pull_.add_argument("--into", required=True, metavar="DIR", help="the local dataset's folder")
    pull_.add_argument("--once", action="store_true", help="stop at the first stop where nothing new is ready")
    pull_.add_argument("--interval", type=duration("--interval"), help="seconds between polls (default: the"
                       " manifest's updateCadence, else 60 s)")
    pull_.add_argument("--token", help="a bearer token sent with every request (requiresAccessToken)")
    pull_.add_argument("--retry-delay", type=duration("--retry-delay"), default="1s",
                       help="the first wait before a 5xx or failed GET is tried again; it doubles each time, up to"
                       " the polling interval (default 1s)")
    pull_.add_argument("--max-retries", type=positive, metavar="N",
                       help="give up (exit 4) after N retries of one GET (default: retry until it answers)")
    pull_.set_defaults(handler=pull)


def publish(args: argparse.Namespace, beam_args: list[str]) -> int:
    from launcher.publish.folder import open_publication
    from launcher.publish.runs import Publication, check_request
    from launcher.publish.runs import publish as run

    folder = open_publication(args.output, args.tenant, args.name, args.public_url, args.lock_stale)
    if args.cleanup:
        from launcher.publish.cleanup import sweep

        with folder.lock(args.lock_wait):
            removed = sweep(folder, args.grace)
        print(f"removed {len(removed)} file(s) past the grace period")
        return 0
    request = kickoff.parse_get(args.kickoff or kickoff.system_url(kickoff.DEFAULT_BASE_URL))
    publication = Publication(args.name, check_request(request), args.update_cadence, args.requires_access_token,
                              args.snapshot_every, args.snapshot_after, args.page_files, args.grace)
    print(run(folder, publication, _exporter(args, beam_args), args.snapshot, args.lock_wait))
    return 0


def with_config(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`argv` with a `publish ... --config FILE`'s options put before the flags given (which so win).
    Each key is a flag of `parser` without `--`: a value for an option, true or false for a switch;
    an unknown key is a usage error naming it (and what it may have meant)."""
    command = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if command is None or argv[command] != "publish":
        return argv
    rest, path = [], None
    tokens = iter(argv[command + 1:])
    for arg in tokens:
        if arg == "--config":
            path = next(tokens, None)
            if path is None:
                parser.error("argument --config: expected one argument")
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if path is None:
        return argv
    return argv[:command + 1] + _config_arguments(path, parser) + rest


def _config_arguments(path: str, parser: argparse.ArgumentParser) -> list[str]:
    try:
        with open(path, "rb") as f:
            config = orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError) as exc:
        parser.error(f"--config {path}: not a readable JSON file ({exc})")
    if not isinstance(config, dict):
        parser.error(f"--config {path}: not a JSON object of options")
    flags = {opt[2:]: action for action in parser._actions for opt in action.option_strings
             if opt.startswith("--") and opt not in ("--help", "--config")}
    arguments: list[str] = []
    for key, value in config.items():
        action = flags.get(key)
        if action is None:
            near = difflib.get_close_matches(str(key), flags, n=1)
            parser.error(f"--config {path}: unknown key {key!r}" + (f"; did you mean {near[0]!r}?" if near else ""))
        arguments += _tokens(path, key, value, action, parser)
    return arguments


def _tokens(path: str, key: str, value: Any, action: argparse.Action, parser: argparse.ArgumentParser) -> list[str]:
    """The command-line form of one configured option."""
    flag = "--" + key
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            parser.error(f"--config {path}: {key!r} is a switch: true or false, not {value!r}")
        return [flag] if value else []
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [flag, str(value)]
    parser.error(f"--config {path}: {key!r} takes a string or a number, not {value!r}")
    raise AssertionError("unreachable")


def _exporter(args: argparse.Namespace, beam_args: list[str]):
    """The export one run makes: an ordinary recorded job, run and watched here, its output in `work`."""
    from launcher.cli.progress import ProgressDisplay
    from launcher.core.audit import AuditLog
    from launcher.jobs.fork_server import start_fork_server
    from launcher.jobs.process import RunControl
    from launcher.publish.runs import Exported
    from launcher.stores import open_store
    from pipelines.settings import ExportSettings

    start_fork_server()  # imports Beam in the pipeline's process while this one goes on
    store = open_store(args.job_store or args.state_dir)
    control = RunControl(AuditLog(args.state_dir), args.max_active_per_tenant, args.lease)
    settings = ExportSettings.from_namespace(args)

    def export(request, work: str) -> Exported:
        from launcher.jobs.attempts import JobStart, start_export

        job_settings = dataclasses.replace(settings, output=work, file_url_base="")
        with ProgressDisplay(quiet=args.quiet) as display:
            record = start_export(JobStart(store, request, job_settings, args.tenant, args.owner, tuple(beam_args)),
                                  dataclasses.replace(control, on_progress=display))
            manifest = store.manifest(args.tenant, record.job_id, args.owner)
            display.finish(record, len(manifest.output))
        return Exported(record.job_id, record.transaction_time, record.output_dir, manifest)

    return export


def pull(args: argparse.Namespace, _: list[str]) -> int:
    from launcher.cli.progress import PullDisplay
    from launcher.publish.consumer import Consumer, PullStopped, Reader

    with PullDisplay(quiet=args.quiet) as display:
        reader = Reader(token=args.token, retries=args.max_retries, first_delay_s=args.retry_delay, say=display.say)
        consumer = Consumer(args.url, args.into, reader, display.say, args.interval, display.applied)
        stop = _stop_on_signals(consumer.stopping)
        try:
            consumer.run(once=args.once)
        except PullStopped:
            pass
        finally:
            stop()
    total = sum(len(v) for v in consumer.dataset.resources.values())
    print(f"{total} resource(s) in {args.into}, as of {consumer.state.get('transactionTime')}")
    return 0


def _stop_on_signals(stopping) -> Callable[[], None]:
    """Sets `stopping` on SIGTERM or SIGINT (in the main thread): the pull ends at its next wait, exit 0.
    Returns what puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
