"""The SMART Backend Services client registry, on SQLite and on a real PostgreSQL.

Covers the store's registry (clients, used assertion ids, the shared server
key, the migration from schema version 3), `bulk-export clients add|list|remove`
with real RSA and EC keys and every refusal (exit 2, nothing stored), and how
`grant()` caps requested scopes by registered ones.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from launcher.auth.clients import Client, ClientExists
from launcher.auth.scopes import ScopeRefused, grant, parse_scopes
from launcher.stores import SqliteJobStore, open_store
from launcher.stores.schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE
from tests.helpers import _run
from tests.smart_client import ClientKey

TX = "2024-05-01T12:00:00.000Z"
LOOPBACK_URL = "http://127.0.0.1:9/jwks.json"
REGISTERED = parse_scopes("system/Patient.read system/Observation.read")


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """Each registry test runs against both stores."""
    if request.param == "sqlite":
        return SqliteJobStore(str(tmp_path / "state"))
    return open_store(request.getfixturevalue("postgres_dsn"))


def test_add_get_list_and_remove(store):
    key = ClientKey("ES384")
    one = Client("c-one", "acme", "system/Patient.read", jwks=key.jwks(), created_at=TX)
    two = Client("c-two", "beta", "system/*.rs", jwks_url=LOOPBACK_URL, created_at=TX)
    three = Client("b-three", "acme", "system/*.read", jwks_url="https://keys.example.org/j", created_at=TX)
    for client in (one, two, three):
        store.add_client(client)
    assert open_store(store.url).client("c-one") == one  # read back by another store object
    assert store.client("c-two") == two and store.client("nobody") is None
    assert [c.client_id for c in store.clients()] == ["b-three", "c-one", "c-two"]
    assert store.clients("acme") == [three, one]
    assert store.clients("beta") == [two] and store.clients("gamma") == []
    assert store.remove_client("c-one") is True
    assert store.client("c-one") is None and [c.client_id for c in store.clients("acme")] == ["b-three"]
    assert store.remove_client("c-one") is False


def test_a_duplicate_client_id_is_refused_and_the_first_kept(store):
    first = Client("c1", "acme", "system/*.read", jwks_url=LOOPBACK_URL, created_at=TX)
    store.add_client(first)
    with pytest.raises(ClientExists):
        store.add_client(Client("c1", "beta", "system/Patient.read", jwks=ClientKey().jwks(), created_at=TX))
    assert store.clients() == [first]


def test_removing_an_unknown_client_is_false(store):
    assert store.remove_client("never-registered") is False


def test_a_used_assertion_id_is_refused_again_for_that_client_only(store):
    later = _now_ms() + 300_000
    assert store.use_assertion("c1", "jti-1", later) is True
    assert store.use_assertion("c1", "jti-1", later) is False
    assert open_store(store.url).use_assertion("c1", "jti-1", later) is False  # another instance, or a restart
    assert store.use_assertion("c2", "jti-1", later) is True
    assert store.use_assertion("c1", "jti-2", later) is True


def test_an_expired_assertion_id_is_purged_and_can_be_used_again(store):
    later = _now_ms() + 300_000
    assert store.use_assertion("c1", "live", later) is True
    assert store.use_assertion("c1", "old", _now_ms() - 1000) is True
    assert store.use_assertion("c1", "old", _now_ms() + 1000) is True  # the expired row was purged
    assert store.use_assertion("c1", "live", later) is False  # the purge keeps live ids


def test_the_server_key_is_made_once_and_shared_by_every_store_object(store):
    made: list[str] = []

    def make(value: str):
        return lambda: made.append(value) or value

    first = store.server_key("token-signing", make("pem-1"), TX)
    assert first == "pem-1" and made == ["pem-1"]
    assert open_store(store.url).server_key("token-signing", make("pem-2"), TX) == "pem-1"
    assert store.server_key("token-signing", make("pem-3"), TX) == "pem-1"
    assert made == ["pem-1"]  # make was not called again
    assert store.server_key("other", make("pem-4"), TX) == "pem-4"


def test_a_version_3_store_gains_the_registry_tables(store):
    assert [m.version for m in MIGRATIONS[:3]] == [1, 2, 3] and SCHEMA_VERSION >= 4
    with store._open(write=True) as db:  # the schema as code of version 3 left it
        db.execute(VERSION_TABLE)
        db.execute("INSERT INTO schema_version (version) VALUES (3)")
        for migration in MIGRATIONS[:3]:
            for statement in migration.statements:
                db.execute(statement)
    migrated = open_store(store.url)
    migrated.add_client(Client("c1", "acme", "system/*.read", jwks_url=LOOPBACK_URL, created_at=TX))
    assert migrated.use_assertion("c1", "j", _now_ms() + 60_000) is True
    assert migrated.server_key("k", lambda: "pem", TX) == "pem"
    assert [c.client_id for c in open_store(store.url).clients()] == ["c1"]
    with store._open(write=False) as db:
        assert db.execute("SELECT version FROM schema_version").fetchone()["version"] == SCHEMA_VERSION


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request, tmp_path) -> tuple[list[str], str]:
    """The store options of a `clients` command, and the store's URL."""
    state = str(tmp_path / "state")
    if request.param == "sqlite":
        return ["--state-dir", state], state
    dsn = request.getfixturevalue("postgres_dsn")
    return ["--job-store", dsn, "--state-dir", state], dsn  # --state-dir: run_cli must not insert one


