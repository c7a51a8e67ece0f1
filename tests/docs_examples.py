"""The shell examples of README.md and docs/*.md that use the bundled sample, run as written.

A doc file's examples are one reader's session: its blocks run in order, in one scratch
folder (a copy of `sample-data/`, a fresh state folder), sharing shell variables. `bulk-export`
and `. .venv/bin/activate` are this venv's; `make export` and `make serve` run the Makefile's
own recipes with this venv (never rebuilding it). What a reader fills in by hand is filled in
here (PLACEHOLDERS), and the server of `make serve` runs on a free port instead of 8080. `curl`
fails on an HTTP error, so a refused request fails its example.

A fence right after `<!-- docs-test: skip (REASON) -->` is not run. Run as a script
(`python tests/docs_examples.py job|url`), this module prints a placeholder's value.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = ("sh", "bash", "shell")
# An example uses the bundled sample when it names it, runs the Makefile's targets on it, or
# talks to `make serve`'s server.
USES_SAMPLE = re.compile(r"sample-data|\bmake (export|serve)\b|127\.0\.0\.1:8080|\$BASE\b")
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->\s*\Z")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```", re.M | re.S)
STARTS_SERVER = re.compile(r"^\s*make serve\b", re.M)
DEFAULT_PORT = "8080"
# What a reader copies from an earlier answer: the newest job, and a file of its manifest.
PLACEHOLDERS = {"JOB_ID": "job", "<job-id>": "job", "<an output[].url>": "url", "<url>": "url"}
# Examples another change fixes (the text that marks them): expected to fail until it lands.
KNOWN_BROKEN = {"docs/server.md": "Patient/123"}
BLOCK_TIMEOUT_S = 600
SERVER_ENV = "DOCS_EXAMPLES_SERVER"


@dataclass
class Block:
    """One fenced shell example: where it is, its text, and why it is skipped (if it is)."""

    doc: str
    line: int
    body: str
    skip: str | None = None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass
class Outcome:
    """What a session's blocks did: those that failed (with their output), and those expected to."""

    failed: list[str] = field(default_factory=list)
    known_broken: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)


