"""Exports on a real dask.distributed cluster (a scheduler and 2 worker processes) equal the local runner's.

`--runner=DaskRunner` is our runner (`pipelines.dask_runner`). For each case
the per-type output, read back from the manifest's files, must hold exactly
the local runner's bytes (as sorted lines; parts may split differently), with
the same counts, and the same error files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import AsList

from launcher.kickoff.patients import SCAN_LIMIT_ENV
from launcher.stores import ANY_OWNER, open_store
from launcher.tools.sample_data import generate
from pipelines.options import LOCAL_RUNNER
from tests.helpers import _first_id, assert_refused_before_any_job
from tests.server_process import ROOT

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

from pipelines.dask_runner import DaskRunner  # noqa: E402  (after the importorskip: it imports dask)

FAR_PAST = "2000-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def cluster():
    """A real scheduler and 2 worker processes on loopback, reaped at teardown."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as running:
        yield running.scheduler_address


def _contents(manifest: dict) -> dict:
    """Per type (and for errors), the sorted lines of every listed file, and the manifest's counts."""
    def read(entries):
        lines: dict[str, list[bytes]] = {}
        counts: dict[str, int] = {}
        for entry in entries:
            path = Path(entry["url"].removeprefix("file://"))
            if path.suffix == ".parquet":
                import pyarrow.parquet as pq

                table = pq.read_table(path).to_pylist()
                rows = [json.dumps(row, sort_keys=True, default=str).encode() for row in table]
            else:
                rows = path.read_bytes().splitlines()
            lines.setdefault(entry["type"], []).extend(rows)
            counts[entry["type"]] = counts.get(entry["type"], 0) + entry["count"]
        return {t: sorted(v) for t, v in lines.items()}, counts

    output, counts = read(manifest["output"])
    errors, error_counts = read(manifest["error"])
    return {"output": output, "counts": counts, "errors": errors, "error_counts": error_counts}


def _bad_source(sample_dir: Path, tmp_path: Path) -> Path:
    source = tmp_path / "bad-source"
    shutil.copytree(sample_dir, source)
    with open(source / "Observation.ndjson", "ab") as f:
        f.write(b'{"resourceType": "Observation", "id": \n{not json}\n{"resourceType": "Nope", "id": "x"}\n')
    return source


CASES = {
    "system": lambda s: ["--kickoff", "http://x/fhir/$export"],
    "type and since": lambda s: ["--kickoff", f"http://x/fhir/$export?_type=Patient,Observation&_since={FAR_PAST}"],
    "group, side input": lambda s: ["--kickoff", f"http://x/fhir/Group/{_first_id(s, 'Group')}/$export"],
    "group, join": lambda s: ["--kickoff", f"http://x/fhir/Group/{_first_id(s, 'Group')}/$export",
                              "--max-side-input-patients", "1"],
    "typeFilter, elements, include-referenced": lambda s: [
        "--kickoff", "http://x/fhir/Patient/$export?_type=Patient,Observation,Organization"
        "&_typeFilter=Observation%3Fstatus%3Dfinal&_elements=status,subject,performer,managingOrganization",
        "--include-referenced", "Organization"],
    "parquet output": lambda s: ["--kickoff", "http://x/fhir/$export?_type=Patient,Condition"
                                 "&_outputFormat=application/vnd.apache.parquet"],
}


def _export(run_cli, tmp_path: Path, name: str, source: Path, args: list[str], *runner: str) -> dict:
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / name), *args,
                     "--max-lines-per-part", "40", *runner, state_dir=tmp_path / f"state-{name}")
    assert result.code == 0, result.err
    return result.manifest()


@pytest.mark.parametrize("case", list(CASES))
def test_an_export_on_dask_equals_the_local_runners(cluster, run_cli, sample_dir, tmp_path, case):
    args = CASES[case](sample_dir)
    local = _export(run_cli, tmp_path, "local", sample_dir, args)
    dask = _export(run_cli, tmp_path, "dask", sample_dir, args, "--runner=DaskRunner",
                   f"--dask_client_address={cluster}")
    assert local["output"], "the case exports nothing: it proves nothing"
    assert _contents(dask) == _contents(local)


class _Record(beam.DoFn):
    """Passes each element on and records it (one file a bundle): what a step saw, and how many times."""

    def __init__(self, folder: str, label: str):
        self._folder, self._label = folder, label

    def start_bundle(self):
        self._seen = []

    def process(self, element):
        self._seen.append(element)
        yield element

    def finish_bundle(self):
        if self._seen:
            Path(self._folder, f"{self._label}.{uuid.uuid4().hex}.json").write_text(json.dumps(self._seen))


def _kept(element: str, keep: list) -> list:
    """`element` if one in `keep` has its number (`a3` keeps `b3`)."""
    return [element] if element[1:] in {kept[1:] for kept in keep} else []


