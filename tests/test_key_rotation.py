"""Rotating and revoking the access-token signing key, seen by two running servers sharing one store.

`bulk-export keys rotate --revoke-now` makes both instances refuse the old
tokens within seconds and sign new ones with the new key; with `--grace` the
old tokens keep working until the grace ends; a `server_keys` row deleted by
hand revokes its tokens the same way.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import httpx
import jwt

from tests.server_process import FHIR_HEADERS, ROOT, serve
from tests.smart_client import ClientKey, assertion, register, token_form, write_jwks

SEEN_WITHIN_S = 5.0  # a rotation reaches every instance this fast


def _keys(state, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "launcher", "keys", *args, "--state-dir", str(state)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _active_kid(state) -> str:
    rows = [json.loads(line) for line in _keys(state, "list", "--json").splitlines()]
    return next(row["kid"] for row in rows if row["state"] == "active")


def _accepted(server, token: str) -> bool:
    """Whether `server` takes `token`: a status poll of an unknown job is 404 with a valid token, else 401."""
    answer = httpx.get(server.fhir + "/bulk-status/no-such-job", timeout=30,
                       headers={**FHIR_HEADERS, "Authorization": f"Bearer {token}"})
    assert answer.status_code in (401, 404), answer.text
    return answer.status_code == 404


def _refused_everywhere_within(servers, token: str, limit_s: float) -> float:
    """Seconds until every server refuses `token`; fails after `limit_s`."""
    start = time.monotonic()
    while any(_accepted(server, token) for server in servers):
        assert time.monotonic() - start < limit_s, "a revoked key still verifies"
        time.sleep(0.1)
    return time.monotonic() - start


def _kid(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def test_rotation_and_revocation_reach_two_running_servers(tmp_path, sample_dir):
    key = ClientKey("ES384")
    state = tmp_path / "state"
    register(state, "lb", "--jwks", write_jwks(tmp_path, key), "--tenant", "acme")
    public = "https://bulk.example.org"
    token_url = public + "/auth/token"
    with serve(sample_dir, tmp_path / "out", state, "--base-url", public) as one, \
            serve(sample_dir, tmp_path / "out", state, "--base-url", public) as two:
        servers = (one, two)

        def token(server) -> str:
            answer = httpx.post(server.base_url + "/auth/token", data=token_form(assertion(key, "lb", token_url)),
                                timeout=30)
            assert answer.status_code == 200, answer.text
            return answer.json()["access_token"]

        first = token(one)
        assert _kid(first) == _active_kid(state) and _accepted(two, first)

        # --revoke-now: the old token fails on both within seconds; both sign with the new key.
        _keys(state, "rotate", "--revoke-now")
        revoked_kid, new_kid = _kid(first), _active_kid(state)
        assert new_kid != revoked_kid
        _refused_everywhere_within(servers, first, SEEN_WITHIN_S)
        second, other = token(one), token(two)
        assert _kid(second) == _kid(other) == new_kid
        assert all(_accepted(server, t) for server in servers for t in (second, other))

        # --grace: the old tokens keep working until it ends, the new key signs at once.
        grace_s = 8
        _keys(state, "rotate", "--grace", f"{grace_s}s")
        rotated_at = time.monotonic()
        third_kid = _active_kid(state)
        time.sleep(SEEN_WITHIN_S - 2)  # both servers have read the rotation
        assert _kid(token(one)) == _kid(token(two)) == third_kid
        assert all(_accepted(server, second) for server in servers)
        time.sleep(max(0.0, grace_s - (time.monotonic() - rotated_at)))
        _refused_everywhere_within(servers, second, SEEN_WITHIN_S)
        assert "retiring" not in _keys(state, "list")

        # A row deleted by hand revokes its key too; the servers make a new one to sign with.
        third = token(two)
        assert _accepted(one, third)
        with sqlite3.connect(state / "jobs.sqlite3") as db:
            db.execute("DELETE FROM server_keys")
        db.close()
        _refused_everywhere_within(servers, third, SEEN_WITHIN_S)
        fourth = token(one)
        assert _kid(fourth) not in (revoked_kid, new_kid, third_kid) and _accepted(two, fourth)
