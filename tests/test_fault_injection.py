"""Faults survived, as a figure (issue 26): SIGKILL the launcher at random moments, resume, and the output
is byte-identical to an uninterrupted run's, with the same counts and no stray file.

`BULK_EXPORT_FAULT_TRIALS` sets the number of kills (20 by default); `BULK_EXPORT_FAULT_SEED` the seed of
their moments (printed, so a failure can be replayed). The manual run of 200 trials is in
benchmarks/README.md ("Faults survived").

Each trial runs `bulk-export export` as a subprocess and, once its job is recorded, kills the launcher
only, with SIGKILL, after a delay drawn uniformly over how long the job of an uninterrupted run lasted
(measured first, from its recording to the launcher's exit): every kill lands in the job's life,
whatever the machine's load does to the launcher's start. Its pipeline child dies with it by design (the
lifeline). The phase the kill hit is told from what it left: no job, parts only in the attempt's
temporary folder (`write`) or nothing yet (`read`), final part names (`renames`), a manifest
(`manifest`), or a complete job (`done`). After its lease lapses the job is resumed
(`bulk-export resume JOB`).

What is compared, against the uninterrupted run: per kind (output, error, deleted) and type, the
sorted lines of the files the manifest lists, byte for byte, and the manifest's summed counts. Lines,
not files: how records split into parts (and so the part names) depends on bundle order, which
differs between two uninterrupted runs too; every line is one whole resource, so equal sorted lines
are equal output. And no stray file: the job's folder holds exactly the listed files and the
manifest (no temporary folder, no hidden manifest), and the output root nothing but the job's folder.

The server's test kills `bulk-export serve` while a client polls, then while it downloads, restarts it
on the same port and state each time, and the client finishes with the uninterrupted export's output.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from launcher.stores import ANY_OWNER, open_store
from launcher.tools.sample_data import generate
from tests.gcs_emulator import free_port
from tests.server_process import FHIR_HEADERS, ROOT, serve
from transforms.storage.layout import MANIFEST_NAME, TEMP_DIR_NAME

TRIALS = int(os.environ.get("BULK_EXPORT_FAULT_TRIALS", "20"))
SEED = int(os.environ.get("BULK_EXPORT_FAULT_SEED", "2026"))
LEASE = ["--lease", "1s"]  # a killed launcher's job is reaped, and so resumable, 1 s after its last renewal
SHAPE = ["--max-lines-per-part", "100"]


def _export(source: Path, output: Path, state: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launcher", "export", "--source", str(source),
                             "--output", str(output), "--state-dir", str(state), *SHAPE, *LEASE],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _jobs(state: Path) -> list:
    return open_store(str(state)).list("default", ANY_OWNER, include_terminal=True) \
        if (state / "jobs.sqlite3").exists() else []


def _snapshot(job_dir: Path) -> dict:
    """Per kind and type, the sorted lines of the manifest's files and their summed counts; and whether
    the job's folder holds exactly those files and the manifest (no temporary folder, no hidden file)."""
    manifest = json.loads((job_dir / MANIFEST_NAME).read_text())
    lines: dict = collections.defaultdict(list)
    counts: collections.Counter = collections.Counter()
    listed = {MANIFEST_NAME}
    for kind in ("output", "error", "deleted"):
        for entry in manifest.get(kind, []):
            path = Path(entry["url"].removeprefix("file://"))
            listed.add(str(path.relative_to(job_dir)))
            lines[kind, entry["type"]].extend(path.read_bytes().splitlines())
            counts[kind, entry["type"]] += entry["count"]
    held = {str(p.relative_to(job_dir)) for p in job_dir.rglob("*") if p.is_file()}
    folders = {str(p.relative_to(job_dir)) for p in job_dir.rglob("*") if p.is_dir()}
    return {"lines": {k: sorted(v) for k, v in lines.items()}, "counts": dict(counts),
            "stray": sorted(held - listed) + sorted(f + "/" for f in folders - {"error", "deleted"})}


