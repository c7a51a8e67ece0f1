"""The export's error vocabulary: every error a command or a request can end with, and the one place
where each kind is given its exit code, HTTP status and FHIR issue type.

Beam-free and importing nothing of the project, so every room can raise these.
A module's own error subclasses one of them (keeping a builtin base where
callers catch that, e.g. `LookupError`); `launcher.cli.main` turns any of them
into its exit code and one line, the server into an OperationOutcome.
A 5xx error is a failure on the server's side: a client is told only
"internal error" (see `launcher.server.app`).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class ExportError(Exception):
    """Any error of the export engine; a subclass decides its codes."""

    exit_code: int = 1
    http_status: int = 500
    issue_code: str = "exception"  # the OperationOutcome issue type
    cli_prefix: str = ""
    headers: Mapping[str, str] = _NO_HEADERS  # sent with the HTTP answer

    def cli_message(self, verbose: bool = False) -> str:
        """The command line's one-line report of this error."""
        return f"{self.cli_prefix}{self}"


class Refused(ExportError, ValueError):
    """A request, option or setting refused before any job was touched; nothing was created or changed."""

    exit_code, http_status, issue_code, cli_prefix = 2, 400, "invalid", "refused: "


class TooManyActive(ExportError):
    """The tenant already has its maximum of accepted or running jobs; nothing started."""

    exit_code, http_status, issue_code, cli_prefix = 3, 429, "throttled", "refused: "


class Busy(ExportError):
    """Another run holds what this one needs (a publication's lock) longer than it waits; nothing was done."""

    exit_code, http_status, issue_code, cli_prefix = 3, 409, "conflict", "refused: "


class Unauthorized(ExportError):
    """A request without a valid access token; `challenge` is its `WWW-Authenticate` header."""

    exit_code, http_status, issue_code, cli_prefix = 2, 401, "login", "refused: "

    def __init__(self, message: str, challenge: str = ""):
        super().__init__(message)
        if challenge:
            self.headers = MappingProxyType({"WWW-Authenticate": challenge})


class Forbidden(ExportError):
    """A request the caller's access token does not allow."""

    exit_code, http_status, issue_code, cli_prefix = 2, 403, "forbidden", "refused: "


class NotFound(ExportError):
    """No such job or file for this caller (another tenant's or owner's look the same)."""

    exit_code, http_status, issue_code = 1, 404, "not-found"


class JobStateError(ExportError):
    """The job is not in a state that allows what was asked."""


class JobFailed(ExportError):
    """A job ran and did not complete: it failed, was cancelled or was taken over."""


class Unavailable(ExportError):
    """The job store, the state folder or the source cannot be used (unreachable, read-only, missing)."""

    exit_code = 4


class CannotListen(ExportError):
    """`serve` could not listen on its address (in use by another server, or not this machine's); nothing started."""

    exit_code = 5


class EngineLost(JobFailed, RuntimeError):
    """The engine running a job's pipeline (a Dask scheduler) was lost or could not be reached: the job
    ends `error` and may be resumed, on that engine once it is back or on another."""
