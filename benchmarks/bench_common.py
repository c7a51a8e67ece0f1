"""What the benchmarks share: cached input data, a timed and memory-sampled subprocess, the table and machine lines."""

from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import orjson

from benchmarks import realistic_data
from launcher.tools import sample_data

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / ".data"
BENCH_GROUP_ID, BENCH_GROUP_SIZE = "bench-group", 1000
SAMPLE_EVERY_S, RESCAN_EVERY_S = 0.1, 0.5
# --data: the generator and its resources per patient. `sample`: launcher.tools.sample_data (about 750 bytes a
# resource); `realistic`: benchmarks.realistic_data (Synthea's mix of types and sizes, about 1.3 KB).
GENERATORS = {"sample": (sample_data.generate, sample_data.RESOURCES_PER_PATIENT),
              "realistic": (realistic_data.generate, realistic_data.RESOURCES_PER_PATIENT)}


def ensure_data(root: Path, resources: int, seed: int, data: str = "sample") -> tuple[Path, int]:
    """Generates (or reuses) the data; returns its NDJSON folder and resource count.

    It is cached in `root/<resources>-<seed>/` (`-realistic` appended for that generator),
    written to a staging folder that is renamed into place only when complete.
    """
    generate, per_patient = GENERATORS[data]
    folder = root / (f"{resources}-{seed}" + ("" if data == "sample" else f"-{data}"))
    if not (folder / "counts.json").exists():
        patients = math.ceil(resources / per_patient)
        print(f"generating {patients:,} patients ({data} data) into {folder} ...", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{folder.name}.{os.getpid()}"
        started = time.perf_counter()
        counts = generate(staging / "ndjson", patients, seed)
        (staging / "counts.json").write_bytes(orjson.dumps(counts))
        staging.rename(folder)
        print(f"generated in {time.perf_counter() - started:.1f} s", flush=True)
    counts = orjson.loads((folder / "counts.json").read_bytes())
    return folder / "ndjson", sum(counts.values())


def ensure_bench_group(ndjson: Path) -> None:
    """Adds (once) a Group of `BENCH_GROUP_SIZE` patients spread evenly over the data."""
    path = ndjson / "BenchGroup.ndjson"
    if path.exists():
        return
    with open(ndjson / "Patient.ndjson", "rb") as f:
        ids = [orjson.loads(line)["id"] for line in f if line.strip()]
    step = max(1, len(ids) // BENCH_GROUP_SIZE)
    members = [{"entity": {"reference": f"Patient/{i}"}} for i in ids[::step][:BENCH_GROUP_SIZE]]
    group = {"resourceType": "Group", "id": BENCH_GROUP_ID, "type": "person", "actual": True, "member": members}
    path.write_bytes(orjson.dumps(group) + b"\n")
    counts_path = ndjson.parent / "counts.json"
    counts = orjson.loads(counts_path.read_bytes())
    counts["Group"] = counts.get("Group", 0) + 1
    counts_path.write_bytes(orjson.dumps(counts))


def ensure_columnar(ndjson: Path, kind: str) -> Path:
    """Converts (or reuses) the NDJSON data as one Avro or Parquet file per NDJSON file, beside it."""
    folder = ndjson.parent / kind
    if not folder.exists():
        from tests.columnar_data import convert_ndjson

        print(f"converting {ndjson} to {kind} ...", flush=True)
        staging = ndjson.parent / f".{kind}.{os.getpid()}"  # renamed into place when complete
        staging.mkdir()
        for path in sorted(ndjson.glob("*.ndjson")):
            convert_ndjson(str(path), str(staging / f"{path.stem}.{kind}"), kind)
        staging.rename(folder)
    return folder


class TreeMemory(NamedTuple):
    """Memory summed over a process tree, in kB, and how many processes it counted."""

    rss: int
    pss: int
    processes: int


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants, found by the parent ids in `/proc/*/stat` (a full scan, ~10 ms)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])  # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(entry.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def memory_kb(pids: list[int]) -> TreeMemory:
    """RSS and PSS summed over those of `pids` still alive.

    RSS counts a page shared by several processes (forked workers share most of
    theirs with the driver) once per process; PSS splits it between them.
    """
    rss = pss = alive = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith(b"Pss:"):
                        pss += int(line.split()[1])
                        alive += 1
                        break
        except OSError:
            pass  # exited since the scan
    return TreeMemory(rss, pss, alive)


def tree_memory_kb(root: int) -> TreeMemory:
    """(RSS, PSS, processes) summed over `root` and all its descendants, in kB."""
    return memory_kb(tree_pids(root))


def read_through(folder: Path) -> None:
    """Reads every file under `folder` once, untimed, so that a case that follows finds it in the page
    cache as the others found theirs. This machine's cache held about 2 GB: the loops' 1.9 GB of NDJSON
    evicted the 2.0 GB Avro copy, and the export of it read from disk (19.4 s cold, 5.5 s warm)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb", buffering=0) as f:
            while f.read(8 << 20):
                pass


def run_process(cmd: list[str], sample_memory: bool = True, **popen) -> dict:
    """Runs `cmd` to its end: its exit code, output (stdout and stderr), wall seconds from spawn to
    exit, and (unless `sample_memory` is off) the peak RSS and PSS of its whole process tree in MB
    and the most processes that tree held at once.

    Memory is read every `SAMPLE_EVERY_S` from the processes last found in the tree; the tree is
    found again every `RESCAN_EVERY_S` (the /proc scan costs far more than the reads).
    """
    peak = TreeMemory(0, 0, 0)
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **popen)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            pids, scanned = [proc.pid], float("-inf")
            while not done.is_set():
                if time.monotonic() - scanned >= RESCAN_EVERY_S:
                    pids, scanned = tree_pids(proc.pid), time.monotonic()
                now = memory_kb(pids)
                peak = TreeMemory(*(max(a, b) for a, b in zip(peak, now)))
                done.wait(SAMPLE_EVERY_S)

        sampler = threading.Thread(target=sample, daemon=True)
        if sample_memory:
            sampler.start()
        code = proc.wait()
        seconds = time.perf_counter() - started
        done.set()
        if sample_memory:
            sampler.join()
        log.seek(0)
        output = log.read().decode(errors="replace")
    return {"code": code, "output": output, "process_seconds": seconds, "peak_mb": peak.rss / 1024,
            "peak_pss_mb": peak.pss / 1024, "peak_processes": peak.processes}


def bulk_export_command() -> list[str]:
    """`bulk-export` as a user runs it: the console script beside this interpreter, else `python -m launcher`."""
    script = Path(sys.executable).parent / "bulk-export"
    return [str(script)] if script.exists() else [sys.executable, "-m", "launcher"]


def manifest_counts(path: str | os.PathLike) -> dict:
    """A manifest's `output` counts summed by type, and the count of its error records."""
    manifest = orjson.loads(Path(path).read_bytes())
    counts: dict[str, int] = {}
    for entry in manifest["output"]:
        counts[entry["type"]] = counts.get(entry["type"], 0) + entry["count"]
    return {"counts": counts, "errors": sum(entry.get("count", 0) for entry in manifest.get("error", []))}


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Prints `rows` (the first is the header) as a Markdown table, columns padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"machine: nproc={os.cpu_count()}, CPU={model}, Python {platform.python_version()}, "
            f"Beam {metadata.version('apache-beam')}, {platform.system()} {platform.release()}, "
            f"load average at end {os.getloadavg()[0]:.2f}")
