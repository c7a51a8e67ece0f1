"""Benchmark: what one status answer of `bulk-export serve` costs the server, beside the code before a change.

`ab` (Debian's apache2-utils, a client in C, so the client's own CPU is not the server's) polls the
status URL of a complete sample export with `--concurrency` clients for `--seconds`; the server's CPU
per answer is read from `/proc/<pid>/stat`. With `--before TREE` the same runs on that source tree
too, the trees alternating round by round. Nothing else should run meanwhile.

Run: `.venv/bin/python benchmarks/bench_status.py --before /tmp/before` (`git archive` of the code before).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import machine  # noqa: E402
from benchmarks.bench_server import SAMPLE, _kick_off, _until_complete  # noqa: E402
from tests.server_process import ROOT, serve  # noqa: E402


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_case(root: Path, code: Path, concurrency: int, seconds: int) -> dict:
    """Answers per second, the server's CPU per answer, and ab's p50 and p99, polling a complete job."""
    async def complete_job(server) -> str:
        async with httpx.AsyncClient(timeout=120) as client:
            [url] = await _kick_off(client, server, 1)
            await _until_complete(client, url, 0.1)
            return url

    with serve(SAMPLE, root / "out", root / "state", code=code) as server:
        url = asyncio.run(complete_job(server))
        before = _cpu_s(server.process.pid)
        out = subprocess.run(["ab", "-c", str(concurrency), "-t", str(seconds), "-n", "10000000", url],
                             capture_output=True, text=True, check=True).stdout
        cpu = _cpu_s(server.process.pid) - before
    answers = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    percent = dict(re.findall(r"^\s+(\d+)%\s+(\d+)", out, re.M))
    return {"per_s": answers / seconds, "cpu_ms": cpu / answers * 1000, "p50": int(percent["50"]),
            "p99": int(percent["99"]), "failed": failed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a source tree of the code before, run alternately")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=20, help="clients polling at once (default 20)")
    parser.add_argument("--seconds", type=int, default=6)
    args = parser.parse_args()
    if shutil.which("ab") is None:
        print("bench_status: needs `ab` (apt-get install apache2-utils)", file=sys.stderr)
        return 2
    trees = {"after": ROOT} if args.before is None else {"before": args.before.resolve(), "after": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for name, tree in trees.items():
                r = status_case(Path(tmp) / f"{name}-{n}", tree, args.concurrency, args.seconds)
                print(f"round {n + 1} [{name}] {r['per_s']:.0f} answers/s, server CPU {r['cpu_ms']:.2f} ms per answer,"
                      f" p50 {r['p50']} ms p99 {r['p99']} ms ({args.concurrency} clients, {r['failed']} failed)",
                      flush=True)
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
