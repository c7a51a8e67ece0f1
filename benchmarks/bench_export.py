#!/usr/bin/env python
"""Benchmark: the Beam `$export` pipeline against a plain Python loop, same data, same filter.

    python benchmarks/bench_export.py --resources 300000 [--runner multi_process --workers 2]
    python benchmarks/bench_export.py --resources 300000 --types '' --since '' --runner multi_process,dask

Each case runs in a fresh subprocess so that its peak memory (summed RSS of its whole
process tree, sampled every 0.1 s) is its own. The pipeline's manifest must count
exactly what the baseline kept, type by type, or the benchmark fails. See README.md.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable as a plain script from any folder

import orjson  # noqa: E402

from launcher.sample_data import RESOURCES_PER_PATIENT, generate  # noqa: E402
from transforms.fhir.instant import now_instant  # noqa: E402
from transforms.records import Resource  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / ".data"
MAX_LINES_PER_PART = 100_000
OUTPUT_FORMATS = {"ndjson": "application/fhir+ndjson", "parquet": "application/vnd.apache.parquet"}
SAMPLE_EVERY_S = 0.1
BENCH_GROUP_ID, BENCH_GROUP_SIZE = "bench-group", 1000


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resources", type=int, required=True, help="About how many input resources.")
    p.add_argument("--since", default="2019-01-01T00:00:00Z", help="_since ('' for none).")
    p.add_argument("--types", default="Patient,Observation", help="_type, comma-separated ('' = all).")
    p.add_argument("--runner", type=_runners, default="in_process",
                   help=f"comma-separated, each a row beside the baseline: {', '.join(RUNNERS)}. dask: our "
                   "DaskRunner on a dask.distributed LocalCluster of --workers processes, started untimed")
    p.add_argument("--workers", type=int, default=2, help="worker processes (multi_process, dask).")
    p.add_argument("--seed", type=int, default=42, help="Sample data seed.")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="Cache root; data goes to <data-dir>/<N>-<seed>/ (reused if present).")
    p.add_argument("--repeat", type=int, default=1, help="Runs per case; the fastest is reported.")
    p.add_argument("--source-format", choices=("ndjson", "avro", "parquet"), default="ndjson",
                   help="The pipeline's source: the NDJSON data, or it converted (once, cached) to Avro or Parquet.")
    p.add_argument("--output-format", choices=("ndjson", "parquet"), default="ndjson",
                   help="The pipeline's _outputFormat (the baseline always writes NDJSON).")
    p.add_argument("--level", choices=("system", "patient", "group"), default="system",
                   help=f"Export level; group exports a {BENCH_GROUP_SIZE:,}-member Group added to the data.")
    p.add_argument("--type-filter", default="", help="A _typeFilter query, e.g. 'Observation?code=http://loinc.org|8302-2'.")
    p.add_argument("--elements", default="", help="_elements, e.g. 'Observation.code,Observation.value'.")
    p.add_argument("--keep", action="store_true", help="Keep both cases' output folders.")
    hidden = argparse.SUPPRESS  # set by the parent for a child run
    for name in ("--_child", "--_source", "--_out", "--_tx", "--_result"):
        p.add_argument(name, help=hidden)
    return p.parse_args(argv)


RUNNERS = ("in_process", "multi_process", "dask")


def _runners(text: str) -> tuple[str, ...]:
    runners = tuple(r.strip() for r in text.split(",") if r.strip())
    if not runners or any(r not in RUNNERS for r in runners):
        raise argparse.ArgumentTypeError(f"--runner: each of {', '.join(RUNNERS)}")
    return runners


def _types(args) -> list[str]:
    return [t for t in args.types.split(",") if t.strip()]


def _import_untimed() -> None:
    """Imports what both cases use before their clocks start: imports are not the work measured."""
    for module in ("launcher.kickoff", "launcher.membership"):
        importlib.import_module(module)


def _request(args):
    """The benchmark's request, parsed as a real kickoff URL would be."""
    from launcher.kickoff import parse_get

    path = {"system": "$export", "patient": "Patient/$export", "group": f"Group/{BENCH_GROUP_ID}/$export"}[args.level]
    params = {"_type": args.types, "_since": args.since, "_typeFilter": args.type_filter,
              "_elements": args.elements, "_outputFormat": OUTPUT_FORMATS[args.output_format]}
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items() if v)
    return parse_get(f"http://localhost/fhir/{path}?{query}")


def _covered_patients(args, request, source: str, job=None):
    """Resolves the level's patients as the launcher does (and writes them for the pipeline)."""
    from launcher.membership import resolve_patients
    from transforms.select.covered_patients import write_patients

    membership = resolve_patients(request, source, "auto", args._tx)
    if membership is not None and job is not None:
        write_patients(job.patients_path, membership)
    return membership


# ---------------------------------------------------------------- the two cases (children)

