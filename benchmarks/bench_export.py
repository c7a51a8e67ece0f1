#!/usr/bin/env python
"""Benchmark: the Beam `$export` pipeline against a plain Python loop, same data, same filter.

    python benchmarks/bench_export.py --resources 300000 [--runner multi_process --workers 2]
    python benchmarks/bench_export.py --resources 300000 --types '' --since '' --runner multi_process,dask
    python benchmarks/bench_export.py --resources 300000 --data realistic --cli [--runner multi_process]

Each case runs in a fresh subprocess so that its peak memory (summed RSS of its whole
process tree, sampled every 0.1 s) is its own. The pipeline's manifest must count
exactly what the baseline kept, type by type, or the benchmark fails. With `--cli`,
the pipeline case is the `bulk-export export` command and both cases are timed from
spawn to exit, imports included. See README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # runnable as a plain script from any folder

import orjson  # noqa: E402

from benchmarks.bench_common import (  # noqa: E402, F401 (some are imported from here by bench_launcher.py)
    BENCH_GROUP_ID,
    BENCH_GROUP_SIZE,
    DEFAULT_DATA_DIR,
    GENERATORS,
    bulk_export_command,
    ensure_bench_group,
    ensure_columnar,
    ensure_data,
    machine,
    manifest_counts,
    print_table,
    run_process,
    tree_memory_kb,
)
from transforms.fhir.instant import now_instant  # noqa: E402

MAX_LINES_PER_PART = 100_000
OUTPUT_FORMATS = {"ndjson": "application/fhir+ndjson", "parquet": "application/vnd.apache.parquet"}
RUNNERS = ("in_process", "multi_process", "dask")
SCAN_EVERYTHING = str(1 << 62)  # BULK_EXPORT_KICKOFF_SCAN_BYTES for the baseline: it always resolves patients itself


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
    p.add_argument("--data", choices=tuple(GENERATORS), default="sample",
                   help="sample: launcher.tools.sample_data (~750 B a resource); realistic: benchmarks/realistic_data.py "
                   "(Synthea's mix of types and sizes)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="Cache root; data goes to <data-dir>/<N>-<seed>[-realistic]/ (reused if present).")
    p.add_argument("--cli", action="store_true",
                   help="time `bulk-export export` as the user runs it, and the baseline, from spawn to exit")
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
    args = p.parse_args(argv)
    if args.cli and "dask" in args.runner:
        p.error("--cli runs the local runner only (in_process, multi_process)")
    return args


def _runners(text: str) -> tuple[str, ...]:
    runners = tuple(r.strip() for r in text.split(",") if r.strip())
    if not runners or any(r not in RUNNERS for r in runners):
        raise argparse.ArgumentTypeError(f"--runner: each of {', '.join(RUNNERS)}")
    return runners


def _types(args) -> list[str]:
    return [t for t in args.types.split(",") if t.strip()]


def _beam_args(runner: str, workers: int) -> list[str]:
    """The local runner's Beam options for `runner` (the export's defaults are in_memory)."""
    if runner == "multi_process":
        return ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    return ["--direct_running_mode=in_memory"]


def _kickoff_url(args) -> str:
    """The benchmark's request as a kick-off URL, GET form."""
    path = {"system": "$export", "patient": "Patient/$export", "group": f"Group/{BENCH_GROUP_ID}/$export"}[args.level]
    params = {"_type": args.types, "_since": args.since, "_typeFilter": args.type_filter,
              "_elements": args.elements, "_outputFormat": OUTPUT_FORMATS[args.output_format]}
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items() if v)
    return f"http://localhost/fhir/{path}?{query}"


def _request(args):
    """The benchmark's request, parsed as a real kickoff URL would be."""
    from launcher.kickoff.parser import parse_get

    return parse_get(_kickoff_url(args))


def _import_untimed(args) -> None:
    """Imports what both cases use before their clocks start (no Beam at system level, for `--cli`'s baseline)."""
    modules = ["launcher.kickoff.parser"]
    if args.level != "system":
        modules += ["launcher.kickoff.patients", "transforms.select.covered_patients", "transforms.records"]
    for module in modules:
        importlib.import_module(module)


def _covered_patients(args, request, source: str, job=None):
    """Resolves the level's patients as the launcher does; None at system level."""
    if args.level == "system":
        return None
    from launcher.kickoff.patients import SCAN_LIMIT_ENV, resolve_patients

    if job is None:  # the baseline resolves them whatever the source's size, as the pipeline does over the limit
        os.environ[SCAN_LIMIT_ENV] = SCAN_EVERYTHING
    return resolve_patients(request, source, "auto", args._tx)


