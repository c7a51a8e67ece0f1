"""What every writing step shares: the fence that stops an attempt which no longer owns its job,
and the progress sink it reports to. Both are injected by the launcher and picklable."""

from __future__ import annotations

from typing import Optional, Protocol


class ProgressSink(Protocol):
    """Receives running per-type counts of resources written (picklable)."""

    def progress(self, counts: dict[str, int]) -> None: ...


class Fence(Protocol):
    """Tells a writing step whether its attempt still owns the job (picklable)."""

    def owns(self) -> bool: ...


class StaleAttempt(RuntimeError):
    """This attempt no longer owns the job (it was cancelled, failed, or resumed as a newer attempt)."""


def check_fence(fence: Optional[Fence], doing: str) -> None:
    """Raises `StaleAttempt` before `doing` when `fence` says this attempt lost the job."""
    if fence is not None and not fence.owns():
        raise StaleAttempt(f"this attempt no longer owns the job; it stopped before {doing}")