def run_baseline(args) -> dict:
    """Single process: parse every line, apply the request with the same rules, write rolling parts."""
    _import_untimed()
    counts: dict[str, int] = {}
    parts: dict[str, list] = {}  # type -> [file, lines in part, part number]
    loads = orjson.loads
    started = time.perf_counter()
    keep = _baseline_rule(args)
    for path in sorted(Path(args._source).glob("*.ndjson")):
        with open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                body = loads(line)
                rtype = body.get("resourceType")
                kept = keep(rtype, line, body)
                if kept is None:
                    continue
                part = parts.get(rtype)
                if part is None or part[1] >= MAX_LINES_PER_PART:
                    n = 0 if part is None else part[2] + 1
                    if part is not None:
                        part[0].close()
                    handle = open(os.path.join(args._out, f"{rtype}-{n}.ndjson"), "wb", 1 << 20)
                    part = parts[rtype] = [handle, 0, n]
                part[0].write(kept if kept.endswith(b"\n") else kept + b"\n")
                part[1] += 1
                counts[rtype] = counts.get(rtype, 0) + 1
    for handle, _, _ in parts.values():
        handle.close()
    return {"seconds": time.perf_counter() - started, "counts": counts, "errors": 0}


def _baseline_rule(args):
    """One function applying the request to a line: the library's rules, no Beam.

    A plain system export (`_type` and `_since` only) is a minimal closure over
    the window's test, as the fastest single-process loop would be; the other
    requests use the library's rule functions as plain calls.
    """
    from transforms.fhir.compartment import CompartmentRule
    from transforms.fhir.elements import parse_elements
    from transforms.fhir.window import LastUpdatedWindow
    from transforms.select.type_filter import compile_type_filters

    request = _request(args)
    types = set(request.types) or None
    window = LastUpdatedWindow(args._tx, request.since)
    queries = [f"{f.resource_type}?{f.query}" for f in request.type_filters]
    filters = compile_type_filters(queries, request.types, now=args._tx) if queries else None
    elements = parse_elements(request.elements, request.types) if request.elements else None
    membership = _covered_patients(args, request, args._source)
    rule = CompartmentRule(membership.patients, window) if membership is not None else None
    admits = window.admits
    if rule is None and filters is None and elements is None:
        return _plain_rule(types, admits)

    def keep(rtype: str, line: bytes, body: dict):
        """The bytes to write for a line, or None when the request leaves it out."""
        if types is not None and rtype not in types:
            return None
        if filters is not None and not filters.matches(rtype, body):
            return None
        if rule is not None:
            if rule(Resource(rtype, line, body, 0)) is None:
                return None
        elif not admits(body):
            return None
        changed = elements.subset(rtype, body) if elements is not None else None
        return line if changed is None else changed[0]

    return keep


def _plain_rule(types, admits):
    def keep(rtype: str, line: bytes, body: dict):
        if types is not None and rtype not in types:
            return None
        return line if admits(body) else None

    return keep


def run_pipeline(args) -> dict:
    """The real export: `build_pipeline` on the embedded FnApiRunner, then read the manifest."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.export import ExportJob, ExportSettings, build_pipeline
    from pipelines.options import prepare_runner

    _import_untimed()

    runner, cluster = args.runner[0], None
    if runner == "in_process":
        beam_args = ["--direct_running_mode=in_memory"]
    elif runner == "multi_process":
        beam_args = ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
    else:  # the cluster is started before the clock, inside this case's process tree (its memory counts)
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1")
        beam_args = ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]
    started = time.perf_counter()
    options = PipelineOptions(beam_args)
    prepare_runner(options)
    request = _request(args)
    settings = ExportSettings(source=args._source, output=args._out, max_lines_per_part=MAX_LINES_PER_PART,
                              source_format=args.source_format)
    job = ExportJob(str(uuid.uuid4()), args._tx, settings)
    _covered_patients(args, request, args._source, job)  # the kickoff's scan is part of the cost
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, request, job)
    seconds = time.perf_counter() - started
    if cluster is not None:
        cluster.close()
    manifest = orjson.loads(Path(job.job_dir, "manifest.json").read_bytes())
    counts: dict[str, int] = {}
    for entry in manifest["output"]:
        counts[entry["type"]] = counts.get(entry["type"], 0) + entry["count"]
    errors = sum(entry.get("count", 0) for entry in manifest.get("error", []))
    return {"seconds": seconds, "counts": counts, "errors": errors}


# ---------------------------------------------------------------- the parent

def ensure_data(root: Path, resources: int, seed: int) -> tuple[Path, int]:
    """Generates (or reuses) the sample data; returns its NDJSON folder and resource count."""
    folder = root / f"{resources}-{seed}"
    if not (folder / "counts.json").exists():
        patients = math.ceil(resources / RESOURCES_PER_PATIENT)
        print(f"generating {patients:,} patients into {folder} ...", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        staging = root / f".{folder.name}.{os.getpid()}"  # renamed into place when complete
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
        from transforms.read.columnar import convert_ndjson

        print(f"converting {ndjson} to {kind} ...", flush=True)
        staging = ndjson.parent / f".{kind}.{os.getpid()}"  # renamed into place when complete
        staging.mkdir()
        for path in sorted(ndjson.glob("*.ndjson")):
            convert_ndjson(str(path), str(staging / f"{path.stem}.{kind}"), kind)
        staging.rename(folder)
    return folder


def tree_memory_kb(root: int) -> tuple[int, int]:
    """(RSS, PSS) summed over `root` and all its descendants, in kB.

    RSS counts a page shared by several processes (forked workers share most of
    theirs with the driver) once per process; PSS splits it between them.
    """
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
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                for line in f:
                    if line.startswith(b"Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith(b"Pss:"):
                        pss += int(line.split()[1])
                        break
        except OSError:
            pass  # exited between the scan and the read
    return rss, pss


def run_case(case: str, args, source: Path, tx: str, runner: str = "in_process") -> dict:
    """Runs one case in a fresh subprocess while sampling its tree's RSS."""
    out = tempfile.mkdtemp(prefix=f"bench-{case}-")
    result_file = Path(out, ".result.json")
    cmd = [sys.executable, __file__, f"--resources={args.resources}", f"--since={args.since}",
           f"--types={args.types}", f"--runner={runner}", f"--workers={args.workers}",
           f"--source-format={args.source_format}", f"--output-format={args.output_format}",
           f"--level={args.level}", f"--type-filter={args.type_filter}", f"--elements={args.elements}",
           f"--_child={case}", f"--_source={source}", f"--_out={out}", f"--_tx={tx}",
           f"--_result={result_file}"]
    peak = peak_pss = 0
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, peak_pss
            while not done.is_set():
                rss, pss = tree_memory_kb(proc.pid)
                peak, peak_pss = max(peak, rss), max(peak_pss, pss)
                done.wait(SAMPLE_EVERY_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
        if code != 0:
            log.seek(0)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)
            sys.exit(f"{case} failed with exit code {code}:\n{log.read().decode(errors='replace')[-4000:]}")
    result = orjson.loads(result_file.read_bytes())
    result_file.unlink()
    result.update(case=case, process_seconds=time.perf_counter() - started, peak_mb=peak / 1024,
                  peak_pss_mb=peak_pss / 1024)
    if args.keep:
        print(f"kept {case} output: {out}")
    else:
        shutil.rmtree(out, ignore_errors=True)
    return result


