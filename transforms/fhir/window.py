"""`_since` / `_until` and the kickoff's `transactionTime`, on `meta.lastUpdated`.

Bounds follow the Bulk Data IG v3 exactly: `_since` keeps resources updated
*after* it and `_until` those updated *before* it (both exclusive), and nothing
updated after `transactionTime` is exported while everything up to and
including it is. One run's `transactionTime` can therefore be the next run's
`_since`, and a resource that has `meta.lastUpdated` falls in exactly one of them. Instants are compared as instants, across
offsets and precisions, never as strings.

A resource without `meta.lastUpdated` cannot be placed in time. The IG lets a
server include it whatever `_since` says; that is the default here, and
`include_missing=False` drops such resources when `_since` or `_until` is set.
"""

from __future__ import annotations

from typing import Optional

from transforms.fhir.instant import InstantKey, InvalidInstant, instant_key, text_key_of, utc_text_key

LAST_UPDATED = "meta.lastUpdated"  # how bad records name the element at fault
# `LastUpdatedWindow.classify`'s verdict for a resource updated after `transactionTime`.
LATE = "updated after transactionTime"


class UpdatedAfterTransaction(InvalidInstant):
    """Raised by a step for a resource updated after `transactionTime`: not exported, but said so.

    Not an error in the data (the next export will include it), so it is reported
    with severity `information` and issue type `informational`.
    """

    severity, code = "information", "informational"

    def __init__(self) -> None:
        super().__init__(LATE)


class LastUpdatedWindow:
    """The half-open time window `(since, min(until, tx]]` a resource must fall in."""

    def __init__(
        self,
        transaction_time: str,
        since: Optional[str] = None,
        until: Optional[str] = None,
        include_missing: bool = True,
    ):
        self._bounds = (transaction_time, since, until, include_missing)
        self._since = instant_key(since) if since else None
        self._until = instant_key(until) if until else None
        self._tx = instant_key(transaction_time)
        self._keep_missing = include_missing or not (since or until)
        # The same bounds as text keys, for the common `...Z` timestamps (no arithmetic).
        self._since_text = text_key_of(self._since) if self._since else None
        self._until_text = text_key_of(self._until) if self._until else None
        self._tx_text = text_key_of(self._tx)

    @property
    def since_until(self) -> tuple[Optional[str], Optional[str]]:
        """`_since` and `_until` as given (None when not set)."""
        return self._bounds[1], self._bounds[2]

    def without_since(self) -> "LastUpdatedWindow":
        """The same window with no `_since` bound."""
        transaction_time, _, until, include_missing = self._bounds
        return LastUpdatedWindow(transaction_time, None, until, include_missing)

    def classify(self, body: dict, last_updated: Optional[str] = None):
        """`admits`, telling the resources updated after `transactionTime` apart: True when
        the resource is in the window, `LATE` when it was updated after `transactionTime`,
        else False. Raises `InvalidInstant` on bad data."""
        text = last_updated if last_updated is not None else _meta_last_updated(body)
        if text is None:
            return self._keep_missing
        fast = utc_text_key(text)
        if fast is not None:
            if fast > self._tx_text:
                return LATE
            if self._since_text is not None and not fast > self._since_text:
                return False
            return self._until_text is None or fast < self._until_text
        key: InstantKey = instant_key(text)
        if key > self._tx:
            return LATE
        if self._since is not None and not key > self._since:
            return False
        return self._until is None or key < self._until

    def admits(self, body: dict, last_updated: Optional[str] = None) -> bool:
        """True when the resource is in the window; raises `InvalidInstant` on bad data.

        `last_updated`, a columnar source's `lastUpdated` column, wins over `meta.lastUpdated`.
        """
        return self.classify(body, last_updated) is True

    def admits_or_late(self, body: dict, last_updated: Optional[str] = None) -> bool:
        """`admits`, raising `UpdatedAfterTransaction` for a resource updated after `transactionTime`,
        so a step reports it (as a notice) instead of dropping it silently."""
        verdict = self.classify(body, last_updated)
        if verdict is LATE:
            raise UpdatedAfterTransaction()
        return verdict is True


def _meta_last_updated(body: dict) -> Optional[object]:
    meta = body.get("meta")
    if meta is None:
        return None
    if type(meta) is not dict:
        raise InvalidInstant("meta is not a JSON object")
    return meta.get("lastUpdated")
