"""Benchmark: `bulk-export serve` as its clients see it, beside a baseline measured in the same run.

1. Kick-off and status latency (p50, p99) while 4 exports run and 20 clients poll.
   Target: status p99 <= 100 ms.
2. Download throughput of one 256 MiB NDJSON part over HTTP, beside a plain read
   of the same file in this process. Target: >= 0.5x the plain read.

Run: `.venv/bin/python benchmarks/bench_server.py` (add `--small` for a quick smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launcher.tools.sample_data import generate  # noqa: E402
from tests.server_process import FHIR_HEADERS, poll, serve  # noqa: E402

_MIB = 1 << 20
# Each client polls every 0.2 s: ten times as often as the server's Retry-After (2 s) asks.
POLL_EVERY_S = 0.2


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency_case(root: Path, patients: int, poll_s: float) -> dict:
    """4 long exports running, 20 clients polling their status URLs, kick-offs of small exports meanwhile.

    The clients are asyncio tasks in one thread, so the figures are the server's, not this
    process's threads contending for its GIL."""
    source = root / "latency-source"
    generate(source, patients=patients, seed=3)
    args = ("--chunk-bytes", "4096", "--max-active-per-tenant", "64")
    with serve(source, root / "latency-out", root / "latency-state", *args) as server:
        return asyncio.run(_measure(server, poll_s))


async def _measure(server, poll_s: float) -> dict:
    """Phase 1: 20 clients poll while the 4 exports run. Phase 2: the same, plus a kick-off every 0.5 s."""
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        running = [(await client.get(server.fhir + "/$export", headers=FHIR_HEADERS)).headers["Content-Location"]
                   for _ in range(4)]
        quiet = await _phase(client, server, running, poll_s, kick_off=False)
        busy = await _phase(client, server, running, poll_s, kick_off=True)
        still = sum([(await client.get(url)).status_code == 202 for url in running])
        for url in running + busy["started"]:
            await client.delete(url)
    return {"status_p50": percentile(quiet["status"], 50), "status_p99": percentile(quiet["status"], 99),
            "polls": len(quiet["status"]), "busy_status_p99": percentile(busy["status"], 99),
            "kickoff_p50": percentile(busy["kickoff"], 50), "kickoff_p99": percentile(busy["kickoff"], 99),
            "kickoffs": len(busy["kickoff"]), "running_at_end": still}


async def _phase(client: httpx.AsyncClient, server, running: list[str], seconds: float, kick_off: bool) -> dict:
    status_ms: list[float] = []
    kickoff_ms: list[float] = []
    started: list[str] = []
    stop = time.monotonic() + seconds

    async def poller(n: int) -> None:
        while time.monotonic() < stop:
            t = time.perf_counter()
            code = (await client.get(running[n % 4])).status_code
            status_ms.append((time.perf_counter() - t) * 1000)
            assert code in (200, 202), code
            await asyncio.sleep(POLL_EVERY_S)

    async def kick_offs() -> None:
        while kick_off and time.monotonic() < stop - 1:
            t = time.perf_counter()
            response = await client.get(server.fhir + "/$export?_type=Organization", headers=FHIR_HEADERS)
            kickoff_ms.append((time.perf_counter() - t) * 1000)
            assert response.status_code == 202, response.text
            started.append(response.headers["Content-Location"])
            await asyncio.sleep(0.5)

    await asyncio.gather(*(poller(n) for n in range(20)), kick_offs())
    return {"status": status_ms, "kickoff": kickoff_ms, "started": started}


def big_observations(folder: Path, size: int) -> None:
    """One NDJSON file of distinct Observations, `size` bytes or a little less."""
    folder.mkdir(parents=True, exist_ok=True)
    line = {"resourceType": "Observation", "id": "", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body height"}]},
            "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 170.2, "unit": "cm"},
            "note": [{"text": "x" * 400}]}
    with open(folder / "Observation.ndjson", "wb") as f:
        written, n = 0, 0
        while True:
            line["id"] = f"obs-{n}"
            data = orjson.dumps(line) + b"\n"
            if written + len(data) > size:
                return
            f.write(data)
            written, n = written + len(data), n + 1


def download_case(root: Path, size: int) -> dict:
    """One part of about `size` bytes, downloaded over HTTP and read plainly from disk."""
    source = root / "download-source"
    big_observations(source, size)
    limits = ("--max-bytes-per-part", str(size), "--max-lines-per-part", str(size // 100))
    with serve(source, root / "download-out", root / "download-state", *limits) as server, \
            httpx.Client(timeout=300) as client:
        response = client.get(server.fhir + "/$export?_type=Observation", headers=FHIR_HEADERS)
        entry = poll(client, response.headers["Content-Location"], timeout_s=600).json()["output"][0]
        local = root / "download-out" / entry["url"].split("/files/", 1)[1]
        plain = []
        for _ in range(3):
            t = time.perf_counter()
            with open(local, "rb") as f:
                total = sum(len(block) for block in iter(lambda: f.read(_MIB), b""))
            plain.append(total / (time.perf_counter() - t))
        http = [_curl_download(entry["url"], total) for _ in range(3)]
    return {"bytes": total, "plain_mb_s": max(plain) / _MIB, "http_mb_s": max(http) / _MIB}


def _curl_download(url: str, size: int) -> float:
    """Bytes per second of one download by curl (a client in C, as download tools are), to /dev/null."""
    done = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
                          capture_output=True, text=True, check=True)
    received, seconds = done.stdout.split()
    assert int(received) == size, (received, size)
    return int(received) / float(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run (smoke test): small data, short polling")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        latency = latency_case(root, patients=60 if args.small else 2500, poll_s=3 if args.small else 15)
        download = download_case(root, (8 if args.small else 256) * _MIB)
    print(f"status   p50 {latency['status_p50']:6.1f} ms  p99 {latency['status_p99']:6.1f} ms  "
          f"({latency['polls']} polls by 20 clients, each every {POLL_EVERY_S} s, 4 exports running; "
          "target p99 <= 100 ms)")
    print(f"kick-off p50 {latency['kickoff_p50']:6.1f} ms  p99 {latency['kickoff_p99']:6.1f} ms  "
          f"({latency['kickoffs']} kick-offs, one every 0.5 s, during a second phase of the same polling; "
          f"status p99 then {latency['busy_status_p99']:.1f} ms)")
    ratio = download["http_mb_s"] / download["plain_mb_s"]
    print(f"download {download['http_mb_s']:7.0f} MB/s over HTTP vs {download['plain_mb_s']:7.0f} MB/s plain read "
          f"of the same {download['bytes'] / _MIB:.0f} MiB part: {ratio:.2f}x (target >= 0.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
