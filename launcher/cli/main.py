"""The `bulk-export` command line: export, status, manifest, list, cancel, delete,
cleanup, resume, serve, publish, pull, clients, keys, sample-data. The job commands' handlers are in `launcher.cli.commands`.

Exit codes (the same table is in README.md). The codes of the engine's errors are decided in
one place, `transforms/errors.py` (each error class carries its own); 130 and 141 here:

    0    success; `status` of a job that is accepted, in progress or complete
    1    about a job named or run: it failed (`error`) or was cancelled (`export`,
         `resume`, and `status`, which still prints it), it is not found (another
         tenant's or owner's jobs look the same), or the command does not fit it
         (cancelling a complete job, `manifest --refresh-urls` of local output)
    2    refused before any job was touched: a bad kickoff, a bad command line or
         option value (argparse's own errors too); nothing was created or changed
    3    the tenant has `--max-active-per-tenant` jobs already (HTTP 429), or another run of
         the same publication holds it (`publish`); nothing started
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
from typing import Optional, Sequence

from launcher.cli.arguments import UsageError, build_parser
from launcher.cli.publish_commands import with_config
from launcher.core.beam_notice import drop_apitools_notice
from launcher.core.names import check_job_id, check_tenant
from transforms.errors import ExportError, Refused, Unavailable

EXIT_REFUSED, EXIT_STORE = Refused.exit_code, Unavailable.exit_code  # a usage error; an OSError
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141


def main(argv: Optional[Sequence[str]] = None) -> int:
    drop_apitools_notice()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = _parse(argv)
        return _run(args, extra)
    except BrokenPipeError:  # also `--help | head -1`
        return _stdout_closed()


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The parsed arguments; a usage error is reported (as JSON under `--json`) and exits with 2."""
    parser = build_parser()
    try:
        argv = with_config(argv, parser.commands["publish"])  # publish --config FILE: its options first
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in ("export", "serve", "resume", "publish"):  # the commands taking runner options
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args, extra
    except UsageError as exc:
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
    except ExportError as exc:  # its class decides the exit code (transforms/errors.py)
        return _fail(args, exc.exit_code, exc.cli_message(args.verbose))
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