def _branches(p, folder: str):
    """Two branches of 20 elements (20 partitions each: a Reshuffle to 32 leaves most of them whole),
    each through a recorded step (a step that ran twice would be seen twice)."""
    return tuple(p | f"Create{name}" >> beam.Create([f"{name}{i}" for i in range(20)])
                 | f"Seen{name}" >> beam.ParDo(_Record(folder, f"seen-{name}")) for name in "ab")


def _side_from_a_flatten_it_reads(a, b):
    both = (a, b) | beam.Flatten()
    return {"kept": both | beam.FlatMap(_kept, AsList(both)), "all": both | "All" >> beam.Map(str.upper)}


def _flatten_then_a_side_input(a, b):
    keep = b | "Keep" >> beam.Filter(lambda x: x.endswith("3"))
    both = (a, b) | beam.Flatten()
    return {"kept": both | beam.FlatMap(_kept, AsList(keep)), "all": both | "All" >> beam.Map(str.upper)}


def _side_from_a_flatten_of_the_main_input(a, b):
    both = (a, b) | beam.Flatten()
    return {"kept": a | beam.FlatMap(_kept, AsList(both)), "all": both | "All" >> beam.Map(str.upper)}


def _a_flattened_branch_feeds_a_side_input(a, b):
    return {"kept": b | beam.FlatMap(_kept, AsList(a)), "all": (a, b) | beam.Flatten()}


def _side_from_a_reshuffle_it_reads(a, b):
    spread = a | beam.Reshuffle()
    return {"kept": spread | beam.FlatMap(_kept, AsList(spread)), "all": spread | "All" >> beam.Map(str.upper)}


def _referenced_then_flattened_then_guarded(a, b):
    """The export's shape before 238998c: referenced resources, flattened with the main ones, then guarded."""
    referenced = b | "Referenced" >> beam.FlatMap(_kept, AsList(a | "References" >> beam.Filter(lambda x: "2" in x)))
    both = (a | "ShapeA" >> beam.Map(str.upper), referenced | "ShapeB" >> beam.Map(str.upper)) | beam.Flatten()
    guarded = both | "Guard" >> beam.FlatMap(_kept, AsList(both | "Covered" >> beam.Filter(lambda x: "1" in x)))
    return {"guarded": guarded, "duplicates": guarded | "Duplicates" >> beam.Map(str.lower)}


SHAPES = [_side_from_a_flatten_it_reads, _flatten_then_a_side_input, _side_from_a_flatten_of_the_main_input,
          _a_flattened_branch_feeds_a_side_input, _side_from_a_reshuffle_it_reads,
          _referenced_then_flattened_then_guarded]


def _run_shape(shape, folder: Path, pipeline: beam.Pipeline) -> dict[str, list]:
    """What each output of `shape` and each recorded step held, as sorted lists."""
    folder.mkdir()
    with pipeline as p:
        for label, output in shape(*_branches(p, str(folder))).items():
            output | f"Write{label}" >> beam.ParDo(_Record(str(folder), label))
    held: dict[str, list] = {}
    for path in folder.iterdir():
        held.setdefault(path.name.split(".")[0], []).extend(json.loads(path.read_text()))
    return {label: sorted(values) for label, values in held.items()}


@pytest.mark.parametrize("shape", SHAPES, ids=[shape.__name__.strip("_") for shape in SHAPES])
def test_flattens_side_inputs_and_reshuffles_on_dask_equal_the_local_runner(cluster, tmp_path, shape):
    """Dask fuses a chain of steps into one task, and inside it a step may hand on a one-shot iterator:
    a Flatten's or a Reshuffle's partition read by two steps (a side input and a main input) reached
    the second one empty. Each output, and what each shared step saw, must be the local runner's."""
    local = _run_shape(shape, tmp_path / "local", beam.Pipeline(runner=LOCAL_RUNNER))
    dask = _run_shape(shape, tmp_path / "dask", beam.Pipeline(
        runner=DaskRunner(), options=PipelineOptions([f"--dask_client_address={cluster}"])))
    assert all(local.values()) and len(local) == 4, "a shape whose outputs are empty proves nothing"
    outputs = {label: values for label, values in dask.items() if not label.startswith("seen-")}
    assert outputs == {label: values for label, values in local.items() if not label.startswith("seen-")}, "lost"
    assert dask == local, "a step ran more than once"


