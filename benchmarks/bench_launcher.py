#!/usr/bin/env python
"""Benchmark: the launcher's own memory during a Group export, as the source grows.

    python benchmarks/bench_launcher.py --resources 300000 1000000

Runs `bulk-export export` of the benchmark Group over each size's generated data
(cached as bench_export.py caches it) and samples, every 0.1 s, the peak RSS of
the launcher process alone (`VmHWM`) and of its whole process tree. A source over
the kick-off scan limit (64 MiB) is never read by the launcher: its peak must not
grow with the source. See README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_export import (  # noqa: E402
    BENCH_GROUP_ID,
    DEFAULT_DATA_DIR,
    ensure_bench_group,
    ensure_data,
    machine,
    print_table,
    tree_memory_kb,
)


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(source: Path) -> dict:
    """One Group export of `source`: seconds, and peak launcher and tree RSS in MB."""
    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as out:
        cmd = [sys.executable, "-m", "launcher", "export", "--source", str(source), "--output", f"{out}/out",
               "--state-dir", f"{out}/state", "--kickoff", f"http://x/fhir/Group/{BENCH_GROUP_ID}/$export"]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        launcher = tree = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal launcher, tree
            while not done.is_set():
                launcher = max(launcher, _vm_hwm_kb(proc.pid))
                tree = max(tree, tree_memory_kb(proc.pid)[0])
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output = proc.communicate()[0].decode(errors="replace")
        done.set()
        sampler.join()
        if proc.returncode != 0:
            sys.exit(f"the export failed ({proc.returncode}):\n{output[-3000:]}")
        exported = next((line for line in output.splitlines() if " complete: " in line), "")
    return {"seconds": time.perf_counter() - started, "launcher_mb": launcher / 1024, "tree_mb": tree / 1024,
            "exported": exported.split(" complete: ")[-1]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, nargs="+", required=True, help="source sizes, e.g. 300000 1000000")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args(argv)
    rows = [("resources in", "source MB", "exported", "seconds", "launcher peak RSS MB", "tree peak RSS MB")]
    for resources in args.resources:
        ensure_bench_group(ensure_data(args.data_dir, resources, args.seed)[0])
        source, count = ensure_data(args.data_dir, resources, args.seed)  # the Group counted too
        size = sum(p.stat().st_size for p in source.iterdir() if p.is_file()) / (1 << 20)
        result = run(source)
        rows.append((f"{count:,}", f"{size:,.0f}", result["exported"], f"{result['seconds']:.1f}",
                     f"{result['launcher_mb']:,.0f}", f"{result['tree_mb']:,.0f}"))
    print_table(rows)
    print(machine())


if __name__ == "__main__":
    main()
