"""The export's last step kept whole when the local launcher dies: the completion claim and the manifest's
publication happen both or neither.

The local runner's processes die with their launcher (`launcher.jobs.process`: the lifeline). Killed
between the claim and the publication, a job would be complete in the store with no `manifest.json`.
The pipeline process names a lock file in `LOCK_ENV`, which its forked workers inherit; the manifest
step holds it for the claim and the publication (`kept_whole`), and the lifeline takes it before it
kills the run (`wait_for_last_step`). Elsewhere (Dask, Dataflow) the variable is unset and the step
runs as it is. Standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from typing import Iterator

LOCK_ENV = "BULK_EXPORT_LAST_STEP_LOCK"


class LauncherGone(RuntimeError):
    """The launcher has died and the run is being killed: its last step must not begin."""


@contextlib.contextmanager
def kept_whole() -> Iterator[None]:
    """Holds the run's last-step lock, when it has one, while the block runs; raises `LauncherGone`
    when the lifeline has taken it for good (it removes the file before it kills the run)."""
    path = os.environ.get(LOCK_ENV)
    if not path:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        raise LauncherGone("the launcher is gone: the run is being stopped") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def wait_for_last_step(path: str, timeout_s: float) -> None:
    """Returns once no process of the run is inside its last step (then none enters it: the lock is kept
    until this process ends), or after `timeout_s`."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDWR)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)
