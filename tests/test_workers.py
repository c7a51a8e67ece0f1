"""The local runner's processes by default: one for a small source, forked workers for a large one
(`pipelines.workers`), on the command line and within `serve`'s worker budget."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest

from launcher.stores import open_store
from pipelines.settings import LOCAL_RUNNER
from pipelines.workers import (
    MIN_BYTES_ENV,
    MULTI_PROCESS_MIN_BYTES,
    WorkerBudget,
    WorkerChoice,
    choose_workers,
    estimated_chunks,
    machine_cores,
    multi_process_min_bytes,
)
from tests.helpers import _console
from tests.server_process import FHIR_HEADERS, poll, serve
from transforms.errors import Refused

ROOT = Path(__file__).resolve().parents[1]
LARGE = MULTI_PROCESS_MIN_BYTES
MULTI = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
needs_two_cores = pytest.mark.skipif(machine_cores() < 2, reason="forked workers need two cores")


# ---- the decision ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, chunks, cores, allowance, workers", [
    (0, 1, 2, None, 1),
    (LARGE - 1, 100, 8, None, 1),  # below the threshold: one process however many cores
    (LARGE, 100, 2, None, 2),
    (LARGE, 100, 8, None, 8),  # every core
    (LARGE, 3, 8, None, 3),  # no more workers than chunks
    (LARGE, 1, 8, None, 1),
    (LARGE, 100, 1, None, 1),  # one core
    (LARGE, 100, 8, 3, 3),  # what the budget still allows
    (LARGE, 100, 8, 1, 1),
    (LARGE, 100, 8, 0, 1),  # nothing free: still one process
    (None, None, 8, None, 1),  # a PostgreSQL table: its size is not known
])
def test_the_source_size_cores_chunks_and_allowance_choose_the_processes(size, chunks, cores, allowance, workers):
    choice = choose_workers([], size, chunks, cores, allowance)
    assert choice.workers == workers, choice
    assert choice.beam_args == (() if workers == 1 else
                                ("--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"))


@pytest.mark.parametrize("args", [["--runner=DirectRunner"], [f"--runner={LOCAL_RUNNER}"], ["--runner", "DirectRunner"],
                                  ["--job_name=x"]])
def test_the_local_runner_named_or_not_is_chosen_for(args):
    assert choose_workers(args, LARGE, 10, 2).workers == 2


@pytest.mark.parametrize("args", [["--direct_running_mode=in_memory"], ["--direct_num_workers=4"],
                                  ["--direct_running_mode", "multi_processing"], ["--direct_num_workers", "1"],
                                  ["--runner=DaskRunner"], ["--runner", "DataflowRunner"], ["--runner=FlinkRunner"]])
def test_explicit_runner_flags_and_other_runners_are_left_as_given(args):
    for size in (0, LARGE, None):
        choice = choose_workers(args, size, 10, 8)
        assert choice.workers == 0 and choice.beam_args == (), (args, choice)


def test_the_threshold_is_the_documented_knob_when_set(monkeypatch):
    assert multi_process_min_bytes() == MULTI_PROCESS_MIN_BYTES
    monkeypatch.setenv(MIN_BYTES_ENV, "1000")
    assert multi_process_min_bytes() == 1000
    assert choose_workers([], 1000, 2, 2).workers == 2 and choose_workers([], 999, 2, 2).workers == 1
    monkeypatch.setenv(MIN_BYTES_ENV, "lots")
    with pytest.raises(Refused, match=MIN_BYTES_ENV):
        multi_process_min_bytes()


def test_chunks_are_estimated_per_file():
    chunk = 4 << 20
    files = [("a.ndjson", chunk * 3), ("b.ndjson", chunk + 1), ("c.ndjson", 1), ("d.ndjson", 0),
             ("e.ndjson.gz", chunk * 10), ("f.json", chunk * 10)]
    assert estimated_chunks(files, chunk) == 3 + 2 + 1 + 0 + 1 + 1


# ---- the budget --------------------------------------------------------------------------------------------


def _choose(size: int):
    return lambda allowance: choose_workers([], size, 100, 2, allowance)


def test_the_budget_lends_what_is_free_at_least_one_process_and_takes_it_back():
    budget = WorkerBudget(3)
    with budget.hold(_choose(LARGE)) as (first, held):
        assert (first.workers, held) == (2, 2)
        with budget.hold(_choose(LARGE)) as (second, held):
            assert (second.workers, second.beam_args, held) == (1, (), 3)  # one free: one process
        with budget.hold(lambda allowance: choose_workers(list(MULTI), LARGE, 100, 2, allowance)) as (given, held):
            assert (given.workers, held) == (0, 2)  # explicit flags: as given, and nothing taken
    assert budget.held == 0
    with pytest.raises(RuntimeError):  # a failed or cancelled run gives its workers back too
        with budget.hold(_choose(LARGE)):
            raise RuntimeError("the run failed")
    assert budget.held == 0


def test_concurrent_holders_never_lose_count():
    budget = WorkerBudget(4)
    seen: list[int] = []

    def export():
        for _ in range(300):
            with budget.hold(_choose(LARGE)) as (choice, held):
                seen.append(held)

    threads = [threading.Thread(target=export) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert budget.held == 0
    assert max(seen) <= 4  # three exports of at most 2 each, lent only what was free
    with pytest.raises(ValueError):
        WorkerBudget(0)


# ---- the command line --------------------------------------------------------------------------------------


def _export(source: Path, out: Path, *args: str, env: dict | None = None) -> tuple[str, dict[str, list[str]]]:
    """Runs `bulk-export export -v`; returns its stderr and the exported lines per file name, sorted."""
    done = subprocess.run([*_console(), "export", "-v", "--source", str(source), "--output", str(out),
                           "--state-dir", str(out / "state"), *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    lines = defaultdict(list)
    for path in out.glob("default/*/*.ndjson"):
        lines[re.sub(r"\.\d+\.ndjson$", "", path.name)] += path.read_text().splitlines()
    return done.stderr, {name: sorted(found) for name, found in lines.items()}


@needs_two_cores
def test_a_large_source_runs_on_forked_workers_and_exports_what_one_process_does(sample_dir, tmp_path):
    large = {MIN_BYTES_ENV: "1000"}  # the sample is "large" from 1,000 bytes on
    log, forked = _export(sample_dir, tmp_path / "forked", env=large)
    chosen = re.search(r"job (\S+): 2 forked worker processes, because the source \([\d.]+ MB\) is at least", log)
    assert chosen, log
    # The job records the options the user gave, none: a resume decides again.
    assert open_store(str(tmp_path / "forked" / "state")).run_spec(chosen.group(1))["beam_args"] == []
    log, one = _export(sample_dir, tmp_path / "one", "--direct_running_mode=in_memory", env=large)
    assert "forked worker processes" not in log and "the runner's processes are as its options say" in log, log
    assert forked == one and sum(len(lines) for lines in one.values()) > 400


def test_a_small_source_stays_in_one_process(sample_dir, tmp_path):
    log, exported = _export(sample_dir, tmp_path / "out")
    assert re.search(r"job \S+: one process, because the source \([\d.]+ MB\) is smaller than", log), log
    assert exported


# ---- serve -------------------------------------------------------------------------------------------------

_HELD = re.compile(r"job (\S+): (one process|(\d+) forked worker processes), because .*; (\d+) of the server's"
                   r" (\d+) worker processes held")


@needs_two_cores
def test_concurrent_exports_of_a_server_share_its_worker_budget(sample_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(MIN_BYTES_ENV, "1000")
    # Small chunks: each export runs long enough for the next kick-off to find it running.
    with serve(sample_dir, tmp_path / "out", tmp_path / "state", "--worker-budget", "3", "--chunk-bytes", "2048") \
            as server, httpx.Client(timeout=30) as client:
        urls = []
        for _ in range(2):
            response = client.get(server.fhir + "/$export", headers=FHIR_HEADERS)
            assert response.status_code == 202, response.text
            urls.append(response.headers["Content-Location"])
        assert all(poll(client, url).status_code == 200 for url in urls)
        for url in urls:  # audited once the run has given its workers back
            _wait_for(server.log, f"job {url.rsplit('/', 1)[1]} complete")
        lone = client.get(server.fhir + "/$export", headers=FHIR_HEADERS).headers["Content-Location"]
        assert poll(client, lone).status_code == 200
        log = server.log.read_text()
    lines = {m.group(1): m for m in _HELD.finditer(log)}
    jobs = [url.rsplit("/", 1)[1] for url in [*urls, lone]]
    assert set(jobs) <= set(lines), log
    assert all(int(lines[job].group(5)) == 3 and int(lines[job].group(4)) <= 3 for job in jobs), log
    assert any(lines[job].group(3) == "2" for job in jobs[:2]), log  # the first to start took two
    assert lines[jobs[2]].group(3) == "2" and lines[jobs[2]].group(4) == "2", log  # all given back: two again


def _wait_for(log: Path, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{log.read_text()}"
        time.sleep(0.1)


@needs_two_cores
def test_a_budget_of_one_keeps_every_export_in_one_process(sample_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(MIN_BYTES_ENV, "1000")
    with serve(sample_dir, tmp_path / "out", tmp_path / "state", "--worker-budget", "1") as server, \
            httpx.Client(timeout=30) as client:
        url = client.get(server.fhir + "/$export", headers=FHIR_HEADERS).headers["Content-Location"]
        assert poll(client, url).status_code == 200
        log = server.log.read_text()
    line = _HELD.search(log)
    assert line and line.group(2) == "one process" and "only 1 worker process is free" in line.group(0), log


def test_worker_choice_without_workers_adds_no_options():
    assert WorkerChoice(0, "given").beam_args == WorkerChoice(1, "small").beam_args == ()
