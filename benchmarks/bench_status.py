"""Benchmark: what one status answer of `bulk-export serve` costs the server, beside the code before a change.

`ab` (Debian's apache2-utils, a client in C, so the client's own CPU is not the server's) polls the
status URL of a complete sample export with `--concurrency` clients for `--seconds` (idle), then, with
`--exports N`, the status URL of one of N exports running meanwhile (busy: issue 28's "8 exports run
and 20 clients poll", p99 <= 50 ms and no answer >= 150 ms). The server's CPU per answer is read from
`/proc/<pid>/stat`. With `--before TREE` the same runs on that source tree too, the trees alternating
round by round. Nothing else should run meanwhile. (`bench_server.py`'s pollers are one Python
process of asyncio clients, whose own CPU, on a small machine, dominates the latency they see.)

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
from benchmarks.bench_server import _kick_off, _until_complete  # noqa: E402
from launcher.tools.sample_data import generate  # noqa: E402
from tests.server_process import ROOT, serve  # noqa: E402


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_case(root: Path, code: Path, source: Path, exports: int, concurrency: int, seconds: int) -> dict:
    """`ab` on a complete job's status URL (idle), then on a running one's while `exports` run (busy)."""
    async def kick_off(server, n: int, wait: bool) -> list[str]:
        async with httpx.AsyncClient(timeout=120) as client:
            urls = await _kick_off(client, server, n)
            for url in urls if wait else ():
                await _until_complete(client, url, 0.1)
            return urls

    figures = {}
    args = ("--chunk-bytes", "4096", "--max-active-per-tenant", "64")  # small chunks: the exports outlast ab
    with serve(source, root / "out", root / "state", *args, code=code) as server:
        [done] = asyncio.run(kick_off(server, 1, True))
        figures["idle"] = _ab(server.process.pid, done, concurrency, seconds)
        if exports:
            running = asyncio.run(kick_off(server, exports, False))
            figures["busy"] = _ab(server.process.pid, running[0], concurrency, seconds)
            still = sum(httpx.get(url, timeout=60).status_code == 202 for url in running)
            figures["busy"]["running_at_end"] = still
            for url in running:
                httpx.delete(url, timeout=120)
    return figures


def _ab(pid: int, url: str, concurrency: int, seconds: int) -> dict:
    """Answers per second, the server's CPU per answer, ab's p50, p99 and longest answer, and failures."""
    before = _cpu_s(pid)
    out = subprocess.run(["ab", "-c", str(concurrency), "-t", str(seconds), "-n", "10000000", url],
                         capture_output=True, text=True, check=True).stdout
    cpu = _cpu_s(pid) - before
    answers = int(re.search(r"Complete requests:\s+(\d+)", out).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    percent = dict(re.findall(r"^\s+(\d+)%\s+(\d+)", out, re.M))
    return {"per_s": answers / seconds, "cpu_ms": cpu / answers * 1000, "p50": int(percent["50"]),
            "p99": int(percent["99"]), "max": int(percent["100"]), "failed": failed,
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a source tree of the code before, run alternately")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=20, help="clients polling at once (default 20)")
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--exports", type=int, default=8, help="exports running in the busy case (0: none)")
    parser.add_argument("--patients", type=int, default=2500, help="generated patients of the exports' source")
    args = parser.parse_args()
    if shutil.which("ab") is None:
        print("bench_status: needs `ab` (apt-get install apache2-utils)", file=sys.stderr)
        return 2
    trees = {"after": ROOT} if args.before is None else {"before": args.before.resolve(), "after": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        generate(source, patients=args.patients, seed=3)
        for n in range(args.rounds):
            for name, tree in trees.items():
                figures = status_case(Path(tmp) / f"{name}-{n}", tree, source, args.exports, args.concurrency,
                                      args.seconds)
                for case, r in figures.items():
                    running = f", {args.exports} exports running, {r['running_at_end']} still at the end" \
                        if case == "busy" else ""
                    print(f"round {n + 1} [{name}] {case}: {r['per_s']:.0f} answers/s, server CPU {r['cpu_ms']:.2f} ms"
                          f" per answer, p50 {r['p50']} ms p99 {r['p99']} ms longest {r['max']} ms"
                          f" ({args.concurrency} clients{running}; {r['failed']} failed, {r['non_2xx']} not 2xx)",
                          flush=True)
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
