"""The `bulk-export` command line: export, status, manifest, list, cancel, delete,
cleanup, resume, serve, publish, pull, clients, keys, sample-data. The job commands' handlers are in `launcher.cli.commands`.

Exit codes: README.md's table is the one list of them. The codes of the engine's errors are decided
in one place, `transforms/errors.py` (each error class carries its own); 130 and 141 are here.

Under `--json`, every error is one JSON object on stderr: {"error": "...", "code": N}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import NoReturn, Optional, Sequence

from launcher.jobs.fork_server import start_for_command_line

start_for_command_line(sys.argv)  # before the imports below: Beam's import in the fork server starts sooner

from launcher.cli import usage  # noqa: E402
from launcher.cli.arguments import UsageError, build_parser, verbosity
from launcher.cli.publish_commands import with_config
from launcher.core.beam_notice import before_beam_import
from launcher.core.names import check_job_id, check_tenant
from transforms.errors import ExportError, Refused, Unavailable

EXIT_REFUSED, EXIT_STORE = Refused.exit_code, Unavailable.exit_code  # a usage error; an OSError
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141
OUR_PACKAGES = ("launcher", "pipelines", "transforms")


def main(argv: Optional[Sequence[str]] = None) -> int:
    before_beam_import()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = _parse(argv)
        return _run(args, extra)
    except BrokenPipeError:  # also `--help | head -1`
        return _stdout_closed()


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The parsed arguments; a usage error is reported in one line (as JSON under `--json`) and exits with 2."""
    parser = build_parser()
    try:
        argv = with_config(argv, parser.commands["publish"])  # publish --config FILE: its options first
        args, extra = parser.parse_known_args(argv)
    except UsageError as exc:
        # A typo is reported as such, not as the option it failed to give (`--sourse x`: not "--source is required").
        _usage_exit(argv, exc.parser, _unknown_in_relaxed(parser, exc.parser, argv) or exc.message)
    unknown = usage.unknown_option(args.parser, extra, args.command)
    if unknown:
        _usage_exit(argv, args.parser, unknown)
    level = verbosity(args)
    args.verbose, args.quiet = max(level, 0), level < 0
    return args, extra


def _unknown_in_relaxed(parser: argparse.ArgumentParser, failed: argparse.ArgumentParser,
                        argv: list[str]) -> Optional[str]:
    """The unknown option of a line argparse refused, read again with every argument optional; None if none."""
    usage.relaxed(failed)
    try:
        args, extra = parser.parse_known_args(argv)
    except UsageError:
        return None
    return usage.unknown_option(args.parser, extra, args.command)


def _usage_exit(argv: list[str], parser: argparse.ArgumentParser, message: str) -> NoReturn:
    line = usage.one_line(parser, message)
    if "--json" in argv:
        _print_json_error(line, EXIT_REFUSED)
    else:
        print(line, file=sys.stderr)
    raise SystemExit(EXIT_REFUSED)


def _configure_logging(level: int) -> None:
    """-q: errors only; none: warnings, without Beam's; -v: our log at INFO and Beam's warnings; -vv: everything."""
    logging.basicConfig(level=logging.DEBUG if level >= 2 else logging.ERROR if level < 0 else logging.WARNING)
    if level == 1:
        for ours in OUR_PACKAGES:
            logging.getLogger(ours).setLevel(logging.INFO)
    if level <= 1:
        # A failed job is reported in one line and kept in the store; Beam's own log is for -v, its noise for -vv.
        logging.getLogger("apache_beam").setLevel(logging.WARNING if level == 1 else logging.CRITICAL)
        # A job store's reconnect attempts: the launcher says once that the store is out of reach.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    _configure_logging(args.verbose or -int(args.quiet))
    try:
        if hasattr(args, "tenant"):
            check_tenant(args.tenant)
        if getattr(args, "job_id", None) is not None:
            check_job_id(args.job_id)
        code = args.handler(args, extra)
        sys.stdout.flush()  # here, so a closed pipe is caught now, not at exit
        return code
    except ExportError as exc:  # its class decides the exit code (transforms/errors.py)
        return _fail(args, exc.exit_code, exc.cli_message(bool(args.verbose)))
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


if __name__ == "__main__":
    sys.exit(main())
