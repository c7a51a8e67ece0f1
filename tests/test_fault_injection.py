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
import time
from pathlib import Path

import pytest

from launcher.stores import ANY_OWNER, open_store
from launcher.tools.sample_data import generate
from tests.server_process import ROOT
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
