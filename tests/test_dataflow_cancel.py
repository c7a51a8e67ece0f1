"""Cancelling a Dataflow-submitted export reaches Dataflow: `PUT .../jobs/<id>` with `JOB_STATE_CANCELLED`.

Dataflow is played by a real HTTP server on loopback (`DATAFLOW_ENDPOINT`), as
the GCS emulator plays GCS: the request the launcher sends is the one
Dataflow's REST API (`projects.locations.jobs.update`) takes.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading

import pytest

from launcher.jobs.dataflow import ENDPOINT_ENV
from launcher.stores import SqliteJobStore
from tests.helpers import _record

RUNNER_JOB = {"runner": "dataflow", "project": "acme-health", "region": "europe-west4",
              "job_id": "2026-11-28_05_01_02-123456789"}


@contextlib.contextmanager
def fake_dataflow(status: int = 200):
    """A loopback server answering Dataflow's jobs.update; yields the list of requests it got."""
    received: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append({"path": self.path, "body": body})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"id": RUNNER_JOB["job_id"], **body}).encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def submitted(tmp_path):
    """A running job the Flex Template submitted to Dataflow, as the store records it."""
    store = SqliteJobStore(str(tmp_path / "state"))
    store.create(_record("job-1"))
    store.mark_in_progress("job-1")
    store.set_runner_job("job-1", RUNNER_JOB)
    return store


def test_cancel_asks_dataflow_to_cancel_the_recorded_job(submitted, run_cli, tmp_path, monkeypatch):
    with fake_dataflow() as (endpoint, received):
        monkeypatch.setenv(ENDPOINT_ENV, endpoint)
        result = run_cli("cancel", "job-1", "--tenant", "acme", state_dir=tmp_path / "state")
    assert result.code == 0, result.err
    assert received == [{"path": "/v1b3/projects/acme-health/locations/europe-west4/jobs/" + RUNNER_JOB["job_id"],
                         "body": {"requestedState": "JOB_STATE_CANCELLED"}}]
    assert submitted.status("job-1").value == "cancelled"


def test_a_refusal_by_dataflow_is_audited_and_the_cancel_stands(submitted, run_cli, tmp_path, monkeypatch):
    with fake_dataflow(status=403) as (endpoint, received):
        monkeypatch.setenv(ENDPOINT_ENV, endpoint)
        result = run_cli("cancel", "job-1", "--tenant", "acme", state_dir=tmp_path / "state")
    assert result.code == 0 and len(received) == 1
    assert submitted.status("job-1").value == "cancelled"
    events = [json.loads(line) for line in (tmp_path / "state" / "audit" / "acme.ndjson").read_text().splitlines()]
    assert "Dataflow refused to cancel job" in events[-1]["outcomeDesc"]


def test_a_job_without_an_engine_job_asks_nothing(run_cli, tmp_path, monkeypatch):
    store = SqliteJobStore(str(tmp_path / "state"))
    store.create(_record("job-2"))
    with fake_dataflow() as (endpoint, received):
        monkeypatch.setenv(ENDPOINT_ENV, endpoint)
        assert run_cli("cancel", "job-2", "--tenant", "acme", state_dir=tmp_path / "state").code == 0
    assert received == [] and store.runner_job("job-2") is None