def best_of(repeat: int, case: str, args, source: Path, tx: str, runner: str = "in_process") -> dict:
    """The fastest of `repeat` runs, with the highest peak RSS and PSS seen in any of them."""
    runs = [run_case(case, args, source, tx, runner) for _ in range(max(1, repeat))]
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "peak_mb": max(r["peak_mb"] for r in runs), "peak_pss_mb": max(r["peak_pss_mb"] for r in runs)}


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


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args._child:
        result = (run_baseline if args._child == "baseline" else run_pipeline)(args)
        Path(args._result).write_bytes(orjson.dumps(result))
        return
    source, _ = ensure_data(args.data_dir, args.resources, args.seed)
    ensure_bench_group(source)
    source, resources_in = ensure_data(args.data_dir, args.resources, args.seed)
    tx = now_instant()
    labels = [r if r == "in_process" else f"{r} x{args.workers}" for r in args.runner]
    print(f"{resources_in:,} resources in {source}; level={args.level} _type={args.types or '(all)'} "
          f"_since={args.since or '(none)'} _typeFilter={args.type_filter or '(none)'} "
          f"_elements={args.elements or '(none)'} transactionTime={tx}; pipeline runners: {', '.join(labels)}",
          flush=True)
    base = best_of(args.repeat, "baseline", args, source, tx)
    pipeline_source = source if args.source_format == "ndjson" else ensure_columnar(source, args.source_format)
    pipes = []
    for runner, label in zip(args.runner, labels):
        pipe = best_of(args.repeat, "pipeline", args, pipeline_source, tx, runner)
        pipe["case"] = f"pipeline ({label}, {args.source_format} -> {args.output_format})"
        if pipe["counts"] != base["counts"] or pipe["errors"]:
            sys.exit(f"OUTPUT MISMATCH: baseline kept {base['counts']}, pipeline ({label}) manifest counts "
                     f"{pipe['counts']} with {pipe['errors']} error records")
        pipes.append(pipe)
    rows = [("case", "resources in", "resources out", "seconds", "resources/s",
             "ratio to baseline", "peak tree RSS MB", "peak tree PSS MB", "process s")]
    for r in (base, *pipes):
        rows.append((r["case"], f"{resources_in:,}", f"{sum(r['counts'].values()):,}",
                     f"{r['seconds']:.2f}", f"{resources_in / r['seconds']:,.0f}",
                     f"{base['seconds'] / r['seconds']:.2f}x", f"{r['peak_mb']:,.0f}",
                     f"{r['peak_pss_mb']:,.0f}", f"{r['process_seconds']:.2f}"))
    print_table(rows)
    print(f"outputs equal: {sum(base['counts'].values()):,} resources, per type {base['counts']}")
    print(machine())


if __name__ == "__main__":
    main()
