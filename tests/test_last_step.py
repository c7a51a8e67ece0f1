"""The last step kept whole (`transforms.storage.last_step`): a launcher dying while the run claims its
completion and publishes its manifest lets both finish before the run is killed; one that died before
keeps the step from beginning. The fault-injection test found the window these close: a job complete in
the store with no `manifest.json`."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

import launcher.jobs.process as process
from transforms.storage.last_step import LOCK_ENV, LauncherGone, kept_whole

_FORK = multiprocessing.get_context("fork")


def _run(lifeline, launchers_end, entered, marker: str) -> None:
    """A run as `launcher.jobs.process._child_main` starts one, whose last step takes a second."""
    launchers_end.close()  # forked, not started by the fork server: drop the copy of the launcher's end
    os.setpgid(0, 0)
    fd, lock = tempfile.mkstemp(prefix="bulk-export-last-step-")
    os.close(fd)
    os.environ[LOCK_ENV] = lock
    threading.Thread(target=process._die_with_launcher, args=(lifeline, lock), daemon=True).start()
    with kept_whole():
        entered.send(time.monotonic())
        time.sleep(1.0)
        Path(marker).write_text("published")
    time.sleep(60)  # killed before this ends


def test_a_launcher_dying_inside_the_last_step_lets_it_finish_then_the_run_is_killed(tmp_path):
    marker = tmp_path / "manifest.json"
    lifeline, keep = _FORK.Pipe(duplex=False)
    entered_r, entered_w = _FORK.Pipe(duplex=False)
    child = _FORK.Process(target=_run, args=(lifeline, keep, entered_w, str(marker)))
    child.start()
    lifeline.close()
    entered_w.close()
    assert entered_r.poll(30)
    entered_r.recv()
    keep.close()  # the launcher dies, inside the run's last step
    child.join(30)
    assert child.exitcode == -9  # killed by its lifeline...
    assert marker.read_text() == "published"  # ...once its last step had ended


def test_the_last_step_does_not_begin_once_the_lifeline_took_it(monkeypatch, tmp_path):
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "removed-by-the-lifeline"))
    with pytest.raises(LauncherGone):
        with kept_whole():
            raise AssertionError("the step began")
    monkeypatch.delenv(LOCK_ENV)
    with kept_whole():  # no lock named (Dask, Dataflow): the step runs as it is
        pass
