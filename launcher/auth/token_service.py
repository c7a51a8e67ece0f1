"""The SMART Backend Services token endpoint's logic: a client credentials grant for a signed assertion.

`TokenService.exchange` takes the form a client posted and answers the
RFC 6749 token response, or raises `TokenRefused` with the standard error
code. Every grant and refusal is audited, naming the client when known. An
assertion's `jti` is recorded only when a token is issued for it: a refused
request (e.g. `invalid_scope`) may be retried with the same assertion until
it expires, and a granted one is never accepted again (SMART Backend Services'
replay check).
"""

from __future__ import annotations

from typing import Optional

from launcher.auth.access_tokens import ACCESS_TOKEN_S, AccessTokens
from launcher.auth.assertion import ASSERTION_TYPE, TokenRefused, replayed, verify_assertion
from launcher.auth.keys import JwksCache
from launcher.auth.scopes import ScopeRefused, grant, parse_scopes
from launcher.core.audit import MINOR_FAILURE, SUCCESS, AuditLog

GRANT_TYPE = "client_credentials"


class TokenService:
    """Verifies client assertions against the registry and issues access tokens."""

    def __init__(self, store, token_url: str, tokens: AccessTokens, audit: AuditLog, audit_tenant: str,
                 jwks: Optional[JwksCache] = None):
        self._store, self.token_url, self._tokens = store, token_url, tokens
        self._audit, self._audit_tenant = audit, audit_tenant  # refusals of unknown clients go to audit_tenant
        self._jwks = jwks or JwksCache()

    def exchange(self, form: list[tuple[str, str]]) -> dict:
        """The token response for a posted form (its fields in order, repeats kept)."""
        try:
            client, granted = self._grant(form)
        except TokenRefused as exc:
            self.audit_refusal(exc)
            raise
        self._audit.access("token", client.tenant, client.client_id, SUCCESS, f"token granted: {granted}")
        return {"access_token": self._tokens.issue(client, granted), "token_type": "bearer",
                "expires_in": ACCESS_TOKEN_S, "scope": str(granted)}

    def audit_refusal(self, exc: TokenRefused) -> None:
        tenant = exc.client.tenant if exc.client else self._audit_tenant
        self._audit.access("token", tenant, exc.client.client_id if exc.client else None, MINOR_FAILURE,
                           f"token refused: {exc.error}: {exc.description}")

    def _grant(self, form: list[tuple[str, str]]):
        fields = _single_fields(form)
        if fields.get("grant_type") != GRANT_TYPE:
            raise TokenRefused("unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
        if fields.get("client_assertion_type") != ASSERTION_TYPE:
            raise TokenRefused("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        if not fields.get("client_assertion"):
            raise TokenRefused("invalid_request", "client_assertion is missing")
        assertion = verify_assertion(fields["client_assertion"], self.token_url, self._store.client, self._jwks,
                                     self._store.assertion_used)
        client = assertion.client
        try:
            granted = grant(fields.get("scope", ""), parse_scopes(client.scopes))
        except ScopeRefused as exc:
            raise TokenRefused("invalid_scope", str(exc), 400, client) from None
        if not self._store.use_assertion(client.client_id, assertion.jti, assertion.expires_ms):
            raise replayed(client)  # another request with it was granted meanwhile
        return client, granted


def _single_fields(form: list[tuple[str, str]]) -> dict[str, str]:
    """The form as a dict; a field given twice is `invalid_request` (RFC 6749 3.2)."""
    fields: dict[str, str] = {}
    for name, value in form:
        if name in fields:
            raise TokenRefused("invalid_request", f"{name[:40]} is given more than once")
        fields[name] = value
    return fields