@pytest.fixture
def clients(run_cli, where):
    def run(command: str, *args: str):
        return run_cli("clients", command, *where[0], *args)
    return run


def _listed(clients, *args: str) -> list[dict]:
    result = clients("list", "--json", *args)
    assert result.code == 0, result.err
    return [json.loads(line) for line in result.out.splitlines()]


def _jwks_file(tmp_path, jwks: dict) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    return str(path)


def test_add_a_jwks_of_real_rsa_and_ec_keys_then_list_them(clients, where, tmp_path):
    rsa_key, ec_key = ClientKey("RS384"), ClientKey("ES384")
    jwks = {"keys": [rsa_key.jwk, ec_key.jwk]}
    added = clients("add", "--client-id", "c1", "--jwks", _jwks_file(tmp_path, jwks), "--tenant", "acme",
                    "--scope", "system/Patient.*", "--scope", "system/Observation.read")
    assert added.code == 0, added.err
    assert "client c1 registered: tenant acme, at most system/Patient.read system/Observation.read" in added.out
    [listed] = _listed(clients)
    assert listed["created_at"]
    assert {k: v for k, v in listed.items() if k != "created_at"} == {
        "client_id": "c1", "tenant": "acme", "scope": "system/Patient.read system/Observation.read",
        "jwks_url": None, "kids": [rsa_key.kid, ec_key.kid]}
    stored = open_store(where[1]).client("c1")
    assert stored.jwks == jwks
    for key, jwk in zip((rsa_key, ec_key), stored.jwks["keys"]):  # the stored public keys verify real signatures
        signed = jwt.encode({"sub": "c1"}, key.private, algorithm=key.alg)
        assert jwt.decode(signed, jwt.PyJWK(jwk).key, algorithms=[key.alg]) == {"sub": "c1"}
    assert "c1  tenant acme  system/Patient.read system/Observation.read  kids " in clients("list").out


def test_add_a_loopback_jwks_url_with_the_default_scope_and_tenant(clients):
    added = clients("add", "--client-id", "svc@example.org", "--jwks-url", LOOPBACK_URL)
    assert added.code == 0, added.err
    [listed] = _listed(clients)
    assert (listed["client_id"], listed["tenant"], listed["scope"]) == ("svc@example.org", "default", "system/*.read")
    assert (listed["jwks_url"], listed["kids"]) == (LOOPBACK_URL, None)


def test_list_by_tenant(clients):
    for client_id, tenant in (("c2", "beta"), ("c1", "acme"), ("c3", "acme")):
        assert clients("add", "--client-id", client_id, "--jwks-url", LOOPBACK_URL, "--tenant", tenant).code == 0
    assert [c["client_id"] for c in _listed(clients)] == ["c1", "c2", "c3"]
    assert [c["client_id"] for c in _listed(clients, "--tenant", "acme")] == ["c1", "c3"]
    assert _listed(clients, "--tenant", "gamma") == []


def _rsa_jwk(bits: int, private: bool = False) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return {**json.loads(RSAAlgorithm.to_jwk(key if private else key.public_key())), "kid": "k1"}


def _jwks_args(tmp_path, *keys: dict) -> list[str]:
    return ["--jwks", _jwks_file(tmp_path, {"keys": list(keys)})]


def _scope(scope: str) -> list[str]:
    return ["--jwks-url", LOOPBACK_URL, "--scope", scope]


