"""Times the PostgreSQL source: a system export of a table beside `COPY (SELECT resource ...) TO STDOUT`.

Both read the same rows of one table in one run: the baseline is PostgreSQL's
own fastest way out, the bytes of every `resource` streamed by `COPY` (psycopg
reads and drops them); the case is the export pipeline on that table, every
row parsed, checked and written as NDJSON parts. The table is generated data
(`launcher.tools.sample_data`, or `--data realistic`), loaded once per run.

    .venv/bin/python benchmarks/bench_postgres.py --resources 300000
    .venv/bin/python benchmarks/bench_postgres.py --resources 300000 --runner multi_process --workers 2

The server is `BULK_EXPORT_TEST_PG`'s, else a throwaway cluster (`tests/pgserver.py`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import DEFAULT_DATA_DIR, ensure_data, machine, manifest_counts, print_table  # noqa: E402

TARGET = 0.5  # the export's rows/s over COPY's, at 300k resources (issue 18)


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resources", type=int, required=True, help="About how many resources (rows).")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data", choices=("sample", "realistic"), default="sample", help="The generator.")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--runner", choices=("in_process", "multi_process"), default="in_process")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="Runs per case; the fastest is reported.")
    return p.parse_args(argv)


def load(dsn: str, ndjson: Path) -> int:
    """A fresh `resources` table (jsonb, keyed, indexed as docs/sources.md recommends) holding the data."""
    import orjson
    import psycopg

    rows = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE resources (resource_type text, id text, version_id text,"
                     " last_updated timestamptz, deleted boolean, resource jsonb, PRIMARY KEY (resource_type, id))")
        with conn.cursor() as cur, cur.copy("COPY resources (resource_type, id, last_updated, resource)"
                                            " FROM STDIN") as copy:
            for path in sorted(ndjson.glob("*.ndjson")):
                for line in path.read_bytes().splitlines():
                    body = orjson.loads(line)
                    moment = (body.get("meta") or {}).get("lastUpdated")
                    copy.write_row((body["resourceType"], body["id"], moment, line.decode()))
                    rows += 1
        conn.execute("CREATE INDEX resources_type_updated ON resources (resource_type, last_updated)")
        conn.execute("ANALYZE resources")
    return rows


def copy_out(dsn: str) -> dict:
    """The baseline: every `resource` streamed by COPY, as text."""
    import psycopg

    started, size = time.perf_counter(), 0
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy("COPY (SELECT resource FROM resources) TO STDOUT") as copy:
            for block in copy:
                size += len(block)
    return {"seconds": time.perf_counter() - started, "bytes": size}


def export(dsn: str, runner: str, workers: int) -> dict:
    """The case: a system export of the table, every row out as NDJSON."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from launcher.jobs.source_snapshot import open_snapshot
    from launcher.kickoff.parser import parse_get
    from pipelines.export import ExportJob, ExportSettings, build_pipeline
    from pipelines.options import prepare_runner

    source = f"{dsn}{'&' if '?' in dsn else '?'}table=resources"
    mode = (["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
            if runner == "multi_process" else ["--direct_running_mode=in_memory"])
    out = tempfile.mkdtemp(prefix="bench-pg-")
    started = time.perf_counter()
    with open_snapshot(source) as snapshot:
        job = ExportJob(str(uuid.uuid4()), snapshot.transaction_time, ExportSettings(source=source, output=out),
                        source_snapshot=snapshot.snapshot)
        options = PipelineOptions(mode)
        prepare_runner(options)
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, parse_get("http://localhost/fhir/$export"), job)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, **manifest_counts(Path(job.job_dir, "manifest.json"))}


def main(argv=None) -> None:
    args = _parse_args(argv)
    from tests import pgserver

    ndjson, _ = ensure_data(args.data_dir, args.resources, args.seed, args.data)
    with pgserver.server() as server:
        if server is None:
            sys.exit(f"no PostgreSQL: {pgserver.server.reason}")
        dsn = pgserver.fresh_schema(server)
        rows = load(dsn, ndjson)
        export(dsn, args.runner, args.workers)  # warm: imports, the server's cache
        baseline = min((copy_out(dsn) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        case = min((export(dsn, args.runner, args.workers) for _ in range(args.repeat)), key=lambda r: r["seconds"])
    exported = sum(case["counts"].values())
    if exported != rows or case["errors"]:
        sys.exit(f"OUTPUT MISMATCH: {rows} rows, {exported} exported, {case['errors']} errors")
    ratio = baseline["seconds"] / case["seconds"]
    runner = args.runner + (f" x{args.workers}" if args.runner == "multi_process" else "")
    print_table([
        ("case", "rows", "seconds", "rows/s", "ratio to COPY", "target"),
        ("COPY (SELECT resource ...) TO STDOUT", f"{rows:,}", f"{baseline['seconds']:.2f}",
         f"{rows / baseline['seconds']:,.0f}", "1.00x", ""),
        (f"export ({runner})", f"{exported:,}", f"{case['seconds']:.2f}", f"{rows / case['seconds']:,.0f}",
         f"{ratio:.2f}x", f">= {TARGET}x: {'met' if ratio >= TARGET else 'MISSED'}"),
    ])
    print(f"COPY bytes: {baseline['bytes']:,}; {machine()}")


if __name__ == "__main__":
    main()
