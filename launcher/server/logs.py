"""The server's log: one access line per request and one line per job event, as text or as JSON.

An access line names the method, the path, the *names* of the query's
parameters (their values may carry PHI: `_typeFilter=Patient?identifier=...`),
the status, the duration, the client's address and, with `--auth smart`, the
client id. No header is ever logged, so neither a bearer token nor a cookie is.
`--log-format json` writes one JSON object per line, its fields at the top
level, for log shippers.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time
from typing import Any, Optional
from urllib.parse import parse_qsl

import orjson

LOG_FORMATS = ("text", "json")
ACCESS_LOGGER = "launcher.server.access"
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in (getattr(record, "fields", None) or {}).items():
            entry.setdefault(name, value)  # never in place of the four above
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(log_format: str, verbosity: int) -> str:
    """Sends every log record to stderr in `log_format`; returns uvicorn's own log level.

    `verbosity` -1 (`-q`): warnings only. 0: the server's access and job lines (INFO), other
    libraries' warnings (none of Beam's). 1 (`-v`): also uvicorn's INFO and our DEBUG and Beam's warnings. 2 (`-vv`): everything at DEBUG.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT))
    logging.basicConfig(level=logging.DEBUG if verbosity >= 2 else logging.WARNING, handlers=[handler], force=True)
    ours = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}.get(min(verbosity, 1), logging.WARNING)
    logging.getLogger("launcher").setLevel(ours)
    if verbosity < 2:
        # As on the command line: a failed job is its one job line (its reason kept in the store); Beam's
        # own log, tracebacks included, is for -v (its warnings and errors) and -vv (everything).
        logging.getLogger("apache_beam").setLevel(logging.WARNING if verbosity == 1 else logging.CRITICAL)
    return "debug" if verbosity >= 2 else "info" if verbosity == 1 else "warning"


def query_names(query: str) -> list[str]:
    """The names of a query's parameters, each once, in order: never their values."""
    names: list[str] = []
    for name, _ in parse_qsl(query, keep_blank_values=True):
        if name not in names:
            names.append(name)
    return names


class AccessLog:
    """Logs one line per HTTP request once its answer is sent (a pure ASGI middleware)."""

    def __init__(self, app):
        self._app = app
        self._log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]  # what an exception that escapes the app is answered with

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            self._line(scope, status[0], time.perf_counter() - started)

    def _line(self, scope, status: int, seconds: float) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        names = query_names(scope.get("query_string", b"").decode("latin-1"))
        caller = (scope.get("state") or {}).get("caller")  # set by `deps.caller` once a request is authenticated
        client_id: Optional[str] = getattr(caller, "client_id", None)
        address = (scope.get("client") or ("-",))[0]
        fields = {"method": scope["method"], "path": scope["path"], "query_names": names, "status": status,
                  "duration_ms": round(seconds * 1000, 1), "remote": address, "client_id": client_id}
        query = f" query: {','.join(names)}" if names else ""
        client = f" client={client_id}" if client_id else ""
        self._log.info("%s %s %d %.1f ms from %s%s%s", scope["method"], scope["path"], status, seconds * 1000,
                       address, client, query, extra={"fields": fields})
