"""`bulk-export` end to end on generated data and the real local runner.

Every expectation is computed here by reading the source files with `json`,
never by asking the engine.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

import pytest

from launcher.tools.sample_data import generate
from tests.helpers import _console, _source_lines, job_rows

KICKOFF = "https://ehr.example.org/fhir/$export"
REPO = Path(__file__).resolve().parents[1]
# 12:00:00Z, spelled with an offset; some Observations are stamped around it in several
# spellings, so comparing the texts as strings would put some on the wrong side.
EDGE = "2020-06-15T14:00:00+02:00"
NEAR_EDGE = ("2020-06-15T12:00:00Z", EDGE, "2020-06-15T08:30:00-05:00", "2020-06-15T16:00:00.5+05:00",
             "2020-06-15T12:00:00.001Z", "2020-06-15T11:59:59.999+00:00", "2020-06-15T12:00:00.000-00:00")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Generated NDJSON re-spaced by `json.dumps`, so re-serialised output could not match it."""
    out = tmp_path_factory.mktemp("source")
    generate(out, patients=30, seed=5)
    for path in out.glob("*.ndjson"):
        lines = [json.dumps(json.loads(line)) for line in path.read_text().splitlines()]
        if path.stem == "Patient":  # meta present, lastUpdated absent
            lines.append(json.dumps({"resourceType": "Patient", "id": "no-stamp", "meta": {"versionId": "2"}}))
        if path.stem == "Observation":
            lines += [json.dumps({"resourceType": "Observation", "id": f"edge-{n}", "meta": {"lastUpdated": stamp}})
                      for n, stamp in enumerate(NEAR_EDGE)]
        path.write_text("\n".join(lines) + "\n")
    return out


def _exported(manifest: dict) -> dict[str, list[bytes]]:
    """Lines per type of a manifest's output files; checks urls and counts on the way."""
    lines = defaultdict(list)
    for entry in manifest["output"]:
        path = _file_of(entry["url"])
        data = path.read_bytes()
        assert data.endswith(b"\n")
        file_lines = data[:-1].split(b"\n")
        assert entry["count"] == len(file_lines), entry
        assert {json.loads(line)["resourceType"] for line in file_lines} == {entry["type"]}
        lines[entry["type"]].extend(file_lines)
    return dict(lines)


