"""The error vocabulary: each error the CLI or the server reports decides its exit code and HTTP answer."""

import pytest

from launcher.auth.access_tokens import InvalidToken
from launcher.auth.clients import ClientExists
from launcher.auth.export_scope import ExportForbidden
from launcher.auth.keys import KeysRefused
from launcher.auth.scopes import ScopeRefused
from launcher.jobs.process import ExportFailed, JobCancelled, LeaseLost
from launcher.kickoff.parser import KickoffRefused
from launcher.server.outcomes import FhirError
from launcher.stores import InvalidJobState, JobNotFound, StoreUnavailable, TooManyActiveExports
from pipelines.settings import UnsafeRunnerOptions
from transforms.errors import CannotListen, ExportError, Refused
from transforms.fhir.elements import ElementsRefused
from transforms.fhir.group import GroupRefused
from transforms.fhir.membership import MembershipRefused
from transforms.fhir.search.common import TypeFilterRefused
from transforms.storage.source_files import SourceError

EXIT_CODES = {0, 1, 2, 3, 4, 5, 130, 141}  # README.md's table


@pytest.mark.parametrize("error, exit_code, status, issue, builtin", [
    (KickoffRefused("_type", "x"), 2, 400, "invalid", ValueError),
    (KickoffRefused("kickoff", "x"), 2, 400, "not-supported", ValueError),
    (UnsafeRunnerOptions("x"), 2, 400, "invalid", ValueError),
    (ElementsRefused("x"), 2, 400, "invalid", ValueError),
    (TypeFilterRefused("x"), 2, 400, "invalid", ValueError),
    (GroupRefused("x"), 2, 400, "invalid", ValueError),
    (MembershipRefused("group", "x"), 2, 400, "invalid", ValueError),
    (ScopeRefused("x"), 2, 400, "invalid", ValueError),
    (KeysRefused("x"), 2, 400, "invalid", ValueError),
    (ClientExists("x"), 2, 400, "invalid", ValueError),
    (JobNotFound("x"), 1, 404, "not-found", LookupError),
    (InvalidJobState("x"), 1, 500, "exception", RuntimeError),
    (TooManyActiveExports("x"), 3, 429, "throttled", RuntimeError),
    (StoreUnavailable("x"), 4, 500, "exception", RuntimeError),
    (SourceError("x"), 4, 500, "exception", OSError),
    (ExportFailed("j", "x"), 1, 500, "exception", RuntimeError),
    (JobCancelled("j"), 1, 500, "exception", RuntimeError),
    (LeaseLost("x"), 1, 500, "exception", RuntimeError),
    (ExportForbidden("x"), 2, 403, "forbidden", PermissionError),
    (InvalidToken("x"), 2, 401, "login", Exception),
    (CannotListen("x"), 5, 500, "exception", Exception),
])
def test_each_error_carries_its_codes(error, exit_code, status, issue, builtin):
    assert isinstance(error, ExportError) and isinstance(error, builtin)
    assert (error.exit_code, error.http_status, error.issue_code) == (exit_code, status, issue)
    assert error.exit_code in EXIT_CODES


def test_cli_messages_keep_their_prefixes():
    assert Refused("bad").cli_message() == "refused: bad"
    assert TooManyActiveExports("full").cli_message() == "refused: full"
    assert JobNotFound("job j not found").cli_message() == "job j not found"
    assert ExportFailed("j", "boom").cli_message() == "job j failed: boom (-v shows Beam's log)"
    assert ExportFailed("j", "boom").cli_message(verbose=True) == "job j failed: boom"


def test_a_fhir_error_is_an_answer_of_its_own():
    error = FhirError(413, "too-costly", "too big", {"X": "1"})
    assert isinstance(error, ExportError)
    assert (error.http_status, error.issue_code, str(error), dict(error.headers)) == (413, "too-costly", "too big",
                                                                                        {"X": "1"})