def _phase(state: Path, output: Path) -> str:
    """Which phase a kill hit, told from the store and the files it left."""
    jobs = _jobs(state)
    if not jobs:
        return "before the job"
    job = jobs[0]
    if job.status.value == "complete":
        return "done"
    job_dir = output / "default" / job.job_id
    names = [p.name for p in job_dir.iterdir()] if job_dir.exists() else []
    if any(n == MANIFEST_NAME or n.startswith(f".{MANIFEST_NAME}.") for n in names):
        return "manifest"
    if any(n.endswith(".ndjson") for n in names):
        return "renames"
    temp = [p for p in job_dir.glob(f"{TEMP_DIR_NAME}-*") if any(p.iterdir())] if job_dir.exists() else []
    return "write" if temp else "read"


def _wait_for_job(state: Path, export: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not _jobs(state) and export.poll() is None:
        assert time.monotonic() < deadline, "the export never recorded its job"
        time.sleep(0.02)


def _wait_for_lapse(state: Path, job_id: str) -> None:
    store = open_store(str(state))
    deadline = time.monotonic() + 30
    while (lease := store.lease(job_id)) is not None and lease.expires_ms >= time.time() * 1000:
        assert time.monotonic() < deadline
        time.sleep(0.1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The source, an uninterrupted run's snapshot, and how long (s) its job lasted."""
    root = tmp_path_factory.mktemp("faults")
    source = root / "source"
    generate(source, patients=20, seed=21)
    output, state = root / "out", root / "state"
    export = _export(source, output, state)
    _wait_for_job(state, export)
    recorded = time.monotonic()
    assert export.wait(120) == 0
    lasted = time.monotonic() - recorded
    expected = _snapshot(output / "default" / _jobs(state)[0].job_id)
    assert expected["lines"] and expected["stray"] == []
    return source, expected, lasted


def test_a_launcher_killed_at_random_moments_resumes_to_the_same_output(reference, run_cli, tmp_path):
    source, expected, lasted = reference
    rng = random.Random(SEED)
    print(f"fault injection: {TRIALS} trials, seed {SEED}, kills 0-{lasted:.2f} s after the job is recorded")
    phases: collections.Counter = collections.Counter()
    failures = []
    for trial in range(TRIALS):
        output, state = tmp_path / f"out-{trial}", tmp_path / f"state-{trial}"
        delay = rng.uniform(0, lasted)
        export = _export(source, output, state)
        try:
            _wait_for_job(state, export)
            time.sleep(delay)
            with contextlib.suppress(ProcessLookupError):
                os.kill(export.pid, signal.SIGKILL)  # the launcher only
            export.wait(30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(export.pid, signal.SIGKILL)  # its fork server, were it still there
        phase = _phase(state, output)
        phases[phase] += 1
        jobs = _jobs(state)
        if phase == "before the job":
            done = run_cli("export", "--source", str(source), "--output", str(output), *SHAPE, state_dir=state)
        elif phase != "done":
            _wait_for_lapse(state, jobs[0].job_id)
            if _jobs(state)[0].status.value == "complete":  # a last step kept whole ended after the kill
                phase = "done"
            else:
                done = run_cli("resume", jobs[0].job_id, state_dir=state)
        if phase != "done" and done.code != 0:
            failures.append((trial, delay, phase, done.err))
            continue
        job = _jobs(state)[0]
        roots = sorted(p.name for p in output.iterdir()), sorted(p.name for p in (output / "default").iterdir())
        if roots != (["default"], [job.job_id]):
            failures.append((trial, delay, phase, f"the output root holds {roots}"))
            continue
        got = _snapshot(output / "default" / job.job_id)
        if got != expected:
            differ = [key for key in expected if got[key] != expected[key]]
            failures.append((trial, delay, phase, f"{differ} differ; stray files: {got['stray']}"))
    print(f"fault injection: {TRIALS} trials, {len(failures)} failures, phases hit: {dict(sorted(phases.items()))}")
    assert failures == [], failures


class _Client(threading.Thread):
    """A Bulk Data client that rides out a server's death: it retries what fails to connect, kicks off
    again a job that failed with its server, and resumes a cut download with `Range`. After the first
    chunk of its first download it signals `downloading` and waits for `go_on`, so that the server can be
    killed while the file is half read."""

    def __init__(self, base: str, kickoff: str):
        super().__init__(daemon=True)
        self.base, self.kickoff = base, kickoff
        self.polling, self.downloading, self.go_on = threading.Event(), threading.Event(), threading.Event()
        self.kickoffs = self.download_retries = 0
        self.failed_jobs: list[str] = []  # the diagnostics of each job that failed, so was kicked off again
        self.result: dict | BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.Client(timeout=30) as http:
                self.result = self._export(http)
        except BaseException as exc:  # reported by the test
            self.result = exc

    def _retry(self, call):
        deadline = time.monotonic() + 120
        while True:
            try:
                return call()
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server never came back"
                time.sleep(0.2)

    def _export(self, http: httpx.Client) -> dict:
        while True:
            kicked = self._retry(lambda: http.get(self.base + self.kickoff, headers=FHIR_HEADERS))
            assert kicked.status_code == 202, kicked.text
            self.kickoffs += 1
            status_url = kicked.headers["Content-Location"]
            while (answer := self._retry(lambda: http.get(status_url))).status_code == 202:
                self.polling.set()
                time.sleep(0.2)
            if answer.status_code == 200:
                break
            assert answer.status_code == 500 and "failed" in answer.text, answer.text  # died with its server
            self.failed_jobs.append(answer.json()["issue"][0]["diagnostics"])
        lines: dict = collections.defaultdict(list)
        for entry in sorted(answer.json()["output"], key=lambda e: -e["count"]):  # the largest first
            lines["output", entry["type"]].extend(self._download(http, entry["url"]).splitlines())
        return {key: sorted(value) for key, value in lines.items()}

    def _download(self, http: httpx.Client, url: str) -> bytes:
        data = b""
        while True:
            headers = {"Range": f"bytes={len(data)}-", "Accept-Encoding": "identity"} if data else {}
            try:
                with http.stream("GET", url, headers=headers) as response:
                    assert response.status_code == (206 if data else 200), response.status_code
                    for chunk in response.iter_bytes(65536):
                        data += chunk
                        if not self.downloading.is_set():
                            self.downloading.set()
                            self.go_on.wait(120)
                return data
            except httpx.TransportError:
                self.download_retries += 1
                time.sleep(0.2)


def test_a_server_killed_while_a_client_polls_and_downloads_is_restarted_and_the_client_finishes(run_cli, tmp_path):
    """Killed once while the client polls a running job (the job fails with its server; the client kicks
    off again) and once while it downloads (it resumes with `Range`); it ends with the output of an
    uninterrupted export."""
    source, output, state = tmp_path / "source", tmp_path / "out", tmp_path / "state"
    generate(source, patients=800, seed=4)
    local = run_cli("export", "--source", str(source), "--output", str(tmp_path / "local"),
                    "--kickoff", "http://x/fhir/$export?_type=Observation,Patient", state_dir=tmp_path / "local-state")
    assert local.code == 0, local.err
    expected = _snapshot(local.manifest_path.parent)
    args = ("--chunk-bytes", "65536", "--lease", "6s", "--maintenance-interval", "1s")
    port = free_port()
    with serve(source, output, state, *args, port=port) as first:
        client = _Client(first.fhir, "/$export?_type=Observation,Patient")
        client.start()
        assert client.polling.wait(120), client.result
        first.kill()
    with serve(source, output, state, *args, port=port) as second:
        assert client.downloading.wait(240), client.result
        second.kill()
    client.go_on.set()
    with serve(source, output, state, *args, port=port):
        client.join(240)
    assert not client.is_alive() and isinstance(client.result, dict), client.result
    assert client.result == expected["lines"]
    print(f"server faults: {client.kickoffs} kick-offs, {client.download_retries} download retries,"
          f" failed jobs: {client.failed_jobs}")
    assert client.kickoffs >= 2 and client.download_retries >= 1  # the first job died with its server