REFUSALS = {  # each: tmp_path -> (the refused arguments, what the refusal says)
    "private-rsa-key": lambda t: (_jwks_args(t, _rsa_jwk(2048, private=True)), "private or secret key material"),
    "hmac-secret": lambda t: (_jwks_args(t, {"kty": "oct", "kid": "h", "k": "c2VjcmV0"}), "private or secret"),
    "oct-key-type": lambda t: (_jwks_args(t, {"kty": "oct", "kid": "h", "use": "sig"}), "only RSA and EC"),
    "no-kid": lambda t: (_jwks_args(t, {k: v for k, v in ClientKey("ES256").jwk.items() if k != "kid"}),
                         'has no "kid"'),
    "rsa-1024": lambda t: (_jwks_args(t, _rsa_jwk(1024)), "RSA key of 1024 bits"),
    "empty-jwks": lambda t: (_jwks_args(t), "non-empty"),
    "repeated-kid": lambda t: (_jwks_args(t, {**ClientKey("ES256").jwk, "kid": "same"},
                                          {**ClientKey("RS256").jwk, "kid": "same"}), "repeats the kid"),
    "patient-scope": lambda t: (_scope("patient/*.read"), "only system/ scopes"),
    "write-scope": lambda t: (_scope("system/Observation.write"), "only read access"),
    "unknown-type": lambda t: (_scope("system/Nope.read"), "not an R4 resource type"),
    "http-not-loopback": lambda t: (["--jwks-url", "http://keys.example.org/jwks.json"], "https URL"),
    "loopback-lookalike": lambda t: (["--jwks-url", "http://127.0.0.1.nip.io/jwks.json"], "https URL"),
    "bad-client-id": lambda t: (["--jwks-url", LOOPBACK_URL, "--client-id", "my client"], "--client-id"),
}


@pytest.mark.parametrize("case", REFUSALS, ids=list(REFUSALS))
def test_a_refused_registration_exits_2_and_stores_nothing(clients, tmp_path, case):
    args, message = REFUSALS[case](tmp_path)
    client_id = [] if "--client-id" in args else ["--client-id", "c1"]
    result = clients("add", *client_id, *args)
    assert result.code == 2
    assert "refused: " in result.err and message in result.err, result.err
    assert "registered" not in result.out
    assert _listed(clients) == []


def test_a_duplicate_client_id_exits_2_and_keeps_the_first(clients):
    assert clients("add", "--client-id", "c1", "--jwks-url", LOOPBACK_URL, "--tenant", "acme").code == 0
    again = clients("add", "--client-id", "c1", "--jwks-url", "https://other.example.org/j", "--tenant", "beta")
    assert again.code == 2 and "refused: " in again.err and "registered already" in again.err
    assert [(c["tenant"], c["jwks_url"]) for c in _listed(clients)] == [("acme", LOOPBACK_URL)]


def test_remove_then_remove_again_exits_1(clients):
    assert clients("add", "--client-id", "c1", "--jwks-url", LOOPBACK_URL).code == 0
    assert clients("add", "--client-id", "c2", "--jwks-url", LOOPBACK_URL).code == 0
    removed = clients("remove", "--client-id", "c1")
    assert removed.code == 0 and "client c1 removed" in removed.out
    assert [c["client_id"] for c in _listed(clients)] == ["c2"]
    again = clients("remove", "--client-id", "c1")
    assert again.code == 1 and "no client 'c1' is registered" in again.err


def test_the_clients_commands_import_no_beam(tmp_path):
    state = str(tmp_path / "state")
    jwks = _jwks_file(tmp_path, {"keys": [ClientKey("RS256").jwk, ClientKey("ES256").jwk]})
    for argv in (["clients", "add", "--state-dir", state, "--client-id", "c1", "--jwks", jwks],
                 ["clients", "list", "--state-dir", state, "--json"],
                 ["clients", "remove", "--state-dir", state, "--client-id", "c1"]):
        assert _run(argv) == {"code": 0, "heavy": []}, argv
    assert SqliteJobStore(state).clients() == []  # the three commands really ran, in that order


def test_a_wildcard_request_is_narrowed_to_the_registered_types():
    assert str(grant("system/*.read", REGISTERED)) == "system/Patient.read system/Observation.read"
    assert str(grant("system/*.rs", REGISTERED)) == "system/Patient.rs system/Observation.rs"


def test_an_unregistered_type_is_refused_or_left_out():
    with pytest.raises(ScopeRefused):
        grant("system/Condition.read", REGISTERED)
    assert str(grant("system/Condition.read system/Patient.rs", REGISTERED)) == "system/Patient.rs"


def test_a_registered_wildcard_grants_what_is_asked_but_never_a_write():
    assert str(grant("system/Condition.rs", parse_scopes("system/*.read"))) == "system/Condition.rs"
    with pytest.raises(ScopeRefused):
        grant("system/Condition.write", parse_scopes("system/*.read"))
