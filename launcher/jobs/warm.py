"""A warm process that this user's CLI exports fork their pipeline from: Beam imported once, not per command.

`bulk-export warm` starts one and returns when it has imported Beam and the export; it stays until
`--idle` has passed with no export using it, or `bulk-export warm --stop`. `export` and `resume` use
it when one is running for the same key, and start their own fork server otherwise
(`launcher.jobs.fork_server`): a missing, stale or dying warm process changes how soon a run starts,
never what it does.

- **Key.** The interpreter (executable, version, flags, `sys.path`), the installed distributions (the
  names in each site folder), our own code (path, size and mtime of every file of `launcher`,
  `pipelines` and `transforms`, the R4 definitions included) and the environment (but `PWD`, `OLDPWD`, `SHLVL`, `_`). A change to
  any of them is another key, so an old process is never asked to run new code.
- **Who may use it.** Its socket lives in a folder of the user's own, mode 0700 (`$XDG_RUNTIME_DIR/
  bulk-export`, else `/tmp/bulk-export-UID`); a folder of another owner, or open to others, is not used.
- **The run** is the one the command's own fork server would fork (`multiprocessing`'s forkserver,
  the same preload, the same pickled process): it gets the command's stdout and stderr, environment,
  umask, niceness and working folder, and dies with the command (`launcher.jobs.process`'s lifeline).
Standard library only, like `fork_server`: the command line looks for the process before its imports.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import time
from multiprocessing import forkserver, popen_forkserver, reduction, resource_tracker, spawn, util
from multiprocessing.context import ForkServerProcess, set_spawning_popen
from typing import Callable, Optional

from transforms.storage.socket_folder import SOCKET_PATH_MAX

OUR_PACKAGES = ("launcher", "pipelines", "transforms")
_VOLATILE_ENV = {"PWD", "OLDPWD", "SHLVL", "_"}
READY_TIMEOUT_S = 120.0
_KEY_CHARS = 24
_SOCKET_NAME_BYTES = len("/") + _KEY_CHARS + len(".sock.new")
_ATTACHED: dict = {}  # the warm process this command forks from: its socket, and the open use-lock


class WarmRefused(OSError):
    """The warm process's folder cannot be trusted or used; says why in one line."""


