"""A real `bulk-export serve` in a subprocess on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

from tests.gcs_emulator import free_port

ROOT = Path(__file__).resolve().parents[1]
FHIR_HEADERS = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


class Server:
    """A running server: its base URL, its process and where it keeps state."""

    def __init__(self, process: subprocess.Popen, base_url: str, state_dir: Path, log: Path):
        self.process, self.base_url, self.state_dir, self.log = process, base_url, state_dir, log

    @property
    def fhir(self) -> str:
        return self.base_url + "/fhir"

    def kill(self) -> None:
        """SIGKILL, as a crash would: the server's process group, pipelines included."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)


@contextlib.contextmanager
def serve(source: Path, output: Path, state_dir: Path, *extra: str, ready_s: float = 60,
          port: int | None = None, code: Path = ROOT) -> Iterator[Server]:
    """Starts the server (on `port`, or a free one; of the source tree `code`) and waits until it answers
    `GET [base]/metadata`; stops it afterwards."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    log = state_dir.parent / f"server-{port}.log"
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "launcher", "serve", "--source", str(source), "--output", str(output),
            "--state-dir", str(state_dir), "--port", str(port), *extra]
    with open(log, "wb") as sink:
        env = {**os.environ, "PYTHONPATH": str(code)} if code != ROOT else None
        process = subprocess.Popen(argv, cwd=code, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(process, base, state_dir, log)
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}):\n{log.read_text()}")
            try:
                if httpx.get(server.fhir + "/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()


def poll(client: httpx.Client, url: str, timeout_s: float = 120) -> httpx.Response:
    """Polls a status URL until it is no longer 202; returns the last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(url)
        if response.status_code != 202:
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"still running after {timeout_s} s: {response.headers}")
        time.sleep(0.2)
