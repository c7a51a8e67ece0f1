"""The SMART Backend Services token endpoint over real HTTP: real RSA and EC keys, real JWTs, a real server.

Each forged, stale or misaddressed client assertion is refused with the
RFC 6749 error code and audited; scopes are granted only as system reads,
capped by the client's registration; keys at a `jwks_url` come from a real
local HTTP server, only from that URL, cached and refreshed for a new `kid`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.server_process import serve
from tests.smart_client import TENANT, ClientKey, assertion, audit_events, jwks_server, register, token_form, write_jwks


def token_events(state: Path, tenant: str = TENANT) -> list[dict]:
    return [e for e in audit_events(state, tenant) if _detail(e, "lifecycle-event") == "token"]


def last_token_event(state: Path, tenant: str = TENANT) -> dict:
    return token_events(state, tenant)[-1]


def _detail(event: dict, name: str):
    return next((d["valueString"] for d in event["entity"][0].get("detail", []) if d["type"] == name), None)


class Setup:
    def __init__(self, server, keys: dict[str, ClientKey], jwks):
        self.server, self.keys, self.jwks = server, keys, jwks
        self.token_url = server.base_url + "/auth/token"
        self.state = server.state_dir

    def post(self, form: dict, **kwargs) -> httpx.Response:
        return httpx.post(self.token_url, data=form, timeout=30, **kwargs)

    def sign(self, client_id: str, **kwargs) -> str:
        return assertion(self.keys[client_id], client_id, self.token_url, **kwargs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("smart")
    state = root / "state"
    keys = {"es": ClientKey("ES384"), "rs": ClientKey("RS384"), "ec256": ClientKey("ES256"),
            "narrow": ClientKey("RS256")}
    register(state, "es", "--jwks", write_jwks(root, keys["es"]), "--tenant", TENANT)
    register(state, "ec256", "--jwks", write_jwks(root, keys["ec256"]), "--tenant", TENANT)
    register(state, "narrow", "--jwks", write_jwks(root, keys["narrow"]), "--tenant", TENANT,
             "--scope", "system/Patient.read", "--scope", "system/Observation.rs")
    with jwks_server(keys["rs"].jwks()) as served:
        register(state, "rs", "--jwks-url", served.url, "--tenant", TENANT)
        with serve(sample_dir, root / "out", state) as server:  # no --auth: smart, as clients are registered
            yield Setup(server, keys, served)


def refused(response: httpx.Response, status: int, error: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error, body
    return body["error_description"]


@pytest.mark.parametrize("client_id", ["es", "rs", "ec256", "narrow"])
def test_a_signed_assertion_gets_a_bearer_token(setup, client_id):
    scope = "system/Patient.read" if client_id == "narrow" else "system/*.read"
    response = setup.post(token_form(setup.sign(client_id), scope))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300 and body["scope"] == scope
    assert response.headers["cache-control"] == "no-store"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == client_id and claims["tenant"] == TENANT and claims["exp"] - claims["iat"] == 300
    event = last_token_event(setup.state)
    assert event["outcome"] == "0" and event["agent"][0]["who"]["identifier"]["value"] == client_id


def _tampered(signed: str) -> str:
    head, body, signature = signed.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["jti"] = "forged"  # the same signature over other claims
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


def _unsigned(setup) -> str:
    return jwt.encode({"iss": "es", "sub": "es", "aud": setup.token_url, "exp": int(time.time()) + 60, "jti": "x1"},
                      None, algorithm="none", headers={"kid": setup.keys["es"].kid})


def _hmac_with_public_key(setup) -> str:
    """HS256 keyed with the client's public key: the classic algorithm-confusion forgery."""
    key = setup.keys["rs"]
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    claims = {"iss": "rs", "sub": "rs", "aud": setup.token_url, "exp": int(time.time()) + 60, "jti": "x2"}
    segments = [base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=") for part in (header, claims)]
    pem = key.private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signature = base64.urlsafe_b64encode(hmac.new(pem, b".".join(segments), hashlib.sha256).digest()).rstrip(b"=")
    return b".".join([*segments, signature]).decode()


FORGERIES = {
    "tampered signature": (lambda s: _tampered(s.sign("es")), "signature"),
    "alg none": (_unsigned, "alg"),
    "HS256 keyed with the public key": (_hmac_with_public_key, "alg"),
    "wrong aud": (lambda s: s.sign("es", aud=s.server.base_url + "/other"), "aud"),
    "expired exp": (lambda s: s.sign("es", lifetime_s=-60), "expired"),
    "exp too far ahead": (lambda s: s.sign("es", lifetime_s=600), "ahead"),
    "no jti": (lambda s: s.sign("es", jti=None), "jti"),
    "sub is not iss": (lambda s: s.sign("es", sub="rs"), "sub"),
    "jku elsewhere": (lambda s: s.sign("rs", headers={"jku": "http://127.0.0.1:9/evil.json"}), "jku"),
    "jku on a client without a jwks_url": (lambda s: s.sign("es", headers={"jku": s.jwks.url}), "jku"),
    "unknown kid": (lambda s: assertion(ClientKey("ES384", kid="nobody"), "es", s.token_url), "kid"),
    "a key of another client": (lambda s: assertion(s.keys["rs"], "es", s.token_url), "kid"),
    "unregistered iss": (lambda s: assertion(s.keys["es"], "stranger", s.token_url), "registered"),
    "ES256 against a P-384 key": (lambda s: assertion(ClientKey("ES256", kid=s.keys["es"].kid), "es", s.token_url),
                                  "does not sign ES256"),
    "not a JWT": (lambda s: "not.a.jwt", "JWT"),
}
# Refused before the assertion names a registered client, so with no tenant: audited as the default tenant's.
REFUSED_BEFORE_THE_CLIENT_IS_KNOWN = {"alg none", "HS256 keyed with the public key", "unregistered iss", "not a JWT"}


@pytest.mark.parametrize("case", list(FORGERIES))
def test_a_bad_assertion_is_refused_as_invalid_client_and_audited(setup, case):
    make, phrase = FORGERIES[case]
    signed = make(setup)
    requests_before = setup.jwks.requests
    tenant = "default" if case in REFUSED_BEFORE_THE_CLIENT_IS_KNOWN else TENANT
    events_before = len(token_events(setup.state, tenant))
    description = refused(setup.post(token_form(signed)), 401, "invalid_client")
    assert phrase in description
    assert len(token_events(setup.state, tenant)) == events_before + 1  # this refusal's own event
    event = last_token_event(setup.state, tenant)
    assert event["outcome"] == "4" and "invalid_client" in event["outcomeDesc"]
    assert signed not in json.dumps(event)
    if case == "jku elsewhere":  # the URL named in the token was never fetched
        assert setup.jwks.requests <= requests_before + 1


def test_an_aud_list_naming_another_server_is_refused(setup):
    """`aud` is the token URL alone: a list with any other member is refused; the one-element list, RFC 7519's
    general form of a single audience, is the same as the string."""
    other = "https://other.example.org/auth/token"
    for aud in ([setup.token_url, other], [other, setup.token_url], [setup.token_url, setup.token_url + "/"]):
        assert "aud" in refused(setup.post(token_form(setup.sign("es", aud=aud))), 401, "invalid_client")
    assert setup.post(token_form(setup.sign("es", aud=[setup.token_url]))).status_code == 200


def test_an_assertion_is_used_once(setup):
    signed = setup.sign("ec256")
    assert setup.post(token_form(signed)).status_code == 200
    assert "used already" in refused(setup.post(token_form(signed)), 401, "invalid_client")
    assert "replay" in last_token_event(setup.state)["outcomeDesc"]


def test_a_refused_assertion_may_be_retried_until_granted_then_never_again(setup):
    """The `jti` is recorded when a token is issued, not when a request is refused (BDT sends one
    assertion 5 times for `invalid_scope`); SMART's replay check then refuses it for good."""
    signed = setup.sign("narrow")
    for scope in ("system/Condition.read", "system/Patient.write", "patient/*.read", "launch", "system/Nope.read"):
        refused(setup.post(token_form(signed, scope)), 400, "invalid_scope")
    granted = setup.post(token_form(signed, "system/Patient.read"))
    assert granted.status_code == 200, granted.text
    assert "used already" in refused(setup.post(token_form(signed, "system/Patient.read")), 401, "invalid_client")
    assert "used already" in refused(setup.post(token_form(signed, "system/Condition.read")), 401, "invalid_client")


@pytest.mark.parametrize("scope", [
    "", "launch", "openid", "patient/*.read", "user/Observation.read", "system/Nope.read", "system/Patient.fly",
    "system/Patient.write", "system/*.write", "system/Patient.cruds", "system/Patient.c", "system/*.u",
    "system/Patient.rd", "system/Patient.r", "system/Observation.rs?category=laboratory", "system/Patient",
])
def test_a_scope_that_is_not_a_system_read_is_invalid_scope(setup, scope):
    description = refused(setup.post(token_form(setup.sign("es"), scope)), 400, "invalid_scope")
    assert description
    assert "invalid_scope" in last_token_event(setup.state)["outcomeDesc"]


@pytest.mark.parametrize("asked, granted", [
    ("system/*.*", "system/*.read"),
    ("system/*.rs", "system/*.rs"),
    ("system/Patient.rs system/Observation.read", "system/Patient.rs system/Observation.read"),
])
def test_read_scopes_are_granted_as_asked_and_wildcards_read_only(setup, asked, granted):
    response = setup.post(token_form(setup.sign("es"), asked))
    assert response.status_code == 200 and response.json()["scope"] == granted


@pytest.mark.parametrize("asked, granted", [
    ("system/*.read", "system/Patient.read system/Observation.read"),
    ("system/Patient.read system/Condition.read", "system/Patient.read"),
    ("system/Observation.rs", "system/Observation.rs"),
])
def test_scopes_are_capped_by_the_registration(setup, asked, granted):
    response = setup.post(token_form(setup.sign("narrow"), asked))
    assert response.status_code == 200 and response.json()["scope"] == granted


def test_a_scope_outside_the_registration_is_invalid_scope(setup):
    refused(setup.post(token_form(setup.sign("narrow"), "system/Condition.read")), 400, "invalid_scope")


def test_malformed_token_requests_get_standard_errors(setup):
    form = token_form(setup.sign("es"))
    refused(setup.post({**form, "grant_type": "password"}), 400, "unsupported_grant_type")
    refused(setup.post({**form, "client_assertion_type": "urn:x"}), 400, "invalid_request")
    refused(setup.post({k: v for k, v in form.items() if k != "client_assertion"}), 400, "invalid_request")
    as_json = httpx.post(setup.token_url, json=form, timeout=30)
    refused(as_json, 400, "invalid_request")
    twice = "&".join(f"{k}={v}" for k, v in [*form.items(), ("scope", "system/*.read")])
    refused(httpx.post(setup.token_url, content=twice, timeout=30,
                       headers={"Content-Type": "application/x-www-form-urlencoded"}), 400, "invalid_request")


def test_jwks_url_keys_are_cached_and_refreshed_for_a_new_kid(setup):
    assert setup.post(token_form(setup.sign("rs"))).status_code == 200
    before = setup.jwks.requests
    assert setup.post(token_form(setup.sign("rs"))).status_code == 200
    assert setup.jwks.requests == before  # cached
    rotated = ClientKey("RS384")
    setup.jwks.jwks = {"keys": [setup.keys["rs"].jwk, rotated.jwk]}
    time.sleep(10.5)  # unknown kids refresh at most once per 10 s
    assert httpx.post(setup.token_url, data=token_form(assertion(rotated, "rs", setup.token_url)),
                      timeout=30).status_code == 200
    assert setup.jwks.requests == before + 1


def test_discovery_names_the_token_endpoint(setup):
    config = httpx.get(setup.server.fhir + "/.well-known/smart-configuration", timeout=30).json()
    assert config["token_endpoint"] == setup.token_url
    assert config["grant_types_supported"] == ["client_credentials"]
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
    assert "system/*.read" in config["scopes_supported"]
    security = httpx.get(setup.server.fhir + "/metadata", timeout=30).json()["rest"][0]["security"]
    uris = next(e for e in security["extension"]
                if e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris")
    assert {"url": "token", "valueUri": setup.token_url} in uris["extension"]


def test_no_assertion_or_token_reaches_the_log_or_audit(setup):
    signed = setup.sign("es")
    token = setup.post(token_form(signed)).json()["access_token"]
    refused(setup.post(token_form(signed)), 401, "invalid_client")
    for text in (setup.server.log.read_text(), (setup.state / "audit" / f"{TENANT}.ndjson").read_text()):
        assert signed not in text and token not in text
