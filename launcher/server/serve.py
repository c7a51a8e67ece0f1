"""`bulk-export serve`: builds the server's configuration from the command line and runs it on uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import socket

from launcher.server.config import AUTH_MODES
from launcher.server.logs import LOG_FORMATS
from transforms.errors import CannotListen, ExportError

ADMIN_TOKEN_ENV = "BULK_EXPORT_ADMIN_TOKEN"
_BACKLOG = 2048  # uvicorn's default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve command's own flags (the export defaults and job options are added by the CLI)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default %(default)s)")
    parser.add_argument("--base-url", dest="public_url",
                        help="the public URL clients reach, e.g. https://bulk.example.org (behind a proxy); "
                        "default http://HOST:PORT. [base] is BASE-URL/fhir")
    parser.add_argument("--auth", choices=AUTH_MODES,
                        help="smart: SMART Backend Services tokens (the default once a client is registered with"
                        " `bulk-export clients add`); none: no access token, for trials only")
    parser.add_argument("--cleanup-ttl", dest="cleanup_ttl", default="24h",
                        help="how long a finished job's files are kept, as its status's Expires says (default 24h)")
    parser.add_argument("--maintenance-interval", dest="maintenance_interval", default="30s",
                        help="how often jobs whose lease lapsed are ended and expired jobs removed (default 30s)")
    parser.add_argument("--keep-alive", dest="keep_alive", default="75s",
                        help="how long an idle client connection is kept open; longer than a client's or a proxy's"
                        " own idle limit, so the server never closes a connection as the client reuses it"
                        " (default 75s)")
    parser.add_argument("--worker-budget", dest="worker_budget", type=int, metavar="N",
                        help="local runner processes shared by all running exports: each takes the forked workers"
                        " its source's size asks for, within what is free, or else runs in one process (default:"
                        " this machine's cores)")
    parser.add_argument("--manifest-page-files", dest="manifest_page_files", type=int, default=1000,
                        help="files per manifest page of an allowPartialManifests export (default %(default)s)")
    parser.add_argument("--read-index-interval", dest="read_index_interval", default="10s",
                        help="how often REST reads and Group searches list the source again and index what was"
                        " added or changed (default 10s)")
    parser.add_argument("--log-format", dest="log_format", choices=LOG_FORMATS, default="text",
                        help="text lines, or one JSON object per line for log shippers (default %(default)s)")
    parser.add_argument("--admin-token", dest="admin_token", default=os.environ.get(ADMIN_TOKEN_ENV),
                        help="the bearer token (16+ characters) of the operator page at / and of /metrics;"
                        f" also read from ${ADMIN_TOKEN_ENV}, which `ps` does not show. Without it, only"
                        " loopback clients of an --auth none server see them")


def default_auth(store_url: str) -> str:
    """`smart` once any client is registered in the store, else `none`."""
    from launcher.stores import open_store

    return "smart" if open_store(store_url).clients() else "none"


def serve(args: argparse.Namespace, beam_args: list[str]) -> int:
    import uvicorn

    from launcher.core.durations import parse_duration
    from launcher.core.names import check_locations
    from launcher.server.app import create_app
    from launcher.server.config import ServerConfig
    from launcher.server.logs import configure_logging
    from pipelines.settings import ExportSettings

    config = ServerConfig(
        settings=ExportSettings.from_namespace(args),
        state_dir=args.state_dir,
        base_url=args.public_url or f"http://{args.host}:{args.port}",
        job_store=args.job_store,
        tenant=args.tenant,
        owner=args.owner,
        auth=args.auth or default_auth(args.job_store or args.state_dir),
        max_active=args.max_active_per_tenant,
        worker_budget=args.worker_budget,
        lease_s=args.lease,
        beam_args=tuple(beam_args),
        cleanup_ttl_s=parse_duration(args.cleanup_ttl, "--cleanup-ttl"),
        maintenance_every_s=parse_duration(args.maintenance_interval, "--maintenance-interval"),
        manifest_page_files=args.manifest_page_files,
        read_index_interval_s=parse_duration(args.read_index_interval, "--read-index-interval"),
        admin_token=args.admin_token,
    )
    check_locations(config.settings)
    if beam_args:
        from launcher.jobs.attempts import check_runner_options

        check_runner_options(beam_args)
    keep_alive_s = parse_duration(args.keep_alive, "--keep-alive")
    verbosity = -1 if getattr(args, "quiet", False) else int(getattr(args, "verbose", 0) or 0)
    uvicorn_level = configure_logging(args.log_format, verbosity)
    listening = _listen(args.host, args.port)
    print(f"serving FHIR Bulk Data $export at {config.fhir_base} (auth: {config.auth})", flush=True)
    who = "with --admin-token" if config.admin_token else "loopback only" if config.auth == "none" else "off"
    print(f"operator page at {config.base_url}/ and metrics at {config.base_url}/metrics ({who})", flush=True)
    if config.auth == "none":  # a log record, so it comes in --log-format's form too
        logging.getLogger(__name__).warning("--auth none: anyone who can reach this server can export and"
                                            " download its data")
    # Our access log replaces uvicorn's; `log_config=None` keeps uvicorn's records in our handler and format.
    # httptools parses HTTP in C (a status answer measured 2.6-3.2 ms of CPU instead of 3.3-3.5 with h11);
    # uvloop was measured no faster, so the loop stays asyncio's, whatever is installed.
    server = uvicorn.Server(uvicorn.Config(create_app(config), host=args.host, port=args.port, log_config=None,
                                           log_level=uvicorn_level, access_log=False, http="httptools",
                                           loop="asyncio", timeout_keep_alive=keep_alive_s))
    try:
        server.run(sockets=[listening])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down, and raises it again once done
        pass
    if not server.started:
        raise ExportError("the server did not start (its log above says why)")
    return 0


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound as uvicorn binds it; `CannotListen` (its own exit code) if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
        listening.listen(_BACKLOG)
    except OSError as exc:
        listening.close()
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return listening
