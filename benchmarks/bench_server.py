"""Benchmark: `bulk-export serve` as its clients see it, each figure beside its baseline measured in the same run.

1. Kick-off to a complete status of the sample export (a client polling every 20 ms): the first after
   start-up, kicked off the moment the server answers, and later ones. Target <= 0.2 s.
2. Status latency (p50, p99, the longest gap between two answers) while N exports run and M clients poll
   flat out, beside the same clients polling finished jobs with nothing running. Target p99 <= 50 ms, no stall.
3. What the polling costs the exports: N exports timed to their end without pollers and with the M
   pollers, alternating. Target <= 10 %.
4. Download throughput of one NDJSON part by curl, beside a raw read of the same bytes in this process:
   identity (target >= 0.8x), and gzip (the first download compresses and stores; later ones send the
   stored bytes; beside a raw read of the compressed bytes, target >= 0.5x); and curl reading the same
   files itself (file://), the client's own ceiling.

`--before TREE` runs every case on a second source tree too (e.g. `git archive` of the code before a
change), the two trees alternating case by case, so the machine's drift hits both alike.

Run: `.venv/bin/python benchmarks/bench_server.py` (add `--small` for a quick smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import machine  # noqa: E402
from launcher.tools.sample_data import generate  # noqa: E402
from tests.server_process import FHIR_HEADERS, ROOT, serve  # noqa: E402
from transforms.storage.layout import gzip_cache_path  # noqa: E402

_MIB = 1 << 20
STALL_MS = 150  # a gap this long between two answers, with every client waiting, is a stall
SAMPLE = ROOT / "sample-data"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def _until_complete(client: httpx.AsyncClient, url: str, every_s: float) -> None:
    while (response := await client.get(url)).status_code == 202:
        await asyncio.sleep(every_s)
    assert response.status_code == 200, response.text


def kickoff_case(root: Path, code: Path, later: int, settle_s: float) -> dict:
    """The sample export kicked off the moment the server answers, then `later` times more, one at a time; and
    on a second server, kicked off once its log says the pipeline process is warm (or after `settle_s`)."""
    async def measure(server, times: int) -> list[float]:
        seconds = []
        async with httpx.AsyncClient(timeout=120) as client:
            for _ in range(times):
                started = time.perf_counter()
                response = await client.get(server.fhir + "/$export", headers=FHIR_HEADERS)
                assert response.status_code == 202, response.text
                await _until_complete(client, response.headers["Content-Location"], 0.02)
                seconds.append(time.perf_counter() - started)
        return seconds

    with serve(SAMPLE, root / "out", root / "state", code=code) as server:
        seconds = asyncio.run(measure(server, 1 + later))
    with serve(SAMPLE, root / "out2", root / "state2", code=code) as server:
        deadline = time.monotonic() + settle_s
        while b"pipeline process is warm" not in server.log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.1)
        settled = asyncio.run(measure(server, 1))[0]
    return {"first": seconds[0], "later": statistics.median(seconds[1:]), "settled": settled}


async def _poll_flat_out(client: httpx.AsyncClient, urls: list[str], pollers: int, seconds: float) -> dict:
    """`pollers` clients asking the status URLs with no pause for `seconds`: latencies, errors, answer times."""
    latencies: list[float] = []
    answered: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def poller(n: int) -> None:
        nonlocal errors
        while (started := time.perf_counter()) < stop:
            try:
                code = (await client.get(urls[n % len(urls)])).status_code
            except httpx.HTTPError:
                code = 0
            now = time.perf_counter()
            errors += code not in (200, 202)
            latencies.append((now - started) * 1000)
            answered.append(now)

    await asyncio.gather(*(poller(n) for n in range(pollers)))
    answered.sort()
    gaps = [(b - a) * 1000 for a, b in zip(answered, answered[1:])]
    return {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99), "polls": len(latencies),
            "errors": errors, "max_gap": max(gaps, default=0.0), "stalls": sum(g >= STALL_MS for g in gaps)}


async def _kick_off(client: httpx.AsyncClient, server, n: int) -> list[str]:
    urls = []
    for _ in range(n):
        response = await client.get(server.fhir + "/$export", headers=FHIR_HEADERS)
        assert response.status_code == 202, response.text
        urls.append(response.headers["Content-Location"])
    return urls


def latency_case(root: Path, code: Path, source: Path, exports: int, pollers: int, seconds: float) -> dict:
    """Polling while `exports` exports run (read in small chunks, so they outlast it), beside the same polling
    of finished jobs with nothing running."""
    async def measure(server) -> dict:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=pollers + 8)) as client:
            done = await _kick_off(client, server, 2)
            for url in done:
                await _until_complete(client, url, 0.2)
            idle = await _poll_flat_out(client, done, pollers, seconds / 2)
            running = await _kick_off(client, server, exports)
            busy = await _poll_flat_out(client, running, pollers, seconds)
            still = sum([(await client.get(url)).status_code == 202 for url in running])
            for url in running:
                await client.delete(url)
        return {"idle": idle, "busy": busy, "running_at_end": still}

    args = ("--chunk-bytes", "4096", "--max-active-per-tenant", "64")
    with serve(source, root / "out", root / "state", *args, code=code) as server:
        return asyncio.run(measure(server))


def polling_cost_case(root: Path, code: Path, source: Path, exports: int, pollers: int, rounds: int) -> dict:
    """`exports` exports timed to their end, alone and under `pollers` clients polling flat out, alternating."""
    async def one(server, client: httpx.AsyncClient, polled: bool) -> float:
        started = time.perf_counter()
        urls = await _kick_off(client, server, exports)
        stop = asyncio.Event()

        async def pollers_until_done() -> None:
            while not stop.is_set():
                await _poll_flat_out(client, urls, pollers, 0.5)

        load = asyncio.create_task(pollers_until_done()) if polled else None
        for url in urls:  # one light watcher: a poll a second per export at most
            await _until_complete(client, url, 1.0)
        elapsed = time.perf_counter() - started
        stop.set()
        if load is not None:
            await load
        return elapsed

    async def measure(server) -> dict:
        times: dict[bool, list[float]] = {False: [], True: []}
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=pollers + 8)) as client:
            for _ in range(rounds):
                for polled in (False, True):
                    times[polled].append(await one(server, client, polled))
        return {"alone": statistics.median(times[False]), "polled": statistics.median(times[True])}

    with serve(source, root / "out", root / "state", "--max-active-per-tenant", "64", code=code) as server:
        return asyncio.run(measure(server))


def big_observations(folder: Path, size: int) -> None:
    """One NDJSON file of distinct Observations, `size` bytes or a little less."""
    folder.mkdir(parents=True, exist_ok=True)
    line = {"resourceType": "Observation", "id": "", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Body height"}]},
            "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 170.2, "unit": "cm"},
            "note": [{"text": f"reading {n % 977} of a series, taken at rest"} for n in range(8)]}
    with open(folder / "Observation.ndjson", "wb") as f:
        written, n = 0, 0
        while True:
            line["id"] = f"obs-{n}"
            line["valueQuantity"]["value"] = 150 + n % 500 / 10
            line["subject"]["reference"] = f"Patient/{hashlib.sha1(str(n).encode()).hexdigest()}"
            data = orjson.dumps(line) + b"\n"
            if written + len(data) > size:
                return
            f.write(data)
            written, n = written + len(data), n + 1


def download_case(root: Path, code: Path, source: Path, size: int, tries: int) -> dict:
    """One part of about `size` bytes: downloads by curl, identity and gzip, beside raw reads of the same bytes."""
    limits = ("--max-bytes-per-part", str(size), "--max-lines-per-part", str(size // 100))
    with serve(source, root / "out", root / "state", *limits, code=code) as server, \
            httpx.Client(timeout=600) as client:
        response = client.get(server.fhir + "/$export?_type=Observation", headers=FHIR_HEADERS)
        url = response.headers["Content-Location"]
        while (status := client.get(url)).status_code == 202:
            time.sleep(0.2)
        entry = status.json()["output"][0]
        local = root / "out" / entry["url"].split("/files/", 1)[1]
        identity = max(_curl(entry["url"], False) for _ in range(tries))
        first_gzip = _curl(entry["url"], True)
        stored = Path(gzip_cache_path(str(local)))
        gzip = max(_curl(entry["url"], True) for _ in range(tries))
        if not stored.exists():  # a server that stores no copy: the same compression, made here
            stored = root / "compressed.gz"
            stored.write_bytes(zlib.compress(local.read_bytes(), 1, wbits=31))
        raw = max(_raw_read(local) for _ in range(tries))
        raw_gz = max(_raw_read(stored) for _ in range(tries))
        # The client's own ceiling: curl reading the same files with no server and no socket.
        curl_file = max(_curl(local.as_uri(), False) for _ in range(tries))
        curl_file_gz = max(_curl(stored.as_uri(), False) for _ in range(tries))
    return {"bytes": local.stat().st_size, "gz_bytes": stored.stat().st_size, "identity": identity, "raw": raw,
            "first_gzip": first_gzip, "gzip": gzip, "raw_gz": raw_gz, "curl_file": curl_file,
            "curl_file_gz": curl_file_gz}


def _raw_read(path: Path) -> float:
    """Bytes per second of a plain read of `path` in 1 MiB blocks (as `cat` does, from the page cache)."""
    started = time.perf_counter()
    with open(path, "rb") as f:
        total = sum(len(block) for block in iter(lambda: f.read(_MIB), b""))
    return total / (time.perf_counter() - started)


def _curl(url: str, gzip: bool) -> float:
    """Bytes per second on the wire of one download by curl (a client in C, as download tools are), to /dev/null."""
    encoding = ["-H", "Accept-Encoding: gzip"] if gzip else ["-H", "Accept-Encoding: identity"]
    done = subprocess.run(["curl", "-sS", "-o", "/dev/null", *encoding, "-w", "%{size_download} %{time_total}", url],
                          capture_output=True, text=True, check=True)
    received, seconds = done.stdout.split()
    return int(received) / float(seconds)


def _pairs(trees: dict[str, Path], case) -> dict[str, dict]:
    """`case(tree)` for each tree, in turn."""
    return {name: case(tree) for name, tree in trees.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run (smoke test): small data, short polling")
    parser.add_argument("--exports", type=int, default=8, help="exports running while clients poll (default 8)")
    parser.add_argument("--pollers", type=int, default=20, help="clients polling flat out (default 20)")
    parser.add_argument("--patients", type=int, default=2500, help="generated patients of the exports' source")
    parser.add_argument("--part-mib", type=int, default=256, help="the downloaded part's size in MiB (default 256)")
    parser.add_argument("--before", type=Path, help="a source tree of the code before, run alternately beside this one")
    args = parser.parse_args()
    small = args.small
    trees = {"after": ROOT} if args.before is None else {"before": args.before.resolve(), "after": ROOT}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "source"
        generate(source, patients=60 if small else args.patients, seed=3)
        big = root / "big-source"
        part = (8 if small else args.part_mib) * _MIB
        big_observations(big, part)
        runs = iter(range(10**6))

        def fresh() -> Path:
            return root / f"run-{next(runs)}"

        kick = _pairs(trees, lambda tree: kickoff_case(fresh(), tree, 2 if small else 5, 5 if small else 30))
        latency = _pairs(trees, lambda tree: latency_case(fresh(), tree, source, args.exports, args.pollers,
                                                          3 if small else 20))
        cost_source = source if not small else SAMPLE
        cost = _pairs(trees, lambda tree: polling_cost_case(fresh(), tree, cost_source, 2 if small else args.exports,
                                                            args.pollers, 1 if small else 2))
        download = _pairs(trees, lambda tree: download_case(fresh(), tree, big, part, 2 if small else 3))
    for name in trees:
        tag = f"[{name}] " if len(trees) > 1 else ""
        _report(tag, kick[name], latency[name], cost[name], download[name], args)
    print(machine())
    return 0


def _report(tag: str, kick: dict, latency: dict, cost: dict, download: dict, args) -> None:
    idle, busy = latency["idle"], latency["busy"]
    print(f"kick-off {tag}to complete: the first, the moment the server answers, {kick['first']:.2f} s; the first,"
          f" once the pipeline process is warm, {kick['settled']:.2f} s; later ones (median) {kick['later']:.2f} s"
          " (target <= 0.2 s)")
    print(f"status   {tag}p50 {busy['p50']:.1f} ms p99 {busy['p99']:.1f} ms, longest gap {busy['max_gap']:.0f} ms,"
          f" {busy['stalls']} gaps >= {STALL_MS} ms, {busy['errors']} errors ({busy['polls']} polls by"
          f" {args.pollers} clients flat out, {args.exports} exports running, {latency['running_at_end']} still at"
          f" the end); baseline, nothing running: p50 {idle['p50']:.1f} ms p99 {idle['p99']:.1f} ms"
          f" (target p99 <= 50 ms, no stall)")
    print(f"polling  {tag}exports took {cost['polled']:.2f} s under the pollers vs {cost['alone']:.2f} s alone:"
          f" +{(cost['polled'] / cost['alone'] - 1) * 100:.0f} % (target <= 10 %)")
    mb = download["bytes"] / _MIB
    print(f"download {tag}identity {download['identity'] / _MIB:.0f} MB/s vs raw read {download['raw'] / _MIB:.0f} MB/s"
          f" of the same {mb:.0f} MiB part: {download['identity'] / download['raw']:.2f}x (target >= 0.8x)")
    print(f"gzip     {tag}{download['gzip'] / _MIB:.0f} MB/s on the wire vs raw read {download['raw_gz'] / _MIB:.0f} MB/s"
          f" of the same {download['gz_bytes'] / _MIB:.1f} MiB compressed: {download['gzip'] / download['raw_gz']:.2f}x"
          f" (target >= 0.5x); the first download, which compresses, {download['first_gzip'] / _MIB:.0f} MB/s")
    print(f"curl     {tag}reading the same files itself (file://, no server): {download['curl_file'] / _MIB:.0f} MB/s,"
          f" {download['curl_file'] / download['raw']:.2f}x the raw read; compressed {download['curl_file_gz'] / _MIB:.0f}"
          f" MB/s, {download['curl_file_gz'] / download['raw_gz']:.2f}x (the client's own ceiling)")


if __name__ == "__main__":
    sys.exit(main())