def _file_of(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file" and parsed.netloc == "", url
    path = Path(unquote(parsed.path))
    assert path.is_absolute() and path.is_file(), url
    return path


def _ids(lines: dict[str, list[bytes]]) -> dict[str, list[str]]:
    return {t: sorted(json.loads(line)["id"] for line in ls) for t, ls in lines.items()}


def _export(run_cli, source, output, *extra: str, kickoff: str = KICKOFF):
    result = run_cli("export", "--source", str(source), "--output", str(output), "--kickoff", kickoff, *extra)
    assert result.code == 0, result.err
    return result


def _job_id(result) -> str:
    return result.manifest_path.parent.name


def _last_updated(line: bytes) -> dt.datetime | None:
    text = json.loads(line).get("meta", {}).get("lastUpdated")
    return dt.datetime.fromisoformat(text) if text else None


def test_system_export_writes_every_line_once_with_its_original_bytes(run_cli, source, tmp_path):
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    result = _export(run_cli, source, tmp_path / "out")
    after = dt.datetime.now(dt.timezone.utc)
    manifest = result.manifest()
    status = json.loads(run_cli("status", _job_id(result), "--json").out)
    assert manifest["transactionTime"] == status["transaction_time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", manifest["transactionTime"])
    assert before <= dt.datetime.fromisoformat(manifest["transactionTime"]) <= after
    assert manifest["request"] == KICKOFF
    assert manifest["requiresAccessToken"] is False
    assert (manifest["error"], manifest["deleted"]) == ([], [])
    assert "link" not in manifest
    expected, exported = _source_lines(source), _exported(manifest)
    assert _ids(exported) == _ids(expected)
    assert {t: sorted(ls) for t, ls in exported.items()} == {t: sorted(ls) for t, ls in expected.items()}


def _pick_instant(lines: list[bytes], quantile: float) -> str:
    """The lastUpdated text found at `quantile` of the data's stamps, in time order."""
    texts = {json.loads(line)["meta"]["lastUpdated"] for line in lines if _last_updated(line)}
    return sorted(texts, key=dt.datetime.fromisoformat)[int(len(texts) * quantile)]


@pytest.mark.parametrize("exclude_missing", [False, True], ids=["keep-missing", "exclude-missing"])
@pytest.mark.parametrize("bounds", [("since",), ("until",), ("since", "until")], ids=["since", "until", "both"])
def test_since_until_export_exactly_the_window(run_cli, source, tmp_path, bounds, exclude_missing):
    wanted = ("Patient", "Observation")
    lines = [line for t, ls in _source_lines(source).items() if t in wanted for line in ls]
    since = EDGE if "since" in bounds else None
    until = (_pick_instant(lines, 0.7) if since else EDGE) if "until" in bounds else None
    low, high = (dt.datetime.fromisoformat(x) if x else None for x in (since, until))
    expected = defaultdict(list)
    for line in lines:
        stamp = _last_updated(line)
        keep = not exclude_missing if stamp is None else (not low or stamp > low) and (not high or stamp < high)
        if keep:
            expected[json.loads(line)["resourceType"]].append(line)
    assert any(_last_updated(line) is None for line in lines)  # the rule is exercised
    assert any(_last_updated(line) in (low, high) for line in lines)  # so are the exclusive bounds
    query = "_type=Patient,Observation" + "".join(
        f"&_{name}={quote(value, safe='')}" for name, value in (("since", since), ("until", until)) if value
    )
    flags = ["--exclude-missing-last-updated"] if exclude_missing else []
    manifest = _export(run_cli, source, tmp_path / "out", *flags, kickoff=f"{KICKOFF}?{query}").manifest()
    assert manifest["request"] == f"{KICKOFF}?{query}"
    assert _ids(_exported(manifest)) == _ids(expected)


@pytest.mark.parametrize("unit", ["lines", "bytes"])
def test_part_limits_split_types_into_contiguous_parts(run_cli, source, tmp_path, unit):
    expected = _source_lines(source)

    def size(lines: list[bytes]) -> int:
        return len(lines) if unit == "lines" else sum(len(line) + 1 for line in lines)

    cap = 7 if unit == "lines" else 2 * max(size([line]) for ls in expected.values() for line in ls)
    result = _export(run_cli, source, tmp_path / "out", f"--max-{unit}-per-part", str(cap))
    manifest, names = result.manifest(), defaultdict(list)
    for entry in manifest["output"]:
        path = _file_of(entry["url"])
        lines = path.read_bytes().splitlines()
        assert entry["count"] == len(lines) and 1 <= size(lines) <= cap
        names[entry["type"]].append(path.name)
    for resource_type, got in names.items():
        assert sorted(got) == sorted(f"{resource_type}-{n}.ndjson" for n in range(len(got)))
        assert len(got) >= math.ceil(size(expected[resource_type]) / cap)
    assert len(names["Observation"]) > 1
    job_files = sorted(p.name for p in result.manifest_path.parent.iterdir())
    assert job_files == sorted(["manifest.json", *(n for got in names.values() for n in got)])
    assert _ids(_exported(manifest)) == _ids(expected)


def test_bad_lines_become_operation_outcomes_naming_file_and_line(run_cli, tmp_path):
    (folder := tmp_path / "src").mkdir()
    good = [json.dumps({"resourceType": "Observation", "id": f"o{n}", "status": "final"}) for n in range(6)]
    (folder / "Observation.ndjson").write_text("\n".join(good) + "\n")
    patients = [json.dumps({"resourceType": "Patient", "id": f"p{n}", "gender": "other"}) for n in range(9)]
    bad = {"not json at all", "[1, 2, 3]", '{"id": "no-type"}', "{truncated"}
    mixed = ["{truncated", patients[0], patients[1], "not json at all", "", patients[2], patients[3],
             "[1, 2, 3]", patients[4], patients[5], patients[6], '{"id": "no-type"}', patients[7], patients[8]]
    mixed_path = folder / "mixed.ndjson"
    mixed_path.write_text("\n".join(mixed))  # no final newline
    bad_lines = {n for n, line in enumerate(mixed, start=1) if line in bad}

    result = _export(run_cli, folder, tmp_path / "out", "--chunk-bytes", "64")
    manifest = result.manifest()
    assert _ids(_exported(manifest)) == {"Observation": sorted(f"o{n}" for n in range(6)),
                                         "Patient": sorted(f"p{n}" for n in range(9))}
    [entry] = manifest["error"]
    path = _file_of(entry["url"])
    assert path == result.manifest_path.parent / "error" / "OperationOutcome-0.ndjson"
    outcomes = [json.loads(line) for line in path.read_text().splitlines()]
    assert entry["count"] == len(outcomes) == len(bad_lines)
    named = set()
    for outcome in outcomes:
        assert outcome["resourceType"] == "OperationOutcome"
        [issue] = outcome["issue"]
        assert issue["severity"] == "error"
        # Issue 14: named relative to the source folder, never by the server's path.
        named.add(int(re.match(r"mixed\.ndjson line (\d+)\b", issue["diagnostics"]).group(1)))
    assert named == bad_lines
    status = run_cli("status", _job_id(result))
    assert "complete" in status.out and f"bad records {len(bad_lines)}" in status.out
    assert json.loads(run_cli("status", _job_id(result), "--json").out)["bad_records"] == len(bad_lines)


def _by_type(resources) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for resource in sorted(resources, key=lambda r: r["id"]):
        grouped[resource["resourceType"]].append(resource)
    return dict(grouped)


def test_transaction_bundles_export_every_entry_resource(run_cli, tmp_path):
    (folder := tmp_path / "bundles").mkdir()
    bundles = [
        [{"resourceType": "Patient", "id": "pa"}, {"resourceType": "Observation", "id": "oa1"},
         {"resourceType": "Encounter", "id": "ea", "subject": {"reference": "urn:uuid:pa"}}],
        [{"resourceType": "Patient", "id": "pb", "name": [{"family": "Zoë"}]},
         {"resourceType": "Observation", "id": "ob1"}, {"resourceType": "Observation", "id": "ob2"}],
    ]
    for n, resources in enumerate(bundles):
        entries = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r,
                    "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        (folder / f"patient-{n}.json").write_text(json.dumps(bundle, indent=2))
    exported = _exported(_export(run_cli, folder, tmp_path / "out").manifest())
    assert _by_type(json.loads(line) for ls in exported.values() for line in ls) == _by_type(sum(bundles, []))


def test_gzip_ndjson_source_is_read(run_cli, source, tmp_path):
    (folder := tmp_path / "gz").mkdir()
    with gzip.open(folder / "Patient.ndjson.gz", "wb") as f:
        f.write((source / "Patient.ndjson").read_bytes())
    shutil.copy(source / "Group.ndjson", folder / "Group.ndjson")
    exported = _exported(_export(run_cli, folder, tmp_path / "out").manifest())
    expected = _source_lines(source)
    assert sorted(exported["Patient"]) == sorted(expected["Patient"])
    assert sorted(exported["Group"]) == sorted(expected["Group"])
    assert set(exported) == {"Patient", "Group"}


@pytest.mark.parametrize("broken", ["source", "output", "gzip"])
def test_a_failed_export_is_an_error_job_without_a_manifest(run_cli, source, tmp_path, broken):
    blocker = tmp_path / "a-file"  # a regular file cannot hold an output folder
    blocker.write_text("not a folder")
    (corrupt := tmp_path / "corrupt").mkdir()  # readable until mid-stream, then not: found mid-run
    shutil.copy(source / "Patient.ndjson", corrupt / "Patient.ndjson")
    packed = gzip.compress((source / "Observation.ndjson").read_bytes())
    (corrupt / "Observation.ndjson.gz").write_bytes(packed[: len(packed) // 2])
    src, out, named = {
        "source": (tmp_path / "no-such", tmp_path / "out", tmp_path / "no-such"),
        "output": (source, blocker / "out", blocker),
        "gzip": (corrupt, tmp_path / "out", corrupt / "Observation.ndjson.gz"),
    }[broken]
    result = run_cli("export", "--source", str(src), "--output", str(out))
    if broken != "gzip":  # Issue 29: a missing source or an output that cannot be made is refused, no job recorded
        assert result.code == 2 and result.err.startswith("bulk-export: refused: ") and str(named) in result.err
        assert job_rows(run_cli("list", "--all").out) == [] and not (tmp_path / "out").exists()
        return
    assert result.code == 1
    [job_id] = [row[0] for row in job_rows(run_cli("list", "--all").out)]
    [line] = result.err.splitlines()  # one line, no Beam traceback
    assert line.startswith(f"bulk-export: job {job_id} failed: ")
    record = json.loads(run_cli("status", job_id, "--json").out)
    assert record["status"] == "error"
    assert str(named) in record["error_message"] and str(named) in line
    assert f"job {job_id}: error" in run_cli("status", job_id).out
    assert list(tmp_path.rglob("manifest.json")) == []
    assert list(Path(out).rglob("*.ndjson")) == []  # partial parts are removed too


def test_status_manifest_and_list_report_the_finished_job(run_cli, source, tmp_path):
    result = _export(run_cli, source, tmp_path / "out")
    job_id, manifest = _job_id(result), result.manifest()
    counts = Counter()
    for entry in manifest["output"]:
        counts[entry["type"]] += entry["count"]
    status = run_cli("status", job_id)
    assert status.code == 0 and f"job {job_id}: complete" in status.out
    shown = {t: int(n.replace(",", "")) for t, n in re.findall(r"^  ([A-Z]\w+) +([\d,]+)$", status.out, re.M)}
    assert shown == dict(counts) == {t: len(ls) for t, ls in _source_lines(source).items()}
    record = json.loads(run_cli("status", job_id, "--json").out)
    assert record["status"] == "complete"
    assert {p["type"]: p["exported"] for p in record["progress"]} == dict(counts)
    assert json.loads(run_cli("manifest", job_id).out) == manifest
    assert run_cli("list").out.strip() == ""
    assert [row[:2] for row in job_rows(run_cli("list", "--all").out)] == [[job_id, "complete"]]


def test_unknown_job_is_not_found(run_cli):
    result = run_cli("status", "3f1c2a9e-0000-4000-8000-000000000000")
    assert result.code == 1 and "not found" in result.err


def test_tenants_and_owners_do_not_see_each_others_jobs(run_cli, source, tmp_path):
    result = _export(run_cli, source, tmp_path / "out", "--tenant", "clinic-a", "--owner", "alice")
    job_id = _job_id(result)
    assert result.manifest_path.parent.parent == tmp_path / "out" / "clinic-a"
    for args in (["--tenant", "clinic-b"], ["--tenant", "clinic-a", "--owner", "bob"]):
        for command in ("status", "manifest"):
            hidden = run_cli(command, job_id, *args)
            assert hidden.code == 1 and "not found" in hidden.err, (command, args)
        assert run_cli("list", "--all", *args).out.strip() == ""
    assert run_cli("status", job_id, "--tenant", "clinic-a", "--owner", "alice").code == 0


def test_multi_processing_runner_gives_the_same_export(run_cli, source, tmp_path):
    default = _exported(_export(run_cli, source, tmp_path / "one").manifest())
    multi = _exported(_export(
        run_cli, source, tmp_path / "two", "--direct_running_mode=multi_processing", "--direct_num_workers=2"
    ).manifest())
    assert _ids(multi) == _ids(default) == _ids(_source_lines(source))


def test_installed_console_script_exports_the_bundled_sample(tmp_path):
    done = subprocess.run(
        [*_console(), "export", "--source", str(REPO / "sample-data"), "--output", str(tmp_path / "out"),
         "--state-dir", str(tmp_path / "state")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    [path] = [line.removeprefix("manifest: ") for line in done.stdout.splitlines() if line.startswith("manifest: ")]
    manifest = json.loads(Path(path).read_text())
    expected = sum(len(p.read_bytes().splitlines()) for p in (REPO / "sample-data").glob("*.ndjson"))
    assert sum(entry["count"] for entry in manifest["output"]) == expected


def _job_statuses(db: Path) -> list[str]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return [status for (status,) in conn.execute("SELECT status FROM jobs")]
    except sqlite3.OperationalError:  # not created yet
        return []


def test_ctrl_c_records_the_job_as_error_without_a_manifest(run_cli, tmp_path, big_source):
    state, out = tmp_path / "state", tmp_path / "out"
    export = subprocess.Popen(
        [*_console(), "export", "--source", str(big_source), "--chunk-bytes", "256",
         "--output", str(out), "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while _job_statuses(state / "jobs.sqlite3") != ["in-progress"] and time.monotonic() < deadline:
        time.sleep(0.02)
    export.send_signal(signal.SIGINT)
    _, err = export.communicate(timeout=120)
    assert export.returncode == 130, err
    [row] = job_rows(run_cli("list", "--all", state_dir=state).out)
    assert row[1] == "error"
    record = json.loads(run_cli("status", row[0], "--json", state_dir=state).out)
    assert "interrupted" in record["error_message"]
    assert list(out.rglob("manifest.json")) == []


def test_a_misspelled_option_is_refused_not_passed_to_beam(sample_dir, tmp_path):
    done = subprocess.run([*_console(), "export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                           "--state-dir", str(tmp_path / "state"), "--exclude-missing-lastupdated"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    # Issue 29: the message names the closest option (it was "refused: unknown option ...").
    assert done.stderr.strip() == (
        "bulk-export export: unknown option --exclude-missing-lastupdated; did you mean"
        " --exclude-missing-last-updated? (see bulk-export export --help)")
    assert not (tmp_path / "out").exists()


def test_a_relative_source_is_named_relative_to_its_folder_in_error_files(run_cli, tmp_path, monkeypatch):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.ndjson").write_text('{"resourceType":"Patient","id":"p"}\n{oops\n')
    monkeypatch.chdir(tmp_path)
    result = run_cli("export", "--source", "in", "--output", "out")
    assert result.code == 0, result.err
    assert "1 resource in 1 type, 1 bad record" in result.out
    [entry] = result.manifest()["error"]
    [outcome] = [json.loads(line) for line in _file_of(entry["url"]).read_text().splitlines()]
    assert outcome["issue"][0]["code"] == "invalid"
    # Issue 14: relative to the source folder (it was the absolute path), the same wherever it is read.
    assert outcome["issue"][0]["diagnostics"].startswith("data.ndjson line 2: not valid JSON")


def test_a_failing_export_on_forked_workers_says_one_line(sample_dir, tmp_path):
    """Beam's worker prints a failing bundle's traceback besides logging it; without -v neither is shown."""
    source = tmp_path / "source"
    shutil.copytree(sample_dir, source)
    whole = gzip.compress(b'{"resourceType":"Patient","id":"p"}\n' * 200)
    (source / "Trunc.ndjson.gz").write_bytes(whole[: len(whole) // 2])
    done = subprocess.run([*_console(), "export", "--source", str(source), "--output", str(tmp_path / "out"),
                           "--state-dir", str(tmp_path / "state"), "--direct_running_mode=multi_processing",
                           "--direct_num_workers=2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bulk-export: job ") and "Trunc.ndjson.gz" in lines[0], done.stderr
