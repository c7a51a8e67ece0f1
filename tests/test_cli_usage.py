"""The command line as a user meets it (issue 29): typos refused with a suggestion, `-v` and `-q`
anywhere, one-line usage errors, bad `--source`, `--output` and `--runner` values refused before any
job, `serve` on a busy port, and `list`'s header and empty answer.

Each case runs the real `bulk-export` in a subprocess, on a real SQLite state folder.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest

from launcher.cli.arguments import build_parser, verbosity
from launcher.cli.usage import unknown_option
from launcher.stores import SqliteJobStore
from pipelines.models import ExportStatus
from tests.helpers import LIST_HEADER, _console, _manifest, _record, job_rows
from transforms import errors

ROOT = Path(__file__).resolve().parents[1]
KICKOFF = "https://ehr.example.org/fhir/$export?_type=Patient"


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*_console(), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _assert_nothing_recorded(tmp_path: Path) -> None:
    """No job, no job store, no output folder."""
    assert not (tmp_path / "state").exists() and not (tmp_path / "out").exists()
    listing = _cli("list", "--all", "--state-dir", str(tmp_path / "state"))
    assert listing.returncode == 0 and job_rows(listing.stdout) == [], listing.stderr


# ---- refused before any job ------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--kickof", KICKOFF], "unknown option --kickof; did you mean --kickoff?"),
    (["--outptu", "out2"], "unknown option --outptu; did you mean --output?"),
    (["--tenat", "acme"], "unknown option --tenat; did you mean --tenant?"),
    (["--kickoff", KICKOFF, "--exclude-missing-lastupdated"],
     "unknown option --exclude-missing-lastupdated; did you mean --exclude-missing-last-updated?"),
    (["--runner=FooRunner"], "refused: --runner=FooRunner is not a known runner"),
    (["--max-lines-per-part", "abc"], "--max-lines-per-part expects a positive integer, got 'abc'"),
])
def test_a_bad_option_exits_2_with_nothing_recorded(sample_dir, tmp_path, args, message):
    done = _cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                "--state-dir", str(tmp_path / "state"), *args)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert message in line and done.stdout == ""
    _assert_nothing_recorded(tmp_path)


@pytest.mark.parametrize("args, line", [
    ([], "bulk-export export: --source is required (see bulk-export export --help)"),
    # A typo of a required option is the typo, not the option missing.
    (["--sourse", "sample-data"],
     "bulk-export export: unknown option --sourse; did you mean --source? (see bulk-export export --help)"),
    (["--source", "does-not-exist"], "bulk-export: refused: --source 'does-not-exist': no such file or folder"),
    (["--source", "sample-data", "--output", "sample-data/Patient.ndjson/x"],
     "bulk-export: refused: --output 'sample-data/Patient.ndjson/x': "
     f"{ROOT}/sample-data/Patient.ndjson is not a folder"),
    (["--source", "gs://Not_A_Bucket/x"],
     "bulk-export: refused: --source 'gs://Not_A_Bucket/x' is not a well-formed gs://bucket/path URL"),
])
def test_a_missing_or_bad_source_or_output_exits_2_with_nothing_recorded(tmp_path, args, line):
    done = _cli("export", "--output", str(tmp_path / "out"), "--state-dir", str(tmp_path / "state"), *args)
    assert done.returncode == 2 and done.stderr.splitlines() == [line], done.stderr
    _assert_nothing_recorded(tmp_path)


def test_a_tenant_source_is_checked_with_the_tenant_filled_in(tmp_path):
    (tmp_path / "data" / "acme").mkdir(parents=True)
    template = f"{tmp_path}/data/{{tenant}}/"
    done = _cli("export", "--source", template, "--tenant", "other", "--output", str(tmp_path / "out"),
                "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"bulk-export: refused: --source '{tmp_path}/data/other/': no such file or folder"
    _assert_nothing_recorded(tmp_path)


def test_beams_own_options_still_pass():
    parser = build_parser()
    line = ["export", "--source", "x", "--runner", "DirectRunner", "--direct_num_workers=2",
            "--direct_running_mode", "multi_processing", "--temp_location=/tmp/t"]
    args, extra = parser.parse_known_args(line)
    assert extra == line[3:]
    assert unknown_option(args.parser, extra, "export") is None
    # Not to a command that runs no pipeline.
    args, extra = parser.parse_known_args(["status", "x", "--direct_num_workers=2"])
    assert unknown_option(args.parser, extra, "status") == "unknown option --direct_num_workers"


# ---- argparse's errors in one line --------------------------------------------------------------------


@pytest.mark.parametrize("args, line", [
    (["exprot"], "bulk-export: unknown command 'exprot'; did you mean export? (see bulk-export --help)"),
    (["status"], "bulk-export status: job_id is required (see bulk-export status --help)"),
    (["status", "x", "--bogus"], "bulk-export status: unknown option --bogus"),
    (["cleanup", "--ttl", "soon"], "bulk-export cleanup: --ttl 'soon' must be a positive number with a unit"),
    (["manifest", "x", "--page", "0"], "bulk-export manifest: --page expects a positive integer, got '0'"),
    (["serve", "--source", "x", "--port", "http"], "bulk-export serve: --port expects an integer, got 'http'"),
    (["export", "--source", "x", "--source-format", "xml"],
     "bulk-export export: --source-format expects one of auto, ndjson, bundle, avro, parquet, got 'xml'"),
])
def test_usage_errors_are_one_line_without_internal_names(tmp_path, args, line):
    done = _cli(*args, "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 2 and done.stdout == ""
    [said] = done.stderr.splitlines()
    assert said.startswith(line) and re.search(r"\(see bulk-export[ a-z]* --help\)\Z", said), said
    assert "_positive" not in said and "usage:" not in said
    as_json = _cli(*args, "--json", "--state-dir", str(tmp_path / "state"))
    assert as_json.returncode == 2 and json.loads(as_json.stderr)["error"].startswith(line.split(" (see")[0])


# ---- -v and -q anywhere -----------------------------------------------------------------------------------


def test_verbose_and_quiet_are_counted_wherever_they_are_given():
    parser = build_parser()
    for line, level in ((["status", "x"], 0), (["status", "x", "-v"], 1), (["-v", "status", "x", "-v"], 2),
                        (["-vv", "list"], 2), (["list", "-q"], -1), (["clients", "list", "--verbose"], 1),
                        (["-q", "keys", "list", "-q"], -2)):
        assert verbosity(parser.parse_args(line)) == level, line


def test_verbose_after_the_subcommand_is_honoured(tmp_path):
    done = _cli("status", "nope", "-v", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 1 and done.stderr.strip() == "bulk-export: job nope not found", done.stderr
    quiet = _cli("list", "-q", "--state-dir", str(tmp_path / "state"))
    assert quiet.returncode == 0, quiet.stderr


def test_verbose_export_logs_ours_at_info_and_beams_warnings_only(sample_dir, tmp_path):
    runner = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    done = _cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                "--state-dir", str(tmp_path / "state"), *runner, "-v")
    assert done.returncode == 0, done.stderr
    # Said once, by the run (not again by the launcher's check of the options).
    assert done.stderr.count("INFO:pipelines.options:local runner: 2 worker processes") == 1, done.stderr
    assert "INFO:apache_beam" not in done.stderr  # no typehints noise
    assert "WARNING:root:" not in done.stderr  # e.g. a tagged output its step does not declare
    assert "semi_persistent_directory" not in done.stderr  # each worker's start-up notice, relayed
    plain = _cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                 "--state-dir", str(tmp_path / "state"), *runner)
    assert plain.returncode == 0 and "INFO:" not in plain.stderr, plain.stderr


# ---- serve ------------------------------------------------------------------------------------------------------


def test_serve_on_a_busy_port_exits_with_its_own_code(sample_dir, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli("serve", "--source", str(sample_dir), "--output", str(tmp_path / "out"), "--auth", "none",
                    "--port", str(port), "--state-dir", str(tmp_path / "state"), timeout=120)
    assert done.returncode == errors.CannotListen.exit_code == 5
    assert done.stdout == ""  # no "serving ... at ..." for a server that never listened
    [line] = done.stderr.splitlines()
    assert line == f"bulk-export: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_serve_refuses_a_bad_source_or_runner_before_listening(tmp_path):
    for args, said in ((["--source", "does-not-exist"], "no such file or folder"),
                       (["--source", "sample-data", "--runner=FooRunner"], "not a known runner")):
        done = _cli("serve", *args, "--auth", "none", "--port", "1", "--state-dir", str(tmp_path / "state"))
        assert done.returncode == 2 and said in done.stderr and done.stdout == "", done.stderr


def test_the_readme_lists_every_exit_code():
    table = (ROOT / "README.md").read_text().split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    listed = {int(row.split("|")[1]) for row in table.splitlines() if re.match(r"\| \d+ \|", row)}
    codes = {cls.exit_code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, Exception)
             and hasattr(cls, "exit_code")}
    assert codes | {0, 130, 141} == listed


# ---- list ---------------------------------------------------------------------------------------------------------


def test_list_has_a_header_and_says_when_there_are_no_jobs(tmp_path):
    state = str(tmp_path / "state")
    empty = _cli("list", "--state-dir", state)
    assert empty.returncode == 0 and empty.stdout == ""
    assert empty.stderr.strip() == "bulk-export: no active jobs of tenant default"
    assert _cli("list", "--all", "--state-dir", state).stderr.strip() == "bulk-export: no jobs of tenant default"
    store = SqliteJobStore(state)
    store.create(_record("done", tenant="default"))
    store.mark_in_progress("done")
    store.complete("done", _manifest([("Patient", 1234)]), 0)
    finished = _cli("list", "--state-dir", state)
    assert finished.stdout == "" and finished.stderr.strip() == (
        "bulk-export: no active jobs of tenant default; 1 finished job (see list --all)")
    listing = _cli("list", "--all", "--state-dir", state)
    assert listing.returncode == 0 and listing.stderr == ""
    header, row = listing.stdout.splitlines()
    assert header.split() == LIST_HEADER
    assert row.split()[:3] == ["done", ExportStatus.COMPLETE.value, "system"] and row.split()[-1] == "1,234"
    assert header.index("STATUS") == row.index("complete")  # the columns line up
