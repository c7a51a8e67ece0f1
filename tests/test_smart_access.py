"""The resource server under `--auth smart`, from a client's side over real HTTP.

Register -> token -> kick-off -> poll -> download -> delete at all three
levels; a missing, forged or expired access token is 401 with a challenge;
a token's scopes bound what a kick-off exports and which files download;
another tenant's or client's jobs are 404; two server instances sharing a
store accept each other's tokens and refuse each other's replays.
"""

from __future__ import annotations

import email.utils
import json
import sqlite3
import subprocess
import sys
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.helpers import _levels
from tests.server_process import FHIR_HEADERS, ROOT, poll, serve
from tests.smart_client import ClientKey, assertion, audit_events, get_token, register, token_form, write_jwks

CLIENTS = {"a1": "acme", "a2": "acme", "g1": "globex"}


class Setup:
    def __init__(self, server, keys):
        self.server, self.keys = server, keys
        self.token_url = server.base_url + "/auth/token"

    def client(self, client_id: str, scope: str = "system/*.read") -> httpx.Client:
        """An HTTP client carrying a fresh access token of `client_id`."""
        with httpx.Client(timeout=30) as plain:
            token = get_token(plain, self.token_url, self.keys[client_id], client_id, scope)
        return httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("access")
    keys = {client_id: ClientKey("RS384" if n % 2 else "ES384") for n, client_id in enumerate(CLIENTS)}
    for client_id, tenant in CLIENTS.items():
        register(root / "state", client_id, "--jwks", write_jwks(root, keys[client_id]), "--tenant", tenant)
    with serve(sample_dir, root / "out", root / "state") as server:
        yield Setup(server, keys)


