"""What cuts a small export's fixed cost (issue 28) changes no answer: options views made once, Beam's
DoFn specs looked up once per DoFn, Beam imported without MongoDB's client, the fork server started
before the command line's imports, and its preload without the clients only some runs need (GCS,
PostgreSQL, Arrow's compute functions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from launcher.jobs.fork_server import start_for_command_line
from pipelines.construction import ExportPipelineOptions, cache_dofn_specs
from pipelines.options import ExportOptions

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
ARGV = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2", "--tenant=t1"]


def test_a_kept_view_reads_and_writes_what_a_new_view_would():
    options = ExportPipelineOptions(ARGV)
    standard = options.view_as(StandardOptions)
    assert options.view_as(StandardOptions) is standard  # made once
    standard.runner = "pipelines.local_runner.LocalRunner"
    # Every view shares one options dict: a write through the kept view is seen through a new one.
    assert PipelineOptions.view_as(options, StandardOptions).runner == "pipelines.local_runner.LocalRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert options.view_as(ExportOptions).tenant == "t1"
    plain = PipelineOptions(ARGV)
    plain.view_as(StandardOptions).runner = "pipelines.local_runner.LocalRunner"
    assert options.get_all_options() == plain.get_all_options()


class _Stateful(beam.DoFn):
    COUNT = userstate.ReadModifyWriteStateSpec("count", VarIntCoder())
    TIMER = userstate.TimerSpec("flush", TimeDomain.WATERMARK)

    def process(self, element, count=beam.DoFn.StateParam(COUNT), timer=beam.DoFn.TimerParam(TIMER)):
        yield element

    @userstate.on_timer(TIMER)
    def flush(self):
        return []


class _Plain(beam.DoFn):
    def process(self, element):
        yield element


def test_dofn_specs_are_beams_own_answer_once_cached():
    cache_dofn_specs()
    cache_dofn_specs()  # idempotent: wrapped once
    assert getattr(userstate.get_dofn_specs, "_cached", False)
    original = userstate.get_dofn_specs.__wrapped__
    assert not hasattr(original, "_cached")
    stateful, plain = _Stateful(), _Plain()
    for dofn in (stateful, plain, stateful, plain):
        assert userstate.get_dofn_specs(dofn) == original(dofn)
    state, timers = userstate.get_dofn_specs(stateful)
    assert {s.name for s in state} == {"count"} and len(timers) == 1
    state.clear()  # a caller's change to its copy is not kept
    assert userstate.get_dofn_specs(stateful) == original(stateful)
    assert userstate.is_stateful_dofn(stateful) and not userstate.is_stateful_dofn(plain)
    # A pipeline with a stateful DoFn still runs (Beam's checks ask the cached look-up).
    with beam.Pipeline(options=ExportPipelineOptions(["--runner=DirectRunner"])) as pipeline:
        _ = pipeline | beam.Create([("k", 1), ("k", 2)]) | beam.ParDo(_Stateful())


def _python(script: str) -> subprocess.CompletedProcess:
    """`script` run by a fresh interpreter from the repository; it must succeed."""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_beam_imports_without_mongodb_client_and_says_nothing():
    script = ("import sys; from launcher.core.beam_notice import before_beam_import; before_beam_import();"
              " import apache_beam, apache_beam.io.mongodbio as m;"
              " print(sorted({'bson', 'pymongo'} & {k for k, v in sys.modules.items() if v is not None}),"
              " m.MongoClient)")
    done = _python(script)
    assert done.stdout.split() == ["[]", "None"]
    assert "bson" not in done.stderr and "apitools" not in done.stderr


def test_the_fork_servers_preload_leaves_out_gcs_postgresql_and_arrow_compute_until_a_run_needs_them():
    # What the fork server imports (`fork_server._PRELOAD`), then what a run forked from it does first.
    script = ("import sys; from launcher.jobs import fork_server;"
              " [__import__(m) for m in fork_server._PRELOAD];"
              " left_out = ['google.cloud.storage', 'apache_beam.io.gcp.gcsio', 'psycopg', 'pyarrow.compute'];"
              " print(*[m for m in left_out if sys.modules.get(m) is not None]);"
              " from apache_beam.io.filesystems import FileSystems;"
              " print(type(FileSystems.get_filesystem('/tmp/x')).__name__);"
              " from launcher.core.beam_notice import allow_gcs; allow_gcs();"
              " print(*(type(FileSystems.get_filesystem(f'gs://bucket/{n}')).__name__ for n in 'ab'));"
              " print('google.cloud.storage' in sys.modules)")
    done = _python(script)
    # None imported; a local path is Beam's local filesystem; gs:// is Beam's GCS filesystem, each time.
    assert done.stdout.splitlines() == ["", "LocalFileSystem", "GCSFileSystem GCSFileSystem", "True"]


def _fork_server_pid_after(argv: list[str]) -> str:
    script = ("import sys; from multiprocessing import forkserver;"
              " from launcher.jobs.fork_server import start_for_command_line;"
              f" start_for_command_line({argv!r}); print(forkserver._forkserver._forkserver_pid)")
    done = _python(script)
    return done.stdout.strip()


def test_the_fork_server_starts_early_only_for_a_command_that_runs_a_pipeline():
    assert _fork_server_pid_after(["/venv/bin/bulk-export", "export", "--source", "x"]).isdigit()
    assert _fork_server_pid_after(["/src/launcher/__main__.py", "resume", "JOB"]).isdigit()
    for argv in (["/venv/bin/bulk-export", "status", "JOB"], ["/venv/bin/bulk-export", "export", "--help"],
                 ["/venv/bin/bulk-export", "-v", "export"], ["/venv/bin/pytest", "export"], ["bulk-export"]):
        assert _fork_server_pid_after(argv) == "None", argv


def test_this_process_starts_no_fork_server_for_pytests_command_line():
    from multiprocessing import forkserver

    before = forkserver._forkserver._forkserver_pid
    start_for_command_line(sys.argv)
    assert forkserver._forkserver._forkserver_pid == before


def test_a_console_script_export_completes_with_the_early_fork_server(tmp_path):
    # The run's child runs the console script again (as __mp_main__, with the launcher's argv): it must
    # not start a fork server of its own while multiprocessing starts it.
    script = tmp_path / "bulk-export"
    script.write_text("import sys\nfrom launcher.cli.main import main\nif __name__ == '__main__':\n    sys.exit(main())\n")
    source = tmp_path / "one"
    source.mkdir()
    (source / "Patient.ndjson").write_text('{"resourceType":"Patient","id":"p1"}\n')
    done = subprocess.run([sys.executable, str(script), "export", "--source", str(source), "--output",
                           str(tmp_path / "out"), "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "complete: 1 resource in 1 type" in done.stdout
