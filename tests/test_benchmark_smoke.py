"""A small run of each benchmark under benchmarks/ and each kind of case, so the benchmarks cannot rot.

It checks that the benchmark runs and that its two cases agree (the script
exits 1 on `OUTPUT MISMATCH`); the speed figures themselves are not tested.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_export.py"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-data")


@pytest.mark.parametrize("options", [
    [],
    ["--runner", "multi_process", "--workers", "2"],
    ["--runner", "in_process,dask", "--workers", "2", "--types", "", "--since", ""],
    ["--level", "group", "--type-filter", "Observation?status=final", "--elements", "Observation.code"],
    ["--level", "patient", "--source-format", "parquet", "--output-format", "parquet"],
    ["--baseline", "both", "--types", "Observation,Patient", "--since", "", "--runner", "default,in_process"],
], ids=["system", "multi-process", "local-and-dask", "group-typefilter-elements", "patient-parquet",
        "both-loops-two-runners"])
def test_a_small_benchmark_run_prints_its_table(data_dir, options):
    done = subprocess.run([sys.executable, str(BENCH), "--resources", "2000", "--data-dir", str(data_dir), *options],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| baseline") or line.startswith("| pipeline")]
    both, runners = "both" in options, options[options.index("--runner") + 1] if "--runner" in options else "default"
    assert len(rows) == (2 if both else 1) + len(runners.split(",")), done.stdout
    assert "outputs equal:" in done.stdout and "machine: nproc=" in done.stdout
    out = {row.split("|")[3].strip() for row in rows}  # every case exported the same number of resources
    assert len(out) == 1 and out != {"0"}, rows
    assert ("| pipeline (default, " in done.stdout) == ("default" in runners), done.stdout


def test_a_small_server_benchmark_run_prints_its_figures():
    """benchmarks/bench_server.py --small: a real server; kick-offs, pollers while exports run, downloads."""
    bench = BENCH.parent / "bench_server.py"
    done = subprocess.run([sys.executable, str(bench), "--small"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["kick-off", "status", "polling", "download", "gzip", "curl",
                                                    "machine:"], done.stdout
    assert "target <= 0.2 s" in lines[0] and "target p99 <= 50 ms" in lines[1] and "0 errors" in lines[1]
    assert "target <= 10 %" in lines[2] and "target >= 0.8x" in lines[3] and "target >= 0.5x" in lines[4]
    assert "file://" in lines[5] and "the client's own ceiling" in lines[5]


def test_the_status_benchmark_prints_a_round_per_tree_and_case():
    """benchmarks/bench_status.py: ab polls a real server's status URL; the server's CPU per answer."""
    if shutil.which("ab") is None:
        pytest.skip("no ab on PATH: `apt-get install apache2-utils` (.ci/run installs it)")
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_status.py"), "--rounds", "1", "--seconds", "1",
                           "--exports", "2", "--patients", "40", "--before", str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rounds = [line for line in done.stdout.splitlines() if line.startswith("round 1 ")]
    assert [line.split()[2:4] for line in rounds] == [["[before]", "idle:"], ["[before]", "busy:"],
                                                      ["[after]", "idle:"], ["[after]", "busy:"]], done.stdout
    assert all("; 0 failed, 0 not 2xx)" in line and "ms per answer" in line for line in rounds), done.stdout


def test_a_small_launcher_benchmark_run_prints_its_table(data_dir):
    """benchmarks/bench_launcher.py: the launcher's peak memory on a Group export, by source size."""
    bench = BENCH.parent / "bench_launcher.py"
    done = subprocess.run([sys.executable, str(bench), "--resources", "2000", "3000", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    header = lines.index(next(x for x in lines if x.startswith("| resources in")))
    rows = [line.split("|") for line in lines[header + 2:] if line.startswith("|")]
    assert len(rows) == 2, done.stdout
    assert all("resources in" in row[3] and float(row[5]) > 0 for row in rows), done.stdout


def _cli_rows(stdout: str) -> list[list[str]]:
    """The table's rows, each a dict of its cells by the header's names."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and not line.startswith("|--")]
    header = [cell.strip() for cell in lines[0].split("|")[1:-1]]
    return [dict(zip(header, (cell.strip() for cell in line.split("|")[1:-1]))) for line in lines[1:]]


@pytest.mark.parametrize("options, expected", [
    ([], {"bulk-export export (default runner)": ">= 1.3x parse"}),
    (["--runner", "in_process,multi_process", "--workers", "2"],
     {"bulk-export export (in_process)": ">= 0.8x parse", "bulk-export export (multi_process x2)": ">= 1.2x parse"}),
    (["--types", "Patient", "--since", "", "--baseline", "both"],
     {"bulk-export export (default runner)": ">= 3.0x parse, >= 0.7x prefix"}),
], ids=["default-runner", "in-memory-and-multi-process", "narrow-both-loops"])
def test_a_small_cli_run_on_realistic_data_prints_its_table_with_targets(data_dir, options, expected):
    """--data realistic --cli: `bulk-export export` and the plain loops, each timed as a whole process, each
    pipeline row beside issue 28's target for it, the peak PSS of its whole process tree beside the bound."""
    done = subprocess.run([sys.executable, str(BENCH), "--resources", "2000", "--data-dir", str(data_dir),
                           "--data", "realistic", "--cli", *options], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["case"]: row for row in _cli_rows(done.stdout)}
    loops = ["parse", "prefix"] if "both" in options else ["parse"]
    assert list(rows) == [f"baseline ({loop} loop)" for loop in loops] + list(expected), done.stdout
    assert {row["target"] for row in rows.values()} == {"", *expected.values()}
    assert all(rows[case]["met"] in ("yes", "NO") and rows[case]["ratio to parse loop"].endswith("x")
               for case in expected)
    assert ("ratio to prefix loop" in rows[next(iter(expected))]) == ("both" in options)
    assert len({row["resources out"] for row in rows.values()}) == 1 and rows["baseline (parse loop)"][
        "resources out"] != "0", rows
    assert "outputs equal:" in done.stdout and "machine: nproc=" in done.stdout
    assert "memory: peak tree PSS <= 300 MB" in done.stdout
    if "multi_process" in str(options):  # the tree is summed: the command's process and at least its two workers
        assert int(rows["bulk-export export (multi_process x2)"]["peak processes"]) >= 3, rows
    if "both" in options:
        assert "(checked), so the prefix loop is exact for _type" in done.stdout
    assert (data_dir / "2000-42-realistic" / "ndjson" / "ExplanationOfBenefit.ndjson").exists()


def test_the_prefix_loop_is_refused_where_it_would_not_apply_the_request(tmp_path, monkeypatch):
    """--baseline prefix tests only _type: refused with a _since; refused on data whose lines open otherwise."""
    done = subprocess.run([sys.executable, str(BENCH), "--resources", "10", "--data-dir", str(tmp_path),
                           "--baseline", "prefix"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--since ''" in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())  # refused before any data was generated
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.bench_loops import check_opening_bytes

    (tmp_path / "ndjson").mkdir()
    (tmp_path / "ndjson" / "Patient.ndjson").write_bytes(b'{"resourceType":"Patient","id":"a"}\n\n')
    assert check_opening_bytes(tmp_path / "ndjson") == 1
    (tmp_path / "ndjson" / "Patient.ndjson").write_bytes(b'{"resourceType":"Patient","id":"a"}\n'
                                                         b'{"id":"b","resourceType":"Patient"}\n')
    with pytest.raises(ValueError, match="Patient.ndjson line 2"):
        check_opening_bytes(tmp_path / "ndjson")


def test_the_realistic_data_follows_the_measured_synthea_figures(tmp_path, monkeypatch):
    """benchmarks/realistic_data.py: deterministic, Synthea's mix and sizes, valid enough to export by patient."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks.realistic_data import SYNTHEA, generate, measure
    from transforms.fhir.compartment import COMPARTMENT_TYPES, compartment_patients

    counts = generate(tmp_path / "a", 30, seed=7)
    assert counts == generate(tmp_path / "b", 30, seed=7)
    assert all((tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
               for name in (f"{t}.ndjson" for t in counts))
    figures, total = measure(tmp_path / "a"), sum(counts.values())
    mean = sum(n * size for n, size, _, _ in figures.values()) / total
    synthea_mean = sum(share * size for share, size, _, _ in SYNTHEA.values())
    assert abs(mean / synthea_mean - 1) < 0.1, (mean, synthea_mean)
    for rtype, (n, size, _, _) in figures.items():
        share, target, _, _ = SYNTHEA[rtype]
        if n >= 200:  # a type's mean is within 15% of Synthea's (meta, which Synthea lacks, is most of it)
            assert abs(size / target - 1) < 0.15 and abs(n / total - share) < 0.03, (rtype, n, size)
    patients, stamped = set(), 0
    for line in (tmp_path / "a" / "Patient.ndjson").read_bytes().splitlines():
        patients.add(orjson.loads(line)["id"])
    for rtype in counts:
        for line in (tmp_path / "a" / f"{rtype}.ndjson").read_bytes().splitlines():
            body = orjson.loads(line)
            assert body["resourceType"] == rtype and body["id"]
            stamped += "lastUpdated" in body.get("meta", {})
            if rtype in COMPARTMENT_TYPES and rtype not in ("Patient", "Group"):
                assert compartment_patients(rtype, body) & patients, (rtype, body["id"])
    assert stamped > 0.97 * total


def test_a_startup_benchmark_run_prints_each_command_beside_its_target():
    """benchmarks/bench_startup.py --repeat 1: --help, status, list, a one-resource export and the sample export,
    from the shell, each beside its target (issue 28's for the exports), the exports also with a warm process."""
    done = subprocess.run([sys.executable, str(BENCH.parent / "bench_startup.py"), "--repeat", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip() for line in done.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| command")}
    assert rows == {"python -c pass": "", "bulk-export --help": "<= 0.3 s", "bulk-export status JOB": "<= 0.3 s",
                    "bulk-export list --all": "<= 0.3 s", "bulk-export export (one resource)": "<= 1.0 s",
                    "bulk-export export --source sample-data": "<= 1.2 s",
                    "the same, warm process running": "<= 1.2 s"}  # the sample's (the one resource's row: same label)
    assert sum(line.startswith("|   the same, warm process running") for line in done.stdout.splitlines()) == 2
    assert "machine: nproc=" in done.stdout


def test_a_small_postgres_benchmark_run_prints_its_table(data_dir, postgres_server):
    """benchmarks/bench_postgres.py: the PostgreSQL source beside COPY, on the session's server."""
    bench = BENCH.parent / "bench_postgres.py"
    env = {**os.environ, "BULK_EXPORT_TEST_PG": postgres_server}
    done = subprocess.run([sys.executable, str(bench), "--resources", "2000", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith(("| COPY", "| export"))]
    assert len(rows) == 2 and rows[0][2] == rows[1][2], done.stdout  # both read every row
    assert "target" in done.stdout and "machine: nproc=" in done.stdout


def test_a_small_organize_benchmark_run_prints_its_table(data_dir):
    """benchmarks/bench_organize.py: an organizeOutputBy=Patient export beside the plain loop."""
    bench = BENCH.parent / "bench_organize.py"
    done = subprocess.run([sys.executable, str(bench), "--resources", "2000", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| pipeline, organizeOutputBy=Patient" in done.stdout and "(one per Patient)" in done.stdout
