"""A SMART Backend Services client for tests: real RSA and EC keys, signed assertions, a served JWKS."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.server_process import ROOT

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TENANT = "acme"

_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


class ClientKey:
    """A private key of `alg`'s type and its public JWK (with `kid`)."""

    def __init__(self, alg: str = "ES384", kid: Optional[str] = None):
        self.alg, self.kid = alg, kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
        if alg.startswith("RS"):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = ec.generate_private_key(_CURVES[alg]())
            public = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        self.jwk = {**public, "kid": self.kid, "alg": alg, "use": "sig"}

    def jwks(self) -> dict:
        return {"keys": [self.jwk]}


def assertion(key: ClientKey, client_id: str, token_url: str, *, alg: Optional[str] = None,
              lifetime_s: float = 240, headers: Optional[dict] = None, **claims) -> str:
    """A client assertion as SMART Backend Services defines it; `claims` override or (None) drop claims."""
    body = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": int(time.time() + lifetime_s),
            "jti": str(uuid.uuid4())}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key.private, algorithm=alg or key.alg, headers={"kid": key.kid, **(headers or {})})


def token_form(signed: str, scope: str = "system/*.read") -> dict:
    return {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signed, "scope": scope}


def get_token(client: httpx.Client, token_url: str, key: ClientKey, client_id: str,
              scope: str = "system/*.read") -> str:
    response = client.post(token_url, data=token_form(assertion(key, client_id, token_url), scope))
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@contextlib.contextmanager
def jwks_server(jwks: dict) -> Iterator["JwksServer"]:
    """A real HTTP server on a loopback port serving `jwks` at /jwks.json (and counting requests)."""
    served = JwksServer(jwks)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), served.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    served.url = f"http://127.0.0.1:{httpd.server_address[1]}/jwks.json"
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()


class JwksServer:
    def __init__(self, jwks: dict):
        self.jwks, self.url, self.requests = jwks, "", 0

    def handler(self):
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                served.requests += 1
                body = json.dumps(served.jwks).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


def register(state: Path, client_id: str, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "launcher", "clients", "add", "--state-dir", str(state),
                           "--client-id", client_id, *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def write_jwks(folder: Path, *keys: ClientKey) -> str:
    path = folder / f"jwks-{keys[0].kid}.json"
    path.write_text(json.dumps({"keys": [k.jwk for k in keys]}))
    return str(path)


def audit_events(state: Path, tenant: str = TENANT) -> list[dict]:
    path = state / "audit" / f"{tenant}.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

