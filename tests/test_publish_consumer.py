"""The reference consumer (`bulk-export pull`) against a publisher that fails and one that changes while
it polls: a real `bulk-export serve` behind a real HTTP proxy (a thread) that answers 503 when told to
and records what it was asked and what it answered.

- 5xx: the consumer retries with doubling delays and finishes with the source's resources; with
  `--max-retries` it gives up (exit 4).
- Polling: a pull without `--once`, in its own process, reaches `#pending`, polls it with
  `If-None-Match` (the server answers 304), picks up the page a publish run links, and ends with exit 0
  on SIGTERM.
- Progress: on a terminal, a tqdm line of the pages and resources applied.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from launcher.cli import main as cli
from launcher.publish.folder import ROOT_NAME
from tests.gcs_emulator import free_port
from tests.helpers import _console
from tests.server_process import serve
from tests.test_progress_display import _on_terminal
from tests.test_publish import NAME, Source, _held

ROOT = Path(__file__).resolve().parents[1]
FORWARDED = ("content-type", "etag", "cache-control")


class FlakyProxy(http.server.ThreadingHTTPServer):
    """Forwards GETs to `upstream`; the next `fail` of them get 503 instead. `seen` records
    (path, If-None-Match, status answered)."""

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream, self.fail, self.seen, self.lock = upstream, 0, [], threading.Lock()
        self.client = httpx.Client(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(http.server.BaseHTTPRequestHandler):
    server: FlakyProxy

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        proxy, asked = self.server, self.headers.get("If-None-Match")
        with proxy.lock:
            failing = proxy.fail > 0
            proxy.fail -= failing
        if failing:
            status, body, headers = 503, b"busy", {}
        else:
            sent = {k: v for k, v in (("If-None-Match", asked), ("Authorization", self.headers.get("Authorization")))
                    if v}
            response = proxy.client.get(proxy.upstream + self.path, headers=sent)
            status, body = response.status_code, response.content
            headers = {k: response.headers[k] for k in FORWARDED if k in response.headers}
        with proxy.lock:
            proxy.seen.append((self.path, asked, status))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def behind_proxy(tmp_path, run_cli):
    """A source, a publication served by `bulk-export serve` and reached through a FlakyProxy."""
    source = Source(tmp_path / "src")
    out, port = tmp_path / "out", free_port()
    with serve(source.folder, out, tmp_path / "serve-state", "--auth", "none", port=port) as server:
        proxy = FlakyProxy(server.base_url)
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        public = f"{proxy.url}/publish/default/{NAME}"

        def publish():
            result = run_cli("publish", NAME, "--source", str(source.folder), "--output", str(out),
                             "--public-url", public, "--update-cadence", "PT1H", state_dir=tmp_path / "state")
            assert result.code == 0, result.err
            return result

        try:
            yield source, publish, proxy, f"{public}/{ROOT_NAME}"
        finally:
            proxy.shutdown()
            proxy.server_close()


def _pull(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["pull", *argv])
    return code, out.getvalue(), err.getvalue()


def test_503s_are_retried_with_doubling_delays_until_the_pull_finishes(behind_proxy, tmp_path):
    source, publish, proxy, root = behind_proxy
    source.put("Patient", "p1", 1)
    source.put("Observation", "o1", 1)
    source.save()
    publish()
    proxy.fail = 4
    code, out, err = _pull(root, "--into", str(tmp_path / "into"), "--once", "--retry-delay", "0.05s")
    assert code == 0, err
    assert _held(tmp_path / "into") == source.current()
    said = [line.rsplit(": ", 1)[1] for line in err.splitlines() if line.startswith("GET ")]
    assert said == ["503; retry 1 in 0.05 s", "503; retry 2 in 0.1 s", "503; retry 3 in 0.2 s",
                    "503; retry 4 in 0.4 s"], err
    assert [status for path, _, status in proxy.seen[:5]] == [503, 503, 503, 503, 200]
    assert {path for path, _, _ in proxy.seen[:5]} == {f"/publish/default/{NAME}/{ROOT_NAME}"}


def test_max_retries_bounds_the_retries(behind_proxy, tmp_path):
    source, publish, proxy, root = behind_proxy
    source.put("Patient", "p1", 1)
    source.save()
    publish()
    proxy.fail = 100
    code, _, err = _pull(root, "--into", str(tmp_path / "into"), "--once", "--retry-delay", "0.01s",
                         "--max-retries", "2")
    assert code == 4 and "503 after 3 attempts" in err, err
    assert len(proxy.seen) == 3


def test_a_polling_pull_waits_at_pending_with_304s_takes_the_next_page_and_stops_on_sigterm(behind_proxy, tmp_path):
    source, publish, proxy, root = behind_proxy
    source.put("Patient", "p1", 1)
    source.save()
    publish()
    into = tmp_path / "into"
    argv = [*_console(), "pull", root, "--into", str(into), "--interval", "0.2s"]
    log = tmp_path / "pull.log"
    with open(log, "wb") as sink:
        puller = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=sink, env=os.environ.copy())
    try:
        _until(lambda: any(status == 304 and etag for _, etag, status in list(proxy.seen)), log)
        assert _held(into) == source.current()
        source.put("Patient", "p2", 1)
        source.delete("Patient", "p1")
        source.save()
        publish()
        _until(lambda: _held(into) == source.current(), log)
        puller.send_signal(signal.SIGTERM)
        out, _ = puller.communicate(timeout=60)
    finally:
        if puller.poll() is None:
            puller.kill()
    assert puller.returncode == 0, log.read_text()
    assert out.decode().strip().endswith("as of " + _state_time(into)), out
    polled = [etag for path, etag, status in proxy.seen if status == 304]
    assert polled and all(polled)  # every 304 answered a conditional GET
    assert "1 resource(s) in, 1 deleted" in log.read_text()


def _until(done, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout_s} s:\n{log.read_text()}")
        time.sleep(0.1)


def _state_time(into: Path) -> str:
    import orjson

    return orjson.loads((into / ".pull.json").read_bytes())["transactionTime"]


def test_a_terminal_shows_the_pages_and_resources_applied(behind_proxy, tmp_path):
    source, publish, proxy, root = behind_proxy
    source.put("Patient", "p1", 1)
    source.put("Patient", "p2", 1)
    source.save()
    publish()
    source.put("Patient", "p3", 1)
    source.save()
    publish()
    code, output = _on_terminal([*_console(), "pull", root, "--into", str(tmp_path / "into"), "--once"],
                                timeout=120)
    assert code == 0, output
    assert "3 pages applied: 3 resources in, 0 deleted, as of" in output, output  # root, stub, update
    assert "\r" in output and "reading the root" in output, output
    assert _held(tmp_path / "into") == source.current()


