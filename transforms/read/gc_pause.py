"""The garbage-collector pause of the local runner's processes, and nowhere else.

A batch keeps thousands of freshly parsed, acyclic JSON containers alive, and
each allocation burst set off full collections over Beam's large heap: about
45% of a local export's time. The local runner switches the pause on for its
own processes (`enabled()`); on Dataflow, Flink or Dask workers it stays off,
and the pipeline runs with the interpreter's normal collector.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_lock = threading.Lock()
_state = {"on": False, "depth": 0, "was_enabled": True}


@contextlib.contextmanager
def enabled() -> Iterator[None]:
    """Allows the pause in this process (and in processes forked from it) while the block runs."""
    before = _state["on"]
    _state["on"] = True
    try:
        yield
    finally:
        _state["on"] = before


def is_enabled() -> bool:
    return _state["on"]


def freeze_heap() -> None:
    """Moves the objects alive now out of the collector's reach, when the pause is allowed."""
    if _state["on"]:
        gc.freeze()


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pauses the cyclic collector while a chunk is read, filtered and written (when allowed).

    Reference counting still frees everything; collection resumes when the
    last concurrent chunk is done.
    """
    if not _state["on"]:
        yield
        return
    with _lock:
        if _state["depth"] == 0:
            _state["was_enabled"] = gc.isenabled()
            gc.disable()
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0 and _state["was_enabled"]:
                gc.enable()