def _outcome(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def _export(client: httpx.Client, url: str, method: str = "GET", body: dict | None = None) -> dict:
    if method == "GET":
        response = client.get(url, headers=FHIR_HEADERS)
    else:
        response = client.post(url, json=body, headers={**FHIR_HEADERS, "Content-Type": "application/fhir+json"})
    assert response.status_code == 202, response.text
    status_url = response.headers["Content-Location"]
    answer = poll(client, status_url)
    assert answer.status_code == 200, answer.text
    return {"status_url": status_url, **answer.json()}


@pytest.mark.parametrize("level", [0, 1, 2], ids=["system", "patient", "group"])
def test_register_token_kick_off_poll_download_delete(setup, sample_dir, level):
    method, path, body = _levels(sample_dir)[level]
    with setup.client("a1") as client:
        manifest = _export(client, setup.server.fhir + path, method, body)
        assert manifest["requiresAccessToken"] is True and manifest["output"]
        for entry in manifest["output"]:
            lines = client.get(entry["url"]).text.splitlines()
            assert len(lines) == entry["count"]
            assert {json.loads(line)["resourceType"] for line in lines} == {entry["type"]}
        assert client.delete(manifest["status_url"]).status_code == 202
        _outcome(client.get(manifest["status_url"]), 404)
        _outcome(client.get(manifest["output"][0]["url"]), 404)


def test_every_protected_endpoint_needs_a_bearer_token(setup):
    with setup.client("a1") as client:
        manifest = _export(client, setup.server.fhir + "/$export?_type=Patient")
    for method, url in [("GET", setup.server.fhir + "/$export"), ("GET", manifest["status_url"]),
                        ("DELETE", manifest["status_url"]), ("GET", manifest["output"][0]["url"])]:
        for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic YTpi"}):
            response = httpx.request(method, url, headers={**FHIR_HEADERS, **headers}, timeout=30)
            _outcome(response, 401)
            assert response.headers["www-authenticate"].startswith("Bearer realm=")
    assert httpx.get(manifest["status_url"], timeout=30).headers  # still there: nothing was deleted
    refusals = [e for e in audit_events(setup.server.state_dir, "default")
                if any(d["valueString"] == "access-refused" for d in e["entity"][0]["detail"])]
    assert len(refusals) >= 12


def _token_signed_by_the_server(setup, **claims) -> str:
    """An access token signed with the server's own key, read from its store (as an insider could)."""
    db = sqlite3.connect(setup.server.state_dir / "jobs.sqlite3")
    pem = db.execute("SELECT private_pem FROM server_keys").fetchone()[0]
    db.close()
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    now = int(time.time())
    body = {"iss": setup.server.base_url + "/auth", "aud": setup.server.fhir, "sub": "a1", "tenant": "acme",
            "scope": "system/*.read", "iat": now - 600, "exp": now - 300, "jti": "x", **claims}
    return jwt.encode(body, key, algorithm="ES256")


def test_an_expired_or_forged_access_token_is_401(setup):
    expired = _token_signed_by_the_server(setup)
    response = httpx.get(setup.server.fhir + "/$export", headers={**FHIR_HEADERS, "Authorization": f"Bearer {expired}"},
                         timeout=30)
    assert "expired" in _outcome(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    other_key = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode({"iss": setup.server.base_url + "/auth", "aud": setup.server.fhir, "sub": "a1",
                         "tenant": "acme", "scope": "system/*.read", "iat": int(time.time()),
                         "exp": int(time.time()) + 60}, other_key, algorithm="ES256")
    _outcome(httpx.get(setup.server.fhir + "/$export", headers={**FHIR_HEADERS, "Authorization": f"Bearer {forged}"},
                       timeout=30), 401)
    # A genuine token, valid but for a client claiming another tenant than its registration's.
    moved = _token_signed_by_the_server(setup, tenant="globex", exp=int(time.time()) + 60)
    _outcome(httpx.get(setup.server.fhir + "/$export", headers={**FHIR_HEADERS, "Authorization": f"Bearer {moved}"},
                       timeout=30), 401)


def test_a_scope_for_another_type_cannot_download_a_file(setup):
    with setup.client("a1") as client:
        manifest = _export(client, setup.server.fhir + "/$export?_type=Patient,Observation")
    files = {entry["type"]: entry["url"] for entry in manifest["output"]}
    with setup.client("a1", "system/Observation.read") as narrow:
        assert "Patient" in _outcome(narrow.get(files["Patient"]), 403)
        assert narrow.get(files["Observation"]).status_code == 200
        assert narrow.get(manifest["status_url"]).status_code == 200  # its job, its manifest


def test_head_on_a_file_answers_like_get_without_a_body_under_the_same_auth(setup):
    with setup.client("a1") as client:
        manifest = _export(client, setup.server.fhir + "/$export?_type=Patient,Observation")
        entry = next(e for e in manifest["output"] if e["type"] == "Patient")
        got = client.get(entry["url"], headers={"Accept-Encoding": "identity"})
        head = client.head(entry["url"], headers={"Accept-Encoding": "gzip"})
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert int(head.headers["content-length"]) == len(got.content) > 0
    assert httpx.head(entry["url"], timeout=30).status_code == 401
    with setup.client("a1", "system/Observation.read") as narrow:
        assert narrow.head(entry["url"]).status_code == 403
    with setup.client("a2") as other:
        assert other.head(entry["url"]).status_code == 404


def test_a_file_of_patient_blocks_needs_a_token_covering_every_type_of_the_export(setup):
    with setup.client("a1") as client:
        manifest = _export(client, setup.server.fhir + "/Patient/$export?_type=Patient,Observation"
                                                       "&organizeOutputBy=Patient")
    assert manifest["outputOrganizedBy"] == "Patient" and all("type" not in e for e in manifest["output"])
    url = manifest["output"][0]["url"]
    with setup.client("a1", "system/Observation.read") as narrow:
        assert "every type of this export" in _outcome(narrow.get(url), 403)
    with setup.client("a1", "system/Patient.read system/Observation.read") as both:
        lines = both.get(url).content.splitlines()
        assert len(lines) == manifest["output"][0]["count"] and b'"name":"header"' in lines[0]


def test_a_kick_off_is_bounded_by_the_token(setup):
    with setup.client("a1", "system/Patient.read system/Observation.rs") as client:
        for query in ("?_type=Condition", "?_type=Patient,Condition",
                      "?_typeFilter=Condition%3Fclinical-status%3Dactive",
                      "?_type=Patient&includeAssociatedData=RelevantProvenanceResources"):
            assert "do not cover" in _outcome(client.get(setup.server.fhir + "/$export" + query, headers=FHIR_HEADERS),
                                              403)
        everything = _export(client, setup.server.fhir + "/$export")  # no _type: what the token covers
        assert {entry["type"] for entry in everything["output"]} == {"Patient", "Observation"}
        patients = _export(client, setup.server.fhir + "/Patient/$export")
        assert {entry["type"] for entry in patients["output"]} == {"Patient", "Observation"}
    with setup.client("a1", "system/Organization.read") as client:  # no Patient-compartment type at all
        _outcome(client.get(setup.server.fhir + "/Patient/$export", headers=FHIR_HEADERS), 403)


def test_another_tenants_or_clients_jobs_are_not_found(setup):
    with setup.client("a1") as owner:
        manifest = _export(owner, setup.server.fhir + "/$export?_type=Patient")
    for intruder in ("g1", "a2"):  # another tenant's client; another client of the same tenant
        with setup.client(intruder) as client:
            _outcome(client.get(manifest["status_url"]), 404)
            _outcome(client.delete(manifest["status_url"]), 404)
            _outcome(client.get(manifest["output"][0]["url"]), 404)
    with setup.client("a1") as owner:
        assert owner.get(manifest["status_url"]).status_code == 200


def test_a_removed_client_loses_its_tokens_at_once(setup, tmp_path):
    key = ClientKey("ES256")
    register(setup.server.state_dir, "temp", "--jwks", write_jwks(tmp_path, key), "--tenant", "acme")
    setup.keys["temp"] = key
    with setup.client("temp") as client:
        assert client.get(setup.server.fhir + "/$export?_type=Patient", headers=FHIR_HEADERS).status_code == 202
        subprocess.run([sys.executable, "-m", "launcher", "clients", "remove", "--client-id", "temp",
                        "--state-dir", str(setup.server.state_dir)], cwd=ROOT, check=True, capture_output=True)
        _outcome(client.get(setup.server.fhir + "/$export?_type=Patient", headers=FHIR_HEADERS), 401)


def test_two_instances_share_tokens_and_refuse_each_others_replays(tmp_path, sample_dir):
    """Behind one load balancer (one public --base-url), a token from either instance works on both,
    and an assertion used on one is refused on the other."""
    key = ClientKey("ES384")
    state = tmp_path / "state"
    register(state, "lb", "--jwks", write_jwks(tmp_path, key), "--tenant", "acme")
    public = "https://bulk.example.org"
    token_url = public + "/auth/token"
    with serve(sample_dir, tmp_path / "out", state, "--base-url", public) as one, \
            serve(sample_dir, tmp_path / "out", state, "--base-url", public) as two:
        signed = assertion(key, "lb", token_url)
        answer = httpx.post(one.base_url + "/auth/token", data=token_form(signed), timeout=30)
        assert answer.status_code == 200, answer.text
        assert httpx.post(two.base_url + "/auth/token", data=token_form(signed), timeout=30).status_code == 401
        bearer = {**FHIR_HEADERS, "Authorization": f"Bearer {answer.json()['access_token']}"}
        kicked = httpx.get(two.fhir + "/$export?_type=Patient", headers=bearer, timeout=30)
        assert kicked.status_code == 202, kicked.text
        job = kicked.headers["Content-Location"].rsplit("/", 1)[1]
        assert httpx.get(f"{one.fhir}/bulk-status/{job}", headers=bearer, timeout=30).status_code in (200, 202)


def test_a_clients_job_expires_as_its_expires_header_says(tmp_path, sample_dir):
    """The maintenance loop removes every client's finished jobs once `Expires` has passed, not only the
    server's own tenant's, and audits each removal."""
    key = ClientKey("ES256")
    state = tmp_path / "state"
    register(state, "exp", "--jwks", write_jwks(tmp_path, key), "--tenant", "acme")
    with serve(sample_dir, tmp_path / "out", state, "--cleanup-ttl", "2s", "--maintenance-interval", "1s") as server:
        with httpx.Client(timeout=30) as plain:
            token = get_token(plain, server.base_url + "/auth/token", key, "exp")
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
            manifest = _export(client, server.fhir + "/$export?_type=Patient")
            expires = email.utils.parsedate_to_datetime(client.get(manifest["status_url"]).headers["Expires"])
            file_url = manifest["output"][0]["url"]
            assert client.get(file_url).status_code == 200
            deadline = expires.timestamp() + 6  # past Expires, with a few maintenance rounds
            while time.time() < deadline and client.get(manifest["status_url"]).status_code == 200:
                time.sleep(0.5)
            _outcome(client.get(manifest["status_url"]), 404)
            _outcome(client.get(file_url), 404)
    job_id = manifest["status_url"].rsplit("/", 1)[1]
    cleaned = [e for e in audit_events(state) if e["agent"][0]["who"].get("display") == "bulk-export cleanup"]
    assert [job_id in json.dumps(event) for event in cleaned] == [True], audit_events(state)