def test_patient_parameter_and_bad_lines_on_dask(cluster, run_cli, sample_dir, tmp_path):
    source = _bad_source(sample_dir, tmp_path)
    parameters = tmp_path / "parameters.json"
    parameters.write_text(json.dumps({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{_first_id(sample_dir, 'Patient')}"}}]}))
    args = ["--parameters", str(parameters), "--kickoff", "http://x/fhir/Patient/$export", "--lenient"]
    local = _export(run_cli, tmp_path, "local", source, args)
    dask = _export(run_cli, tmp_path, "dask", source, args, "--runner=DaskRunner", f"--dask_client_address={cluster}")
    assert local["error"] and local["output"]
    assert _contents(dask) == _contents(local)


def test_cancel_during_a_dask_run_leaves_no_file_behind(cluster, run_cli, tmp_path):
    """Tasks already running on the workers when the job is cancelled notice it (their writers check
    the job's fence every second), remove what they wrote, and stop: 5 s after `cancel` returns,
    nothing of the job is left."""
    source = tmp_path / "source"
    generate(source, patients=1500, seed=5)
    state, output = tmp_path / "state", tmp_path / "out"
    export = subprocess.Popen(
        [sys.executable, "-m", "launcher", "export", "--state-dir", str(state), "--source", str(source),
         "--output", str(output), "--chunk-bytes", "65536", "--max-lines-per-part", "50",
         "--runner=DaskRunner", f"--dask_client_address={cluster}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        store = open_store(str(state))
        deadline = time.monotonic() + 120
        while True:  # until parts are being written on the workers
            jobs = store.list("default", ANY_OWNER) if (state / "jobs.sqlite3").exists() else []
            if jobs and any(p.exported for p in jobs[0].progress):
                break
            assert export.poll() is None, export.stdout.read().decode()
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.05)
        job_id = jobs[0].job_id
        result = run_cli("cancel", job_id, state_dir=state)
        assert result.code == 0, result.err
        time.sleep(5)
        left = [p for p in (output / "default" / job_id).rglob("*")] if (output / "default" / job_id).exists() else []
        assert left == [] and not (output / "default" / job_id).exists()
        assert store.get("default", job_id).status.value == "cancelled"
    finally:
        export.kill()
        export.wait(30)


@pytest.mark.parametrize("kickoff", ["Group/{group}/$export", "Patient/$export?_type=Patient,Condition"])
def test_patients_resolved_in_the_pipeline_on_dask(cluster, run_cli, sample_dir, tmp_path, monkeypatch, kickoff):
    """A source too large for the launcher to scan (forced: limit 0): the covered patients are resolved
    on the cluster, by side input (Group) and by join (every patient)."""
    monkeypatch.setenv(SCAN_LIMIT_ENV, "0")
    args = ["--kickoff", "http://x/fhir/" + kickoff.format(group=_first_id(sample_dir, "Group"))]
    local = _export(run_cli, tmp_path, "local", sample_dir, args)
    dask = _export(run_cli, tmp_path, "dask", sample_dir, args, "--runner=DaskRunner",
                   f"--dask_client_address={cluster}")
    assert local["output"] and _contents(dask) == _contents(local)


def test_cancel_cancels_the_dask_futures(cluster, run_cli, tmp_path):
    """After `cancel` returns, the scheduler holds none of the job's tasks: its futures were cancelled."""
    source = tmp_path / "source"
    generate(source, patients=3000, seed=6)
    state, output = tmp_path / "state", tmp_path / "out"
    export = subprocess.Popen(
        [sys.executable, "-m", "launcher", "export", "--state-dir", str(state), "--source", str(source),
         "--output", str(output), "--chunk-bytes", "262144", "--max-lines-per-part", "50", "--dask_npartitions=2",
         "--runner=DaskRunner", f"--dask_client_address={cluster}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with distributed.Client(cluster) as observer:
            deadline = time.monotonic() + 120
            while not observer.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
                assert export.poll() is None and time.monotonic() < deadline, "the export never reached the cluster"
                time.sleep(0.05)
            store = open_store(str(state))
            job_id = store.list("default", ANY_OWNER)[0].job_id
            assert run_cli("cancel", job_id, state_dir=state).code == 0
            deadline = time.monotonic() + 5
            while observer.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
                assert time.monotonic() < deadline, "the job's tasks are still on the scheduler 5 s after cancel"
                time.sleep(0.1)
        assert store.get("default", job_id).status.value == "cancelled"
        assert export.wait(30) == 1
    finally:
        if export.poll() is None:
            export.kill()


def test_a_beam_without_one_of_the_runners_internals_is_refused_in_one_line(run_cli, sample_dir, tmp_path,
                                                                            monkeypatch):
    from pipelines import dask_runner  # after the importorskip above: it imports dask

    assert dask_runner.missing_internals() == []  # the installed Beam has them all

    def gone():
        raise AttributeError("not in this Beam")

    monkeypatch.setitem(dask_runner.BEAM_INTERNALS, "apache_beam.runners.common._OutputHandler", gone)
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--runner=DaskRunner", "--dask_client_address=tcp://127.0.0.1:1")
    assert_refused_before_any_job(run_cli, tmp_path, result, "--runner=DaskRunner cannot run on this Beam, "
                                  "which lacks apache_beam.runners.common._OutputHandler")