def blocks(doc: Path) -> list[Block]:
    """The doc's fenced shell examples that use the bundled sample, skipped ones included."""
    text = doc.read_text(encoding="utf-8")
    found = []
    for fence in FENCE.finditer(text):
        body = fence.group("body")
        if fence.group("lang") not in SHELLS or not USES_SAMPLE.search(body):
            continue
        before = text[:fence.start()].rstrip().rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        found.append(Block(doc.relative_to(ROOT).as_posix() if doc.is_relative_to(ROOT) else doc.name,
                           text.count("\n", 0, fence.start()) + 1, body, skip and skip.group("reason")))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """A reader's scratch folder and shell: the tools on PATH, the variables kept between blocks."""

    def __init__(self, scratch: Path):
        self.work, self.tools = scratch / "work", scratch / "tools"
        self.vars, self.log = scratch / "vars.sh", scratch / "log"
        self.log.mkdir(parents=True)
        shutil.copytree(ROOT / "sample-data", self.work / "sample-data")
        venv = Path(sys.prefix)
        (self.work / ".venv").symlink_to(venv, target_is_directory=True)
        self.tools.mkdir()
        curl, make = shutil.which("curl"), shutil.which("make")
        _script(self.tools / "curl",
                "# an HTTP error fails the example; a reader's pipe closed early (| head) does not\n"
                f'{curl} --fail-with-body "$@"; rc=$?\n[ "$rc" -eq 23 ] && exit 0\nexit "$rc"\n')
        stamps = " ".join(f"-o .venv/{name}" for name in (".installed-stamp", ".test-stamp", ".interpreter"))
        _script(self.tools / "make",
                "# the Makefile's own recipes, on this venv, which is never rebuilt (-o: taken as up to date)\n"
                f'exec {make} --no-print-directory -f {ROOT / "Makefile"} VENV=.venv {stamps} "$@"\n')
        _script(self.tools / "docs_example", f'exec {sys.executable} {Path(__file__)} "$@"\n')
        self.port = str(free_port())
        self.env = {**os.environ, "PATH": f"{self.tools}:{venv / 'bin'}:{os.environ['PATH']}",
                    "PORT": self.port, SERVER_ENV: f"http://127.0.0.1:{self.port}/fhir"}
        self.server: subprocess.Popen | None = None

    def script(self, block: Block) -> str:
        """The block as a reader types it, with placeholders and the server's port filled in."""
        body = block.body.replace(f"127.0.0.1:{DEFAULT_PORT}", f"127.0.0.1:{self.port}")
        for text, kind in PLACEHOLDERS.items():
            body = body.replace(text, f"$(docs_example {kind})")
        return (f"set -e -o pipefail -a\n[ -f {self.vars} ] && . {self.vars}\n{body}\n"
                f"export -p > {self.vars}.new && mv {self.vars}.new {self.vars}\n")

    def run(self, block: Block) -> str | None:
        """Runs one block; None if it passed, else what went wrong."""
        log = self.log / f"{block.line}.log"
        if STARTS_SERVER.search(block.body):
            return self._start_server(block, log)
        with open(log, "wb") as sink:
            try:
                code = subprocess.run(["bash", "-c", self.script(block)], cwd=self.work, env=self.env,
                                      stdout=sink, stderr=subprocess.STDOUT, timeout=BLOCK_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        return None if code == 0 else _failure(block, f"exit {code}", self.script(block), log)

    def _start_server(self, block: Block, log: Path) -> str | None:
        with open(log, "wb") as sink:
            self.server = subprocess.Popen(["bash", "-c", self.script(block)], cwd=self.work, env=self.env,
                                           stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        import httpx

        deadline = time.monotonic() + 120
        while self.server.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.env[SERVER_ENV]}/metadata", timeout=2).status_code == 200:
                    return None
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        return _failure(block, f"the server did not answer (exit {self.server.poll()})", self.script(block), log)

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait(30)


def run_session(doc_blocks: list[Block], scratch: Path) -> Outcome:
    """Runs a doc's examples in order in one session; a failed block does not stop the next."""
    outcome, session = Outcome(), Session(scratch)
    try:
        for block in doc_blocks:
            if block.skip:
                continue
            outcome.ran.append(block.where)
            problem = session.run(block)
            if problem is None:
                continue
            broken = KNOWN_BROKEN.get(block.doc)
            (outcome.known_broken if broken and broken in block.body else outcome.failed).append(problem)
    finally:
        session.close()
    return outcome


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _failure(block: Block, what: str, script: str, log: Path) -> str:
    output = log.read_text(errors="replace")[-4000:]
    return f"{block.where}: {what}\n--- as run:\n{script}--- output (end):\n{output}"


# ---- placeholders: run as `docs_example job|url` from inside a block --------------------------------


def _newest_job() -> str:
    """The id of the newest job in the state folder, once it has finished (and is complete)."""
    from launcher.stores import open_store
    from pipelines.models import ExportStatus

    store = open_store(".bulk-export", read_only=True)
    deadline = time.monotonic() + BLOCK_TIMEOUT_S
    while True:
        jobs = sorted(store.list("default", include_terminal=True), key=lambda job: job.created_at)
        if jobs and jobs[-1].status is ExportStatus.COMPLETE:
            return jobs[-1].job_id
        if jobs and jobs[-1].status.is_terminal:
            sys.exit(f"docs_example: the newest job {jobs[-1].job_id} is {jobs[-1].status.value}")
        if time.monotonic() > deadline:
            sys.exit("docs_example: no complete job")
        time.sleep(0.3)


def _first_output_url() -> str:
    """The first output file's URL in the newest job's manifest, as `make serve`'s server gives it."""
    import httpx

    manifest = httpx.get(f"{os.environ[SERVER_ENV]}/bulk-status/{_newest_job()}", timeout=30).json()
    return manifest["output"][0]["url"]


if __name__ == "__main__":
    print({"job": _newest_job, "url": _first_output_url}[sys.argv[1]]())
