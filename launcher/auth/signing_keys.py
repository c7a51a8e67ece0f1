"""The access-token signing keys as the job store holds them, seen by a running server within seconds.

The store's `server_keys` rows are the truth: the newest active key signs,
every key in force (active, or retiring and not yet past its time) verifies,
and a key whose row is gone verifies nothing. Each server reads the rows
again at most every `REREAD_S` (sooner, at most every `UNKNOWN_KID_REREAD_S`,
for a token naming a `kid` it does not know yet, as another instance may have
rotated), so a rotation or a revocation reaches every instance sharing the
store within `REREAD_S`. A store with no active key gets one from the first
server that needs it; `bulk-export keys rotate` makes the others.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from typing import Any, Callable, Optional

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from transforms.fhir.instant import now_instant

REREAD_S = 2.0
UNKNOWN_KID_REREAD_S = 0.25


def new_key() -> tuple[str, str]:
    """A fresh ES256 key: its `kid` and its private key as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return f"es256-{uuid.uuid4().hex[:16]}", pem


@dataclasses.dataclass(frozen=True)
class KeyRing:
    """The keys in force at one reading: the signing key (`kid`, private key) and every verifying key by `kid`."""

    signer: tuple[str, Any]
    verifiers: dict[str, Any]


class SigningKeys:
    """The store's signing keys, read again when the last reading is older than `REREAD_S`."""

    def __init__(self, store, clock: Callable[[], float] = time.monotonic):
        self._store, self._clock = store, clock
        self._parsed: dict[tuple[str, str], Any] = {}  # (kid, pem) -> private key: PEMs are parsed once
        self._reading = threading.Lock()
        self._ring, self._read_at = self._read(), clock()

    def ring(self, unknown_kid: bool = False) -> KeyRing:
        """The keys in force, read again if stale (or, for an unknown `kid`, if not read very recently)."""
        age = self._clock() - self._read_at
        if age >= (UNKNOWN_KID_REREAD_S if unknown_kid else REREAD_S):
            # One reader at a time; the others use the last reading, which is at most one reading old.
            if self._reading.acquire(blocking=age >= 2 * REREAD_S):
                try:
                    self._ring, self._read_at = self._read(), self._clock()
                finally:
                    self._reading.release()
        return self._ring

    def _read(self) -> KeyRing:
        rows = self._store.signing_keys(int(time.time() * 1000))
        if not any(row["retires_ms"] is None for row in rows):  # none yet, or every one revoked by hand
            self._store.add_first_signing_key(*new_key(), now_instant())
            rows = self._store.signing_keys(int(time.time() * 1000))
        keys = {row["name"]: self._private(row["name"], row["private_pem"]) for row in rows}
        self._parsed = {k: v for k, v in self._parsed.items() if k[0] in keys}
        active = next(row["name"] for row in rows if row["retires_ms"] is None)  # newest first
        return KeyRing((active, keys[active]), {kid: key.public_key() for kid, key in keys.items()})

    def _private(self, kid: str, pem: str) -> Any:
        key: Optional[Any] = self._parsed.get((kid, pem))
        if key is None:
            key = self._parsed[(kid, pem)] = serialization.load_pem_private_key(pem.encode(), password=None)
        return key
