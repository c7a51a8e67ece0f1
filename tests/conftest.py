"""Shared fixtures: a real local Beam runner, generated data, and the CLI in-process."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from launcher.cli import main as cli
from launcher.kickoff.patients import SCAN_LIMIT_ENV
from launcher.tools.sample_data import generate
from pipelines.options import LOCAL_RUNNER
from tests import pgserver

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# The long cases, marked `heavy` here, in one place: `make test` leaves them out, `make test-all`
# (.ci/run) runs them. Whole files, single tests (file::name), and every test of the Synthea data.
HEAVY_FILES = {
    "test_fault_injection.py", "test_dask_runner.py", "test_dask_scheduler_loss.py", "test_portable.py",
    "test_postgres_incremental.py", "test_postgres_resume.py", "test_store_outage.py", "test_synthea.py",
    "test_benchmark_smoke.py",
}
HEAVY_TESTS = {
    "test_lifecycle_cli.py::test_cancel_from_a_second_process_stops_the_export",
    "test_lifecycle_cli.py::test_a_killed_launcher_leaves_an_error_job_that_resumes_to_complete",
    "test_lifecycle_cli.py::test_progress_is_plain_lines_when_not_a_terminal",
    "test_jwks_load.py::test_a_hanging_jwks_url_does_not_starve_status_polls",
    "test_key_rotation.py::test_rotation_and_revocation_reach_two_running_servers",
    "test_exit_codes.py::test_head_takes_the_first_line_of_a_long_list",
    "test_sink_off_hot_path.py::test_an_unreachable_store_delays_progress_and_fails_the_claim_clearly",
    # The longest of the rest (pytest --durations, 2026-12-07): each 12 s or more on a quiet 2-core machine.
    "test_docs_examples.py::test_examples_run_as_written",
    "test_publish_gcs.py::test_a_publication_on_gcs_is_served_by_the_bucket_and_followed_over_http",
    "test_operator_page_browser.py::test_the_operator_page_in_chromium_during_and_after_an_export",
    "test_cli_export.py::test_ctrl_c_records_the_job_as_error_without_a_manifest",
    "test_organize_by_reference.py::test_a_patient_level_export_organized_by_its_referenced_organizations",
    "test_store_locks.py::test_a_launcher_stopped_while_its_pipeline_runs_blocks_no_other_store_client",
    "test_organize.py::test_a_system_export_organized_by_patient_is_the_plain_export_regrouped",
    "test_organize.py::test_a_group_export_has_blocks_only_for_its_members",
    "test_organize.py::test_a_block_is_never_split_a_large_one_gets_a_part_of_its_own",
    "test_cli_usage.py::test_verbose_export_logs_ours_at_info_and_beams_warnings_only",
    "test_store.py::test_a_locked_sqlite_store_answers_reads_or_says_it_is_busy_within_seconds",
    "test_progress_display.py::test_a_cancelled_export_says_so_and_never_shows_100",
    "test_smart_auth.py::test_jwks_url_keys_are_cached_and_refreshed_for_a_new_kid",
    "test_store_locks.py::test_writers_meeting_a_client_frozen_in_a_transaction_say_busy_then_succeed_once_it_commits",
    "test_store_locks.py::test_the_server_maintenance_loop_logs_one_line_while_the_store_is_busy_and_recovers_after",
    "test_gzip_downloads.py::test_an_expired_job_takes_its_copy_with_it",
    "test_publish.py::test_four_runs_then_a_snapshot_every_consumer_holds_the_source",
    "test_server.py::test_thousands_of_polls_do_not_take_the_server_down",
    "test_server_observability.py::test_a_cancel_and_an_expiry_each_log_a_line",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the long cases `heavy` (HEAVY_FILES, HEAVY_TESTS, and every test named for Synthea)."""
    for item in items:
        name = getattr(item, "originalname", item.name)
        if (item.path.name in HEAVY_FILES or f"{item.path.name}::{name}" in HEAVY_TESTS
                or "synthea" in name):
            item.add_marker(pytest.mark.heavy)


@pytest.fixture
def pipeline():
    """A TestPipeline on the embedded runner (the DirectRunner would try to fetch Prism)."""
    return TestPipeline(runner=LOCAL_RUNNER)


@pytest.fixture(scope="session")
def postgres_server():
    """The DSN of a real PostgreSQL server for this session (see `tests/pgserver.py`)."""
    with pgserver.server() as dsn:
        if dsn is None:
            pytest.skip(pgserver.server.reason)
        yield dsn


@pytest.fixture
def postgres_dsn(postgres_server) -> str:
    """A DSN whose schema is new and empty for this test."""
    return pgserver.fresh_schema(postgres_server)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """Generated R4 NDJSON: 30 patients, about 500 resources."""
    out = tmp_path_factory.mktemp("sample")
    generate(out, patients=30, seed=11)
    return out


@pytest.fixture(scope="session")
def big_source(tmp_path_factory) -> Path:
    """Generated R4 NDJSON of 2,500 patients: read in tiny chunks, an export of it runs for several seconds."""
    out = tmp_path_factory.mktemp("big")
    generate(out, patients=2500, seed=2)
    return out


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def manifest_path(self) -> Path:
        for line in self.out.splitlines():
            if line.startswith("manifest: "):
                return Path(line.removeprefix("manifest: "))
        raise AssertionError(f"no manifest path in output:\n{self.out}\n{self.err}")

    def manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text())


@pytest.fixture
def run_cli(tmp_path):
    """Runs `bulk-export ARGS` in-process with --state-dir in tmp_path; returns CliResult."""

    def run(*args: str, state_dir: os.PathLike | None = None) -> CliResult:
        argv = list(args)
        if argv and argv[0] != "sample-data" and "--state-dir" not in argv:
            argv[1:1] = ["--state-dir", str(state_dir or tmp_path / "state")]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run


# The ways a patient set reaches the pipeline: from the launcher's patients file, as a side input
# or (forced here by a threshold of one) the keyed join used for sets too large for memory; or, for
# a source too large for the launcher to scan (forced here by a scan limit of 0), resolved in the
# pipeline itself.
@pytest.fixture(params=["side-input", "join", "in-pipeline"])
def membership_args(request, monkeypatch) -> list[str]:
    if request.param == "in-pipeline":
        monkeypatch.setenv(SCAN_LIMIT_ENV, "0")
    return ["--max-side-input-patients", "1"] if request.param == "join" else []