def _written_patients(args, request, job):
    """`job` once the launcher's resolution wrote its patients file for the pipeline, if it did (the kickoff's
    scan is part of the cost)."""
    from transforms.storage.patients_file import write_patients

    membership = _covered_patients(args, request, args._source, job)
    if membership is None:
        return job
    covered, outside = write_patients(job.patients_path, membership, job.settings.output)
    return dataclasses.replace(job, patients_file=covered, outside_patients=outside)


# ---------------------------------------------------------------- the two cases (children)

def run_baseline(args) -> dict:
    """Single process: parse every line, apply the request with the same rules, write rolling parts.

    At Patient/Group level it resolves the patients whatever the source's size, as the
    pipeline does by itself when the source is over the launcher's kick-off scan limit.
    """
    _import_untimed(args)
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
    from transforms.fhir.search.compiler import compile_filters
    from transforms.fhir.compartment import COMPARTMENT_TYPES, CompartmentRule
    from transforms.fhir.elements import parse_elements
    from transforms.fhir.group import GROUP
    from transforms.fhir.window import LastUpdatedWindow

    request = _request(args)
    # Without _type, Patient/Group level exports the compartment's types but Group (pipelines.plan).
    types = set(request.types) or (None if args.level == "system" else COMPARTMENT_TYPES - {GROUP})
    window = LastUpdatedWindow(args._tx, request.since)
    filters = compile_filters(request.type_filters, request.types, now=args._tx) if request.type_filters else None
    elements = parse_elements(request.elements, request.types) if request.elements else None
    membership = _covered_patients(args, request, args._source)
    rule = CompartmentRule(membership.patients, window) if membership is not None else None
    admits = window.admits
    if rule is None and filters is None and elements is None:
        return _plain_rule(types, admits)
    if rule is not None:
        from transforms.records import Resource

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

    _import_untimed(args)

    runner, cluster = args.runner[0], None
    if runner == "dask":  # the cluster is started before the clock, inside this case's process tree (its memory counts)
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               host="127.0.0.1")
        beam_args = ["--runner=DaskRunner", f"--dask_client_address={cluster.scheduler_address}"]
    else:
        beam_args = _beam_args(runner, args.workers)
    started = time.perf_counter()
    options = PipelineOptions(beam_args)
    prepare_runner(options)
    request = _request(args)
    settings = ExportSettings(source=args._source, output=args._out, max_lines_per_part=MAX_LINES_PER_PART,
                              source_format=args.source_format)
    job = ExportJob(str(uuid.uuid4()), args._tx, settings)
    job = _written_patients(args, request, job)
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, request, job)
    seconds = time.perf_counter() - started
    if cluster is not None:
        cluster.close()
    return {"seconds": seconds, **manifest_counts(Path(job.job_dir, "manifest.json"))}


# ---------------------------------------------------------------- the parent

def _finish(case: str, args, out: str, done: dict) -> None:
    """Exits with the case's output when it failed; keeps (`--keep`) or removes its output folder."""
    if done["code"] != 0:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        sys.exit(f"{case} failed with exit code {done['code']}:\n{done['output'][-4000:]}")
    if args.keep:
        print(f"kept {case} output: {out}")
    else:
        shutil.rmtree(out, ignore_errors=True)


def run_case(case: str, args, source: Path, tx: str, runner: str = "in_process", whole: bool = False) -> dict:
    """Runs one case of this script (`baseline` or `pipeline`) in a fresh subprocess.

    Its seconds are the work's, timed inside it; `whole`: the process's, spawn to exit.
    """
    out = tempfile.mkdtemp(prefix=f"bench-{case}-")
    result_file = Path(out, ".result.json")
    cmd = [sys.executable, __file__, f"--resources={args.resources}", f"--since={args.since}",
           f"--types={args.types}", f"--runner={runner}", f"--workers={args.workers}",
           f"--source-format={args.source_format}", f"--output-format={args.output_format}",
           f"--level={args.level}", f"--type-filter={args.type_filter}", f"--elements={args.elements}",
           f"--_child={case}", f"--_source={source}", f"--_out={out}", f"--_tx={tx}",
           f"--_result={result_file}"]
    done = run_process(cmd)
    result = {**done, **orjson.loads(result_file.read_bytes())} if done["code"] == 0 else done
    _finish(case, args, out, done)
    return {**result, "case": case, **({"seconds": done["process_seconds"]} if whole else {})}


