"""The embedded local runner, with multi-process workers forked warm from this process.

Beam's FnApiRunner starts each `multi_processing` worker as a fresh
`python -m apache_beam.runners.worker.sdk_worker_main`, which spends about
0.7 s importing Beam and the pipeline's modules before it takes any work: on
a 2-core machine that start-up, not the export, decided whether two workers
beat one. `LocalRunner` forks its workers from the driver instead, after the
imports and before the run starts its gRPC servers, and hands each one the
control address Beam would have given the fresh process. Anything the
runner does not ask of the pool (more workers than forked, a pool that failed)
falls back to Beam's own command, so the pool can only make start-up faster.

In both modes a run also gives Beam's state sampler a short period, so that
no bundle waits for the sampler's 200 ms sleep to end, and lets the read pause
the garbage collector (`transforms.read.gc_pause`) in this runner's own
processes. Both are process-wide, so they happen here and never on the
workers of Dataflow, Flink or Dask.

Every Beam internal this relies on is listed in `BEAM_INTERNALS`. If one is
missing from the installed Beam, the run warns and falls back to Beam's stock
FnApiRunner, with Beam's own worker processes, rather than failing or hanging.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shlex
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Optional

from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from pipelines import _worker_client  # stdlib only: what Beam runs as each worker's command
from transforms.read import gc_pause
from transforms.storage.socket_folder import socket_folder

try:  # imported before the fork, so that workers start warm
    from apache_beam.portability import python_urns
    from apache_beam.runners.worker import sdk_worker_main, statesampler
    from apache_beam.utils import thread_pool_executor
except ImportError:  # a Beam that moved them: `missing_internals()` names what is gone
    python_urns = sdk_worker_main = statesampler = thread_pool_executor = None

_LOG = logging.getLogger(__name__)
_CLIENT = Path(_worker_client.__file__)
BEAM_WORKER = f"{sys.executable} -m apache_beam.runners.worker.sdk_worker_main"
_EXIT_WITHIN_S = 10.0
FOLDER_PREFIX = "bulk-export-workers-"  # + the pipeline process's id, in the temp folder
_SAMPLING_PERIOD_MS = 10


def _sampler_default() -> tuple:
    defaults = statesampler.StateSampler.__init__.__defaults__
    if not (isinstance(defaults, tuple) and len(defaults) == 1 and isinstance(defaults[0], int)):
        raise AttributeError("StateSampler.__init__ no longer has one sampling_period_ms default")
    return defaults


# Every Beam internal the local runner relies on, with how it is looked up.
BEAM_INTERNALS = {
    "apache_beam.portability.python_urns.SUBPROCESS_SDK": lambda: python_urns.SUBPROCESS_SDK,
    "apache_beam.runners.worker.sdk_worker_main.main": lambda: sdk_worker_main.main,
    "apache_beam.runners.worker.statesampler.StateSampler.__init__ sampling_period_ms": _sampler_default,
    "apache_beam.utils.thread_pool_executor.shared_unbounded_instance": (
        lambda: thread_pool_executor.shared_unbounded_instance
    ),
    "FnApiRunner.run_via_runner_api": lambda: FnApiRunner.run_via_runner_api,
    "worker environment variables": lambda: _worker_client.WORKER_ENV,
}


def missing_internals() -> list[str]:
    """The names in `BEAM_INTERNALS` that the installed Beam lacks."""
    missing = []
    for name, look_up in BEAM_INTERNALS.items():
        try:
            look_up()
        except (AttributeError, ImportError, OSError, TypeError):
            missing.append(name)
    return missing


class LocalRunner(FnApiRunner):
    """`FnApiRunner`; with `--direct_running_mode=multi_processing` its workers are forked warm."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._worker_command: Optional[str] = None

    def run_pipeline(self, pipeline, options):
        missing = missing_internals()
        if missing:
            _LOG.warning("local runner: this Beam lacks %s; running Beam's stock FnApiRunner instead "
                         "(its own worker processes, the default state sampler)", ", ".join(missing))
            with gc_pause.enabled():
                return super().run_pipeline(pipeline, options)
        direct = options.view_as(DirectOptions)
        with _prompt_state_sampler(), gc_pause.enabled(), contextlib.ExitStack() as stack:
            if direct.direct_running_mode == "multi_processing" and hasattr(os, "fork"):
                try:
                    workers = stack.enter_context(WarmWorkers(direct.direct_num_workers or os.cpu_count() or 1))
                    self._worker_command = workers.command
                except OSError as exc:
                    _LOG.warning("cannot fork warm workers (%s); Beam starts its own", exc)
            try:
                return super().run_pipeline(pipeline, options)
            finally:
                self._worker_command = None

    def run_via_runner_api(self, pipeline_proto, options):
        if self._worker_command:
            replaced = 0
            for environment in pipeline_proto.components.environments.values():
                if environment.urn == python_urns.SUBPROCESS_SDK and environment.payload.decode() == BEAM_WORKER:
                    environment.payload = self._worker_command.encode()
                    replaced += 1
            if not replaced:  # Beam now starts its workers some other way: they start as Beam decides
                _LOG.warning("local runner: no worker environment runs %r; Beam starts its own workers", BEAM_WORKER)
        return super().run_via_runner_api(pipeline_proto, options)


