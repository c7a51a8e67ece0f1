"""Times an organizeOutputBy=Patient export beside a plain loop, with its peak memory.

The baseline is a plain Python loop, started as its own process, that reads and
parses every line of the same NDJSON files (`orjson.loads`) and writes each
line out again: the least any export must do. The case is the export pipeline
(`build_pipeline`, `...$export?organizeOutputBy=Patient`) on the local runner in
one process of its own, as `bench_export.py` runs it. Both are timed from spawn
to exit, imports included, with the peak RSS of their process trees sampled
every 0.1 s. It exits 1 unless the export's blocks hold every Patient of the
data once.

    .venv/bin/python benchmarks/bench_organize.py --resources 1000000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from benchmarks.bench_common import (  # noqa: E402
    DEFAULT_DATA_DIR,
    ensure_data,
    machine,
    print_table,
    run_process,
)

TARGET_RATIO, TARGET_MB = 0.3, 600  # issue 20: >= 0.3x the plain loop, <= 600 MB tree RSS, at 1M
_LOOP = """
import orjson, pathlib, sys
source, out = pathlib.Path(sys.argv[1]), open(sys.argv[2], "wb")
for path in sorted(source.glob("*.ndjson")):
    with open(path, "rb") as f:
        for line in f:
            orjson.loads(line)
            out.write(line)
"""


_PIPELINE = """
import sys, uuid
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from launcher.kickoff.parser import parse_get
from pipelines.export import ExportJob, ExportSettings, build_pipeline
from pipelines.options import prepare_runner
from transforms.fhir.instant import now_instant
options = PipelineOptions(["--direct_running_mode=in_memory"])
prepare_runner(options)
job = ExportJob(str(uuid.uuid4()), now_instant(), ExportSettings(source=sys.argv[1], output=sys.argv[2]))
with beam.Pipeline(options=options) as pipeline:
    build_pipeline(pipeline, parse_get("http://localhost/fhir/$export?organizeOutputBy=Patient"), job)
"""


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resources", type=int, required=True, help="About how many resources.")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    return p.parse_args(argv)


def _blocks(folder: Path) -> list[str]:
    manifest = orjson.loads(next(folder.rglob("manifest.json")).read_bytes())
    headers = []
    for entry in manifest["output"]:
        with open(entry["url"].removeprefix("file://"), "rb") as f:
            headers += [line for line in f if line.startswith(b'{"resourceType":"Parameters"')]
    return headers


def main(argv=None) -> None:
    args = _parse_args(argv)
    ndjson, resources = ensure_data(args.data_dir, args.resources, args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-organize-"))
    try:
        loop = run_process([sys.executable, "-c", _LOOP, str(ndjson), str(work / "loop.ndjson")])
        root = str(Path(__file__).resolve().parents[1])
        case = run_process([sys.executable, "-c", _PIPELINE, str(ndjson), str(work / "out")], cwd=root)
        if loop["code"] or case["code"]:
            sys.exit(f"a case failed:\n{loop['output'][-2000:]}\n{case['output'][-4000:]}")
        with open(ndjson / "Patient.ndjson", "rb") as f:
            patients = sum(1 for _ in f)
        blocks = _blocks(work / "out")
        if len(blocks) != patients or len(set(blocks)) != patients:
            sys.exit(f"OUTPUT MISMATCH: {patients} patients, {len(blocks)} blocks ({len(set(blocks))} distinct)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = loop["process_seconds"] / case["process_seconds"]
    print_table([
        ("case", "resources", "seconds", "ratio to loop", "peak tree RSS MB", "target"),
        ("plain loop (parse + write every line)", f"{resources:,}", f"{loop['process_seconds']:.2f}", "1.00x",
         f"{loop['peak_mb']:.0f}", ""),
        ("pipeline, organizeOutputBy=Patient", f"{resources:,}", f"{case['process_seconds']:.2f}",
         f"{ratio:.2f}x", f"{case['peak_mb']:.0f}",
         f">= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'MISSED'};"
         f" <= {TARGET_MB} MB: {'met' if case['peak_mb'] <= TARGET_MB else 'MISSED'}"),
    ])
    print(f"blocks: {patients:,} (one per Patient); {machine()}")


if __name__ == "__main__":
    main()