def runtime_dir(create: bool = False) -> str:
    """The user's own folder for warm processes (made 0700 when `create`); refused when another user owns
    it or others may enter it."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = os.path.join(base, "bulk-export") if base else os.path.join("/tmp", f"bulk-export-{os.getuid()}")
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise WarmRefused(f"{path} is not a folder of this user's alone (mode 0700): no warm process is used")
    if len(os.fsencode(path)) + _SOCKET_NAME_BYTES > SOCKET_PATH_MAX:
        raise WarmRefused(f"{path} is too long a folder for a socket: set XDG_RUNTIME_DIR to a shorter one")
    return path


def key() -> str:
    """What a warm process must share with a command to run its export (see the module's docstring)."""
    digest = hashlib.sha256()
    for part in (sys.executable, sys.version, repr(sys.flags), repr(sys.warnoptions), repr(sys._xoptions),
                 repr(sys.path)):
        digest.update(part.encode() + b"\0")
    for folder in sys.path:
        if folder.endswith(("site-packages", "dist-packages")) and os.path.isdir(folder):
            digest.update("\0".join(sorted(os.listdir(folder))).encode())
    for name in OUR_PACKAGES:
        spec = importlib.util.find_spec(name)
        for root in (spec.submodule_search_locations or []) if spec else []:
            modules = []
            for folder, subfolders, files in os.walk(root):
                subfolders[:] = [d for d in subfolders if d != "__pycache__"]
                modules += (os.path.join(folder, file) for file in files)  # the R4 definitions too
            for module in sorted(modules):
                info = os.stat(module)
                digest.update(f"{module}:{info.st_size}:{info.st_mtime_ns}\0".encode())
    env = sorted((k, v) for k, v in os.environ.items() if k not in _VOLATILE_ENV)
    digest.update(repr(env).encode())
    return digest.hexdigest()[:_KEY_CHARS]


class _Paths:
    """A warm process's files: its socket, the keeper's pid (locked while it lives), and the use-lock
    each export holds shared while it runs (its mtime: the last use)."""

    def __init__(self, folder: str, name: str):
        self.socket = os.path.join(folder, f"{name}.sock")
        self.keeper = os.path.join(folder, f"{name}.pid")
        self.use = os.path.join(folder, f"{name}.use")
        self.log = os.path.join(folder, f"{name}.log")


def _paths(create: bool = False) -> _Paths:
    return _Paths(runtime_dir(create), key())


def _keeper_alive(paths: _Paths) -> Optional[int]:
    """The keeper's pid when it is alive (it holds its pid file locked), else None."""
    try:
        with open(paths.keeper, "r") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return int(file.read().strip() or 0) or None
            return None
    except (OSError, ValueError):
        return None


def attach(paths: Optional[_Paths] = None) -> bool:
    """Uses the warm process of this command's key (`paths`: its files, when known already), if one runs:
    later runs are forked from it. False (and nothing changed) when there is none, or its folder cannot
    be trusted."""
    try:
        paths = paths or _paths()
        pid = _keeper_alive(paths)
        if pid is None or not os.path.exists(paths.socket):
            return False
        use = os.open(paths.use, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    fcntl.flock(use, fcntl.LOCK_SH)  # held while this command runs: the keeper does not stop meanwhile
    os.utime(use)
    _ATTACHED.update(socket=paths.socket, use=use, pid=pid)
    return True


def attached() -> Optional[int]:
    """The keeper's pid of the warm process this command forks from, or None."""
    return _ATTACHED.get("pid") if _ATTACHED.get("socket") else None


def detach() -> None:
    """Forks from the command's own fork server from now on (the warm process failed to start a run)."""
    _ATTACHED.pop("socket", None)
    use = _ATTACHED.pop("use", None)
    if use is not None:
        os.close(use)  # its lock too: a stopping keeper need not wait for this command


def start_process(target: Callable, args: tuple, name: str) -> ForkServerProcess:
    """A started process running `target(*args)`, forked from the warm process with this command's stdout,
    stderr, environment, umask and niceness. Raises OSError or EOFError, with no process started, when
    the warm process cannot be reached."""
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    stdio = (_InheritedFd(1), _InheritedFd(2))
    process = _WarmProcess(target=_warm_main, args=(stdio, dict(os.environ), _umask(), niceness, target, args),
                           name=name)
    process.start()
    return process


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _warm_main(stdio, env, umask, niceness, target, args) -> None:
    for fd, inherited in zip((1, 2), stdio):
        os.dup2(inherited.fd, fd)
        os.close(inherited.fd)
    os.environ.clear()
    os.environ.update(env)
    os.umask(umask)
    if niceness > os.getpriority(os.PRIO_PROCESS, 0):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    target(*args)


class _InheritedFd:
    """A file descriptor of the command, duplicated into the forked run as the forkserver passes pipes."""

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        return _rebuild_fd, (reduction.DupFd(self.fd),)


def _rebuild_fd(dup) -> _InheritedFd:
    return _InheritedFd(dup.detach())


class _WarmPopen(popen_forkserver.Popen):
    """`multiprocessing`'s forkserver client, addressed to the warm process instead of a fork server of
    this process's own (which `ensure_running` would start): the same request, pickles and replies."""

    def _launch(self, process_obj) -> None:
        prep_data = spawn.get_preparation_data(process_obj._name)
        buf = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = _connect(self._fds)
        _parent_w = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (_parent_w, self.sentinel))
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _WarmProcess(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        return _WarmPopen(process_obj)


def _connect(fds: list[int]) -> tuple[int, int]:
    """The forkserver request: the child's pipes, an "alive" descriptor (the use-lock: a run holds the
    warm process in use until it ends), the resource tracker's, then the pickled objects' own."""
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(_ATTACHED["socket"])
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        try:
            reduction.sendfds(client, [child_r, child_w, _ATTACHED["use"], resource_tracker.getfd(), *fds])
            return parent_r, parent_w
        except BaseException:
            os.close(parent_r)
            os.close(parent_w)
            raise
        finally:
            os.close(child_r)
            os.close(child_w)


# --- the keeper: `bulk-export warm` starts it detached; it runs the fork server and stops it when idle ---

def start(idle_s: float, preload: list[str]) -> tuple[int, bool]:
    """Starts the warm process of this command's key unless one runs; its keeper's pid once a run can be
    forked from it, and whether it was started now. Raises WarmRefused when the folder cannot be trusted
    or it does not start."""
    paths = _paths(create=True)
    keeper = None
    if _keeper_alive(paths) is None:
        code = (f"import sys; sys.path[:] = {sys.path!r}; from launcher.jobs.warm import _keep;"
                f" _keep({idle_s!r}, {preload!r})")
        # Its own errors, and its fork server's, go to a log beside its socket (never a source value: it runs none).
        with open(os.open(paths.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as log:
            keeper = subprocess.Popen([sys.executable, *util._args_from_interpreter_flags(), "-c", code], cwd="/",
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not attach(paths):  # the key once, not at each look
        if time.monotonic() > deadline or (keeper is not None and keeper.poll() is not None):
            raise WarmRefused(f"the warm process did not start; its log: {paths.log}")
        time.sleep(0.05)
    probe = start_process(os.getpid, (), "warm-up")  # returns once the fork server has imported its preload
    probe.join(READY_TIMEOUT_S)
    return attached(), keeper is not None


def stop(on_wait: Callable[[int], None]) -> Optional[int]:
    """Asks the warm process of this command's key to stop, and returns once it has: its keeper's pid, or
    None when none runs. Running exports end first; `on_wait(pid)` is called once if that takes a while."""
    paths = _paths(create=True)
    pid = _keeper_alive(paths)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        waited = time.monotonic()
        while _keeper_alive(paths) is not None:
            if waited is not None and time.monotonic() - waited > 1.0:
                on_wait(pid)
                waited = None
            time.sleep(0.05)
    return pid


def status() -> tuple[Optional[int], Optional[float]]:
    """The keeper's pid of this key's warm process, and when an export last used it (epoch s)."""
    paths = _paths(create=True)
    pid = _keeper_alive(paths)
    with contextlib.suppress(OSError):
        return pid, (os.stat(paths.use).st_mtime if pid else None)
    return pid, None


def _keep(idle_s: float, preload: list[str]) -> None:
    """The keeper's life: lock its pid file, run the fork server, and stop it once idle or asked to."""
    paths = _paths()
    keeper = open(os.open(paths.keeper, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600), "a+")
    if not _lock_for_life(keeper):
        return  # another keeper of the same key runs
    keeper.truncate(0)
    keeper.write(str(os.getpid()))
    keeper.flush()
    use = os.open(paths.use, os.O_RDWR | os.O_CREAT, 0o600)
    os.utime(use)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    with socket.socket(socket.AF_UNIX) as listener:
        bound = f"{paths.socket}.new"  # then renamed: a client never finds a socket not yet listening
        with contextlib.suppress(FileNotFoundError):
            os.unlink(bound)
        listener.bind(bound)
        os.chmod(bound, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
        code = (f"from multiprocessing.forkserver import main; import sys; sys.path[:] = {sys.path!r};"
                f" main({listener.fileno()}, {alive_r}, {preload!r})")
        # The interpreter's flags as multiprocessing passes them to its own fork server.
        server = subprocess.Popen([sys.executable, *util._args_from_interpreter_flags(), "-c", code],
                                  pass_fds=(listener.fileno(), alive_r), cwd="/")
        os.close(alive_r)
        os.rename(bound, paths.socket)
    while not stopping and server.poll() is None and not _idle(use, idle_s):
        time.sleep(min(1.0, idle_s / 4))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(paths.socket)  # no new run from here on
    fcntl.flock(use, fcntl.LOCK_EX)  # running exports end first
    os.close(alive_w)  # the fork server exits
    server.wait()


def _lock_for_life(keeper) -> bool:
    """Takes the keeper's pid file for this process's life; False when another keeper holds it (a command
    that looks for a keeper holds it shared for an instant, hence the retries)."""
    for _ in range(50):
        try:
            fcntl.flock(keeper, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.01)
    return False


def _idle(use: int, idle_s: float) -> bool:
    """True when no export holds the warm process and none has used it for `idle_s`."""
    try:
        fcntl.flock(use, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    try:
        return time.time() - os.fstat(use).st_mtime >= idle_s
    finally:
        fcntl.flock(use, fcntl.LOCK_UN)
