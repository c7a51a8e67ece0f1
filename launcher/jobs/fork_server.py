"""The fork server that pipeline runs are forked from (`launcher.jobs.process`): what it preloads,
and starting it. Standard library only, so that the command line can start it before its own
imports (`start_for_command_line`), and Beam's import there begins that much sooner."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from multiprocessing import forkserver
from typing import Callable, Sequence

from launcher.jobs import warm
from transforms.storage.socket_folder import place_multiprocessing_sockets

CONTEXT = multiprocessing.get_context("forkserver")
# What the fork server imports before it forks a run: the log filter first, then Beam, the export and the
# local runner (with Beam's runner and worker modules, which a run would otherwise import after the fork).
_PRELOAD = ["launcher.jobs.fork_preload", "launcher.jobs.process", "pipelines.export", "pipelines.local_runner"]
# The commands whose handler runs a pipeline here, and so starts the fork server anyway.
_RUN_PIPELINES = ("export", "resume")
_COMMAND_NAMES = ("bulk-export", "__main__.py")  # the console script, `python -m launcher`
_LOG = logging.getLogger(__name__)


def start_fork_server() -> None:
    """Starts the process pipeline runs are forked from, which imports Beam and the export first; an
    entry point may call it early, so that the import happens there on another core. Idempotent."""
    if warm.attached():
        return
    CONTEXT.set_forkserver_preload(_PRELOAD)
    place_multiprocessing_sockets()
    forkserver.ensure_running()


def start_process(target: Callable, args: tuple, name: str,
                  context: multiprocessing.context.BaseContext = CONTEXT) -> multiprocessing.process.BaseProcess:
    """A started process running `target(*args)`, forked from the warm process when the command line found
    one (`launcher.jobs.warm`), else from this process's fork server; a warm process that cannot start
    it is left for the fork server, before anything ran. Another `context` (a test's) starts it there."""
    if context is CONTEXT and warm.attached():
        try:
            process = warm.start_process(target, args, name)
            _LOG.info("the %s runs in a process forked from the warm process %s", name, warm.attached())
            return process
        except (OSError, EOFError) as exc:
            _LOG.info("the warm process %s cannot start the %s (%s): this command's fork server does",
                      warm.attached(), name, exc)
            warm.detach()
    if context is CONTEXT:
        start_fork_server()
    process = context.Process(target=target, args=args, name=name)
    process.start()
    return process


def start_warm(idle_s: float) -> tuple[int, bool]:
    """Starts this user's warm process for the current key (`bulk-export warm`): its keeper's pid, and
    whether it was started now (else it ran already)."""
    return warm.start(idle_s, _PRELOAD)


def start_for_command_line(argv: Sequence[str]) -> None:
    """Starts the fork server at once (or, when the user runs a warm process for this command's key,
    uses that one: `launcher.jobs.warm`) when `argv` (sys.argv) is `bulk-export export|resume ...`
    without --help: the command's handler would start it anyway, after the command line's own
    imports (0.2-0.3 s). Any other line, or an unusual one (options before the command), is left to
    the handler; the result is the same either way. A process that multiprocessing is starting
    (the run's child runs the console script again as `__mp_main__`, with the same argv) starts none."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        return
    if getattr(sys.modules.get("__main__"), "__name__", "__main__") != "__main__":
        return
    if len(argv) < 2 or os.path.basename(argv[0]) not in _COMMAND_NAMES or argv[1] not in _RUN_PIPELINES:
        return
    if "-h" in argv or "--help" in argv:
        return
    if not warm.attach():
        start_fork_server()