def run_cli(args, source: Path, runner: str) -> dict:
    """`bulk-export export` of the benchmark's request, as a user runs it: its seconds are spawn to exit."""
    out = tempfile.mkdtemp(prefix="bench-cli-")
    cmd = [*bulk_export_command(), "export", "--source", str(source), "--output", f"{out}/exports",
           "--state-dir", f"{out}/state", "--kickoff", _kickoff_url(args),
           "--max-lines-per-part", str(MAX_LINES_PER_PART), "--source-format", args.source_format]
    if runner != "in_process":  # in_process: the command's own default runner, no flag
        cmd += _beam_args(runner, args.workers)
    done = run_process(cmd, cwd=out)
    manifest = next((line.split(": ", 1)[1] for line in done["output"].splitlines() if line.startswith("manifest: ")),
                    None)
    counts = manifest_counts(Path(out, manifest)) if done["code"] == 0 and manifest else None
    _finish("bulk-export export", args, out, done)
    if counts is None:
        sys.exit(f"bulk-export export printed no manifest line:\n{done['output'][-4000:]}")
    return {**done, **counts, "seconds": done["process_seconds"]}


def best_of(repeat: int, run) -> dict:
    """The fastest of `repeat` calls of `run()`, with the highest peak RSS and PSS seen in any of them."""
    runs = [run() for _ in range(max(1, repeat))]
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "peak_mb": max(r["peak_mb"] for r in runs), "peak_pss_mb": max(r["peak_pss_mb"] for r in runs)}


def cli_target(args, runner: str) -> float:
    """Issue 19's floor for `--cli`, as a ratio to the plain loop: 3x narrow (`_type=Patient`), 1.2x on 2+ workers,
    0.6x on the default runner."""
    if _types(args) == ["Patient"]:
        return 3.0
    return 1.2 if runner == "multi_process" else 0.6


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args._child:
        result = (run_baseline if args._child == "baseline" else run_pipeline)(args)
        Path(args._result).write_bytes(orjson.dumps(result))
        return
    ensure_bench_group(ensure_data(args.data_dir, args.resources, args.seed, args.data)[0])
    source, resources_in = ensure_data(args.data_dir, args.resources, args.seed, args.data)  # the Group counted too
    tx = now_instant()
    labels = [r if r == "in_process" else f"{r} x{args.workers}" for r in args.runner]
    print(f"{resources_in:,} resources in {source}; level={args.level} _type={args.types or '(all)'} "
          f"_since={args.since or '(none)'} _typeFilter={args.type_filter or '(none)'} "
          f"_elements={args.elements or '(none)'} transactionTime={tx}; pipeline runners: {', '.join(labels)}"
          + ("; timed from the shell (spawn to exit)" if args.cli else ""), flush=True)
    base = best_of(args.repeat, lambda: run_case("baseline", args, source, tx, whole=args.cli))
    pipeline_source = source if args.source_format == "ndjson" else ensure_columnar(source, args.source_format)
    pipes = []
    for runner, label in zip(args.runner, labels):
        if args.cli:
            pipe = best_of(args.repeat, lambda: run_cli(args, pipeline_source, runner))
            pipe["case"] = f"bulk-export export ({'default runner' if runner == 'in_process' else label})"
            pipe["target"] = cli_target(args, runner)
        else:
            pipe = best_of(args.repeat, lambda: run_case("pipeline", args, pipeline_source, tx, runner))
            pipe["case"] = f"pipeline ({label}, {args.source_format} -> {args.output_format})"
        if pipe["counts"] != base["counts"] or pipe["errors"]:
            sys.exit(f"OUTPUT MISMATCH: baseline kept {base['counts']}, {pipe['case']} manifest counts "
                     f"{pipe['counts']} with {pipe['errors']} error records")
        pipes.append(pipe)
    _print_results(args, resources_in, base, pipes)


def _print_results(args, resources_in: int, base: dict, pipes: list[dict]) -> None:
    targets = ("target", "met") if args.cli else ()
    rows = [("case", "resources in", "resources out", "seconds", "resources/s", "ratio to baseline", *targets,
             "peak tree RSS MB", "peak tree PSS MB", *(() if args.cli else ("process s",)))]
    for r in (base, *pipes):
        ratio = base["seconds"] / r["seconds"]
        met = (f">= {r['target']:.1f}x", "yes" if ratio >= r["target"] else "NO") if "target" in r else ("", "")
        rows.append((r["case"], f"{resources_in:,}", f"{sum(r['counts'].values()):,}", f"{r['seconds']:.2f}",
                     f"{resources_in / r['seconds']:,.0f}", f"{ratio:.2f}x", *(met if args.cli else ()),
                     f"{r['peak_mb']:,.0f}", f"{r['peak_pss_mb']:,.0f}",
                     *(() if args.cli else (f"{r['process_seconds']:.2f}",))))
    print_table(rows)
    print(f"outputs equal: {sum(base['counts'].values()):,} resources, per type {base['counts']}")
    if args.cli:
        print("seconds: wall time from spawn to exit of the whole process (the plain loop's script, or bulk-export), "
              "imports included")
    print(machine())


if __name__ == "__main__":
    main()
