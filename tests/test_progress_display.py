"""The export's progress display: the real CLI on a pseudo-terminal (a tqdm bar that ends at 100%),
through a pipe (plain lines, no control characters), cancelled (never 100%), and the display's own
rules on real job snapshots (never backwards, 100% only when complete)."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from launcher.cli.progress import PROGRESS_EVERY_ENV, ProgressDisplay
from launcher.stores import StoredJob, open_store
from launcher.tools.sample_data import generate
from pipelines.models import ExportRequest, ExportStatus, TypeProgress
from tests.helpers import _console

ROOT = Path(__file__).resolve().parents[1]
PERCENT = re.compile(r"(\d+)%\|")  # the bar's percentage, as tqdm draws it
ESCAPES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # control characters other than tab and newline


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Enough data that, read in small chunks, an export runs past the launcher's first reports (the run
    reports every 2 s; with 2,000 patients a run that reads the source once could end before its first)."""
    out = tmp_path_factory.mktemp("source")
    generate(out, patients=5000, seed=3)
    return out


def _export(source: Path, tmp_path: Path, chunk_bytes: int = 8192) -> list[str]:
    return [*_console(), "export", "--source", str(source), "--chunk-bytes", str(chunk_bytes), "--output",
            str(tmp_path / "out"), "--state-dir", str(tmp_path / "state")]


def _on_terminal(argv: list[str], while_running: Optional[Callable[[str], bool]] = None,
                 timeout: float = 300) -> tuple[int, str]:
    """Runs `argv` with a 100x24 pseudo-terminal as stdin, stdout and stderr; returns its exit code and
    everything it wrote. `while_running(output so far)` is called as output arrives until it returns True."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        os.execvp(argv[0], argv)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    output, deadline, waiting = b"", time.monotonic() + timeout, while_running is not None
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 1.0)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
                if waiting and while_running(output.decode(errors="replace")):
                    waiting = False
        else:
            raise AssertionError(f"still running after {timeout} s:\n{output.decode(errors='replace')}")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode()


def _percentages(output: str) -> list[int]:
    return [int(p) for p in PERCENT.findall(output)]


def test_a_terminal_shows_a_bar_with_time_rate_and_counts_that_ends_at_100(source, tmp_path):
    code, output = _on_terminal(_export(source, tmp_path))
    assert code == 0, output
    shown = _percentages(output)
    assert shown and shown == sorted(shown), output  # never backwards
    assert shown[-1] == 100 and 100 not in shown[:shown.index(100)], output
    running = [p for p in shown if p != 100]
    assert running and max(running) <= 99, output  # drawn while running, and short of 100% then
    assert "elapsed" in output and "resources/s" in output and re.search(r"of [\d.]+ MB read", output), output
    assert re.search(r"Observation [\d,]+", output), output  # the counts per type
    final = re.search(r"\n  complete: ([\d,]+) resources in (\d+) files, [\d.]+ s, [\d,]+ resources/s\r\n", output)
    assert final and int(final[2]) >= 8, output
    assert f"complete: {final[1]} resources in 8 types" in output  # the summary on stdout agrees


def test_a_pipe_gets_plain_lines_and_an_informative_final_line(source, tmp_path):
    done = subprocess.run(_export(source, tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, PROGRESS_EVERY_ENV: "0"})  # a line for every report
    assert done.returncode == 0, done.stderr
    assert not ESCAPES.search(done.stderr), repr(done.stderr)
    lines = done.stderr.splitlines()
    running = [line for line in lines if line.startswith("  in-progress: ")]
    assert running and all(re.fullmatch(r"  in-progress: \d+% of [\d.]+ MB read, [\d.]+ s elapsed(, ETA [\d.]+ s)?,"
                                        r" [\d,]+ resources/s, [\d,]+ resources written", line) for line in running), lines
    shown = [int(re.search(r"(\d+)%", line)[1]) for line in running]
    assert shown == sorted(shown) and max(shown) <= 99, lines
    assert re.fullmatch(r"  complete: [\d,]+ resources in \d+ files \(Observation [\d,]+, .*\), [\d.]+ s,"
                        r" [\d,]+ resources/s", lines[-1]), lines


def test_a_cancelled_export_says_so_and_never_shows_100(source, tmp_path):
    state, cancels = tmp_path / "state", []

    def cancel_once_drawn(output: str) -> bool:
        if not any(0 < p < 100 for p in _percentages(output)):
            return False
        job = open_store(str(state)).list("default")[0]
        cancels.append(subprocess.Popen([*_console(), "cancel", job.job_id, "--state-dir", str(state)], cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        return True  # the export's output is read on meanwhile, so it never blocks on a full terminal

    # Smaller chunks: slow enough that the bar is drawn below 100% before the export could end, on any machine.
    code, output = _on_terminal(_export(source, tmp_path, chunk_bytes=1024), cancel_once_drawn)
    assert cancels and cancels[0].wait(timeout=120) == 0, cancels[0].stdout.read()
    assert code == 1, output
    assert 100 not in _percentages(output), output
    assert re.search(r"\n  cancelled at \d+% of the source read after [\d.]+ s, [\d,]+ resources written\r\n", output)
    assert "complete" not in output, output


# ---- the display's rules, on job snapshots as a store returns them --------------------------------


def _snapshot(status: ExportStatus, read: int, counts: dict[str, int], total: int = 1000) -> StoredJob:
    return StoredJob(job_id="j", tenant="default", level="system", request=ExportRequest(request_url="u"),
                     request_url="u", transaction_time="t", created_at="t", output_dir="/o", status=status,
                     total_bytes=total, read_bytes=read,
                     progress=[TypeProgress(type=name, exported=n) for name, n in counts.items()])


def test_the_percentage_never_goes_back_and_is_100_only_when_complete():
    stream = io.StringIO()
    running = ExportStatus.IN_PROGRESS
    with ProgressDisplay(stream, every_s=0) as display:
        display(_snapshot(running, 500, {"Patient": 5}))
        display(_snapshot(running, 400, {"Patient": 6}))  # e.g. a report that counted less
        display(_snapshot(running, 1000, {"Patient": 7}))  # all read, not yet complete
        display.finish(_snapshot(ExportStatus.COMPLETE, 1000, {"Patient": 9, "Group": 1}), files=2)
    lines = stream.getvalue().splitlines()
    assert [line.split(" of ")[0] for line in lines[:3]] == ["  in-progress: 50%", "  in-progress: 50%",
                                                            "  in-progress: 99%"]
    assert re.fullmatch(r"  complete: 10 resources in 2 files \(Patient 9, Group 1\), [\d.]+ s, [\d,]+ resources/s",
                        lines[3]), lines


def test_plain_lines_come_once_per_interval_and_a_failure_adds_none():
    stream = io.StringIO()
    with pytest.raises(RuntimeError):
        with ProgressDisplay(stream, every_s=3600) as display:
            for read in (100, 200, 300):
                display(_snapshot(ExportStatus.IN_PROGRESS, read, {"Patient": read}))
            raise RuntimeError("the pipeline failed")
    # none before the first hour is up; the CLI's error line is the last word
    assert stream.getvalue() == ""


def test_quiet_shows_no_progress_on_a_terminal_only_the_result(source, tmp_path):
    code, output = _on_terminal([*_export(source, tmp_path), "-q"])
    assert code == 0, output
    assert not _percentages(output) and "elapsed" not in output and "resources/s" not in output, output
    assert "  complete:" not in output, output  # the display's final line is progress too
    assert re.search(r"complete: [\d,]+ resources in 8 types", output), output  # the command's result, on stdout
