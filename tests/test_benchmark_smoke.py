"""A small run of benchmarks/bench_export.py for each kind of case, so the benchmark cannot rot.

It checks that the benchmark runs and that its two cases agree (the script
exits 1 on `OUTPUT MISMATCH`); the speed figures themselves are not tested.
"""
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_export.py"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-data")


@pytest.mark.parametrize("options", [
    [],
    ["--runner", "multi_process", "--workers", "2"],
    ["--runner", "in_process,dask", "--workers", "2", "--types", "", "--since", ""],
    ["--level", "group", "--type-filter", "Observation?status=final", "--elements", "Observation.code"],
    ["--level", "patient", "--source-format", "parquet", "--output-format", "parquet"],
], ids=["system", "multi-process", "local-and-dask", "group-typefilter-elements", "patient-parquet"])
def test_a_small_benchmark_run_prints_its_table(data_dir, options):
    done = subprocess.run([sys.executable, str(BENCH), "--resources", "2000", "--data-dir", str(data_dir), *options],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| baseline") or line.startswith("| pipeline")]
    assert len(rows) == 2 + ("dask" in str(options)), done.stdout
    assert "outputs equal:" in done.stdout and "machine: nproc=" in done.stdout
    out = {row.split("|")[3].strip() for row in rows}  # every case exported the same number of resources
    assert len(out) == 1 and out != {"0"}, rows


def test_a_small_server_benchmark_run_prints_its_figures():
    """benchmarks/bench_server.py --small: a real server, 4 exports, 20 pollers, one download."""
    bench = BENCH.parent / "bench_server.py"
    done = subprocess.run([sys.executable, str(bench), "--small"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["status", "kick-off", "download"], done.stdout
    assert "target p99 <= 100 ms" in lines[0] and "target >= 0.5x" in lines[2]


def test_a_small_launcher_benchmark_run_prints_its_table(data_dir):
    """benchmarks/bench_launcher.py: the launcher's peak memory on a Group export, by source size."""
    bench = BENCH.parent / "bench_launcher.py"
    done = subprocess.run([sys.executable, str(bench), "--resources", "2000", "3000", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    rows = [line.split("|") for line in lines[lines.index(next(x for x in lines if x.startswith("| resources in"))) + 2:]
            if line.startswith("|")]
    assert len(rows) == 2, done.stdout
    assert all("resources in" in row[3] and float(row[5]) > 0 for row in rows), done.stdout