@contextlib.contextmanager
def _prompt_state_sampler() -> Iterator[None]:
    """Beam's per-bundle state sampler, with a short period while a local run lasts.

    `StateSampler.stop()` waits out the rest of the sampling thread's sleep
    (200 ms; "may have to wait up to sampling_period_ms" in Beam's source), so
    every long bundle ended on a 200 ms grid: 0.04-0.2 s of a 1.5 s export,
    measured. Forked workers inherit the shorter period.
    """
    init = statesampler.StateSampler.__init__
    saved = init.__defaults__
    init.__defaults__ = (_SAMPLING_PERIOD_MS,)
    try:
        yield
    finally:
        init.__defaults__ = saved


class WarmWorkers:
    """`count` forked processes, each waiting to become one SDK worker for the command's client."""

    def __init__(self, count: int):
        self._count = count
        self._pids: list[int] = []
        self._folder: Optional[str] = None
        self._lifeline: Optional[int] = None
        self.address = self.command = ""

    def __enter__(self) -> "WarmWorkers":
        _sweep_stale_folders()
        self._folder = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=socket_folder())  # 0700: ours
        address = self.address = os.path.join(self._folder, "workers.sock")
        lifeline_in, self._lifeline = os.pipe()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                listener.bind(address)
                listener.listen(self._count)
                listener.setblocking(False)
                for _ in range(self._count):
                    pid = os.fork()
                    if pid == 0:  # the child never returns from here
                        os.close(self._lifeline)
                        _wait_and_serve(listener, lifeline_in)
                    self._pids.append(pid)
        except OSError:
            self.__exit__()  # the workers forked so far exit with the lifeline
            raise
        finally:
            os.close(lifeline_in)
        fallback = shlex.quote(BEAM_WORKER)
        self.command = f"{shlex.quote(sys.executable)} -S -I {shlex.quote(str(_CLIENT))} {shlex.quote(address)} {fallback}"
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._lifeline)  # waiting workers exit; serving ones end with their clients
        deadline = time.monotonic() + _EXIT_WITHIN_S
        for pid in self._pids:
            if not _reaped(pid, deadline):
                _LOG.warning("forked worker %d did not exit; killing it", pid)
                os.kill(pid, signal.SIGKILL)
                _reaped(pid, None)
        shutil.rmtree(self._folder, ignore_errors=True)


def _sweep_stale_folders() -> None:
    """Removes the socket folders of runs killed before they could (their process is gone)."""
    for entry in os.scandir(socket_folder()):
        pid = entry.name[len(FOLDER_PREFIX):].split("-", 1)[0] if entry.name.startswith(FOLDER_PREFIX) else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _reaped(pid: int, deadline: Optional[float]) -> bool:
    """Waits for a child to exit, until `deadline` (None: for ever); True once it is gone."""
    while True:
        try:
            done, _ = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        except ChildProcessError:  # reaped already
            return True
        if done:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def _wait_and_serve(listener: socket.socket, lifeline: int) -> None:
    """In a forked child: take one client, become its SDK worker, and exit with the worker's status."""
    code = 1
    try:
        conn = _accept(listener, lifeline)
        listener.close()
        if conn is None:
            code = 0
        else:
            code = _serve(conn, lifeline)
    except BaseException:  # a child must never return into the driver's code
        logging.getLogger(__name__).exception("forked worker failed")
    finally:
        os._exit(code)


def _accept(listener: socket.socket, lifeline: int) -> Optional[socket.socket]:
    while True:
        ready, _, _ = select.select([listener, lifeline], [], [])
        if lifeline in ready:
            return None  # the run is over (or the driver died) before anyone asked for this worker
        try:
            conn, _ = listener.accept()
        except BlockingIOError:  # another waiting worker took this client
            continue
        conn.setblocking(True)
        return conn


def _serve(conn: socket.socket, lifeline: int) -> int:
    conn.sendall(b"A")
    size = struct.unpack(">I", _recv_exact(conn, 4))[0]
    env = json.loads(_recv_exact(conn, size))
    os.environ.update({k: v for k, v in env.items() if k in _worker_client.WORKER_ENV})
    threading.Thread(target=_exit_with, args=(conn, lifeline), daemon=True).start()
    # The worker's logs reach the runner through Beam's logging service, as a fresh worker's do.
    logging.getLogger().handlers.clear()
    if logging.getLogger("apache_beam").getEffectiveLevel() > logging.ERROR:
        # Beam's worker also prints a failing bundle's traceback to stderr; the run reports the failure in one
        # line, and while Beam's log is hidden (no -v), so is that.
        sys.stderr = open(os.devnull, "w")
    # Beam's shared thread pool came over from the driver with idle threads that do not exist
    # here: work handed to them would never run. Start it empty.
    shared = thread_pool_executor.shared_unbounded_instance()
    type(shared).__init__(shared)
    sdk_worker_main.main([])
    _finished.set()
    conn.sendall(b"0")
    return 0


_finished = threading.Event()


def _exit_with(conn: socket.socket, lifeline: int) -> None:
    """Ends this worker when its client (Beam's handle on it) or the driver goes away."""
    select.select([conn, lifeline], [], [])
    if not _finished.is_set():
        os._exit(1)


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        part = conn.recv(size - len(data))
        if not part:
            raise ConnectionError("the worker client went away")
        data += part
    return data
