"""Issue 26, items 2 and 17: a listed source file is read only if it is still the file listed (a file
swapped for a link, or for another file, after listing is reported, never read), a file reached by
several names is read once, and local outputs are never written through a link."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import orjson
import pytest

import launcher.jobs.process as process
import transforms.read.lookup as lookup
import transforms.read.resources as resources
from transforms.read.chunks import plan_chunks, plan_source
from transforms.read.resources import _ReadChunkFn, read_chunk
from transforms.records import BadRecord, ResourceBatch
from transforms.storage.files import create_file, make_folders, move
from transforms.storage.source_files import LINK_IN, LINK_OUT, SWAPPED, source_files

KICKOFF = "https://ehr.example.org/fhir/$export"


def _patients(path: Path, prefix: str, n: int) -> None:
    path.write_text("".join(json.dumps({"resourceType": "Patient", "id": f"{prefix}{i}"}) + "\n" for i in range(n)))


def _tenants(tmp_path: Path) -> Path:
    """t1: p.ndjson (a0-a4) and q.ndjson (b0); t2: secret.ndjson (s0-s99)."""
    data = tmp_path / "data"
    (data / "t1").mkdir(parents=True)
    (data / "t2").mkdir()
    _patients(data / "t1" / "p.ndjson", "a", 5)
    _patients(data / "t1" / "q.ndjson", "b", 1)
    _patients(data / "t2" / "secret.ndjson", "s", 100)
    return data


def _to_link(data: Path) -> None:
    """The issue's swap: t1's listed p.ndjson becomes a link to t2's file."""
    os.remove(data / "t1" / "p.ndjson")
    os.symlink("../t2/secret.ndjson", data / "t1" / "p.ndjson")


def _to_other_file(data: Path) -> None:
    """p.ndjson replaced by another regular file (a new inode) with t2's content."""
    (data / "t1" / "new").write_bytes((data / "t2" / "secret.ndjson").read_bytes())
    os.replace(data / "t1" / "new", data / "t1" / "p.ndjson")


def _to_fifo(data: Path) -> None:
    os.remove(data / "t1" / "p.ndjson")
    os.mkfifo(data / "t1" / "p.ndjson")


def _read(chunks) -> tuple[set[str], list[BadRecord]]:
    ids, bad = set(), []
    for chunk in chunks:
        for item in _ReadChunkFn(1000).process(chunk):
            value = getattr(item, "value", item)  # errors come tagged
            if type(value) is BadRecord:
                bad.append(value)
            elif type(value) is ResourceBatch:
                ids |= {r.body["id"] for r in value.resources}
    return ids, bad


@pytest.mark.parametrize("swap", [_to_link, _to_other_file, _to_fifo])
def test_a_file_swapped_after_listing_is_reported_not_read(tmp_path, swap):
    data = _tenants(tmp_path)
    chunks = list(plan_chunks(f"{data}/t1/", chunk_bytes=64))  # p.ndjson in several chunks
    assert len([c for c in chunks if c.path.endswith("p.ndjson")]) > 1
    swap(data)
    ids, bad = _read(chunks)
    assert ids == {"b0"}
    assert {(Path(r.origin.path).name, r.index, r.reason) for r in bad} == {("p.ndjson", -1, SWAPPED)}
    assert not list(read_chunk(next(c for c in chunks if c.path.endswith("p.ndjson"))))


def test_a_file_swapped_between_listing_and_planning_is_reported(tmp_path, monkeypatch):
    data = _tenants(tmp_path)
    real = source_files

    def listed_then_swapped(source):
        listing = real(source)
        _to_link(data)
        return listing

    monkeypatch.setattr("transforms.read.chunks.source_files", listed_then_swapped)
    items = list(plan_source(f"{data}/t1/"))
    assert [(Path(i.path).name) for i in items if type(i) is not BadRecord] == ["q.ndjson"]
    assert [(Path(i.origin.path).name, i.reason) for i in items if type(i) is BadRecord] == [("p.ndjson", SWAPPED)]


def _lines(entries) -> list[dict]:
    return [orjson.loads(line) for e in entries for line in Path(e["url"].removeprefix("file://")).read_bytes().splitlines()]


def test_a_tenant_export_never_reads_a_file_swapped_for_another_tenants(run_cli, tmp_path, monkeypatch):
    data = _tenants(tmp_path)

    def plan_then_swap(source, *args):
        items = list(plan_source(source, *args))
        _to_link(data)  # after the pipeline listed and planned the source, before it reads it
        return items

    monkeypatch.setattr(resources, "plan_source", plan_then_swap)
    # The pipeline process is forked from this one (not from the fork server), so it builds its
    # read with the swapping plan above.
    monkeypatch.setattr(process, "_CTX", multiprocessing.get_context("fork"))
    result = run_cli("export", "--source", str(data / "{tenant}") + "/", "--tenant", "t1", "--output",
                     str(tmp_path / "out"), "--kickoff", KICKOFF)
    assert result.code == 0, result.err
    manifest = result.manifest()
    assert {r["id"] for r in _lines(manifest["output"])} == {"b0"}
    issues = [o["issue"][0] for o in _lines(manifest["error"])]
    # Swapped after the first listing: a read planned before the swap finds the file changed; one planned
    # after it (the Binaries' read of attachments, say, may be planned first) finds the link.
    reasons = [i["diagnostics"] for i in issues]
    assert reasons in ([f"p.ndjson: {SWAPPED}; not exported"], [f"p.ndjson: {LINK_OUT}; not exported"]), reasons
    assert "t2" not in json.dumps(issues) and str(tmp_path) not in json.dumps(issues)


def test_the_kickoff_scan_never_reads_a_swapped_file(tmp_path, monkeypatch):
    data = _tenants(tmp_path)

    def planned_then_swapped(*args):
        chunks = list(plan_chunks(*args))
        _to_link(data)
        return chunks

    monkeypatch.setattr(lookup, "plan_chunks", planned_then_swapped)
    assert lookup.index_source(f"{data}/t1/").patient_ids == {"b0"}


def test_a_source_folder_swapped_for_a_link_two_levels_above_a_listed_file_is_reported(tmp_path):
    data = _tenants(tmp_path)
    deep = data / "t1" / "a" / "b"
    deep.mkdir(parents=True)
    _patients(deep / "r.ndjson", "c", 3)
    (data / "t2" / "a" / "b").mkdir(parents=True)
    (data / "t2" / "a" / "b" / "r.ndjson").write_bytes((data / "t2" / "secret.ndjson").read_bytes())
    chunks = list(plan_chunks(f"{data}/t1/", chunk_bytes=64))
    os.rename(data / "t1" / "a", tmp_path / "moved")
    os.symlink("../t2/a", data / "t1" / "a")  # t1/a/b/r.ndjson now names t2's file
    ids, bad = _read(chunks)
    assert ids == {"a0", "a1", "a2", "a3", "a4", "b0"}
    assert {(Path(r.origin.path).name, r.reason) for r in bad} == {("r.ndjson", SWAPPED)}


# --- a link to a file of the source (item 17) --------------------------------------------------

def test_a_link_to_a_file_of_the_source_reads_it_once_and_is_reported(run_cli, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    _patients(source / "p.ndjson", "a", 5)
    os.symlink("p.ndjson", source / "alias.ndjson")
    listing = source_files(str(source))
    assert [Path(f.path).name for f in listing.files] == ["p.ndjson"]
    assert [Path(p).name for p in listing.linked] == ["alias.ndjson"]
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"), "--kickoff", KICKOFF)
    assert result.code == 0, result.err
    manifest = result.manifest()
    assert sorted(r["id"] for r in _lines(manifest["output"])) == [f"a{i}" for i in range(5)]  # 5 lines, not 10
    assert [o["issue"][0] for o in _lines(manifest["error"])] == [{
        "severity": "information", "code": "informational",
        "diagnostics": f"alias.ndjson: {LINK_IN}; not exported"}]


def test_a_link_reached_by_a_glob_alone_is_read_at_its_target(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    _patients(source / "p.json.txt", "a", 2)
    os.symlink("p.json.txt", source / "alias.ndjson")
    chunks = list(plan_chunks(f"{source}/*.ndjson"))
    assert [Path(c.path).name for c in chunks] == ["alias.ndjson"]
    assert _read(chunks) == ({"a0", "a1"}, [])


# --- local outputs ------------------------------------------------------------------------------

def test_a_local_output_is_never_written_through_a_planted_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    job = tmp_path / "job"
    (job / ".parts-tmp-1").mkdir(parents=True)
    os.symlink(victim, job / ".parts-tmp-1" / "patients.ndjson")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", job / ".parts-tmp-2")
    with pytest.raises(OSError):
        create_file(str(job / ".parts-tmp-1" / "patients.ndjson"))
    with pytest.raises(OSError):
        create_file(str(job / ".parts-tmp-2" / "Patient.1.ndjson"))
    assert victim.read_bytes() == b"keep" and not os.listdir(tmp_path / "elsewhere")
    with create_file(str(job / "new" / "Patient.ndjson")) as f:
        f.write(b"{}\n")
    assert (job / "new" / "Patient.ndjson").read_bytes() == b"{}\n"


def test_no_local_output_goes_through_a_link_at_any_folder_below_the_output_root(tmp_path):
    root = tmp_path / "out"
    job = root / "t1" / "job"
    (job / ".parts-tmp-1").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, job / ".parts-tmp-1" / "deleted")  # two levels below the job folder
    with pytest.raises(OSError):
        create_file(str(job / ".parts-tmp-1" / "deleted" / "Patient.1.ndjson"), root=str(root))
    with pytest.raises(OSError):
        create_file(str(job / ".parts-tmp-1" / "deleted" / "organize" / "000" / "x.run"), root=str(root))
    os.symlink(elsewhere, root / "t2")  # the tenant folder
    with pytest.raises(OSError):
        create_file(str(root / "t2" / "job" / ".parts-tmp-1" / "Patient.1.ndjson"), root=str(root))
    with create_file(str(job / ".parts-tmp-1" / "Patient.1.ndjson"), root=str(root)) as f:
        f.write(b"{}\n")
    os.symlink(elsewhere, job / "error")  # the final names' folder
    with pytest.raises(OSError):
        make_folders(str(job / "error"), str(root))
    with pytest.raises(OSError):
        move([str(job / ".parts-tmp-1" / "Patient.1.ndjson")], [str(job / "error" / "Patient-0.ndjson")], str(root))
    assert not os.listdir(elsewhere)
    # The root itself is taken as configured, a link or not; below it every folder is its own.
    configured = tmp_path / "configured"
    os.symlink(root, configured)
    make_folders(str(configured / "t1" / "job" / "new"), str(configured))
    move([str(configured / "t1" / "job" / ".parts-tmp-1" / "Patient.1.ndjson")],
         [str(configured / "t1" / "job" / "new" / "Patient-0.ndjson")], str(configured))
    assert (job / "new" / "Patient-0.ndjson").read_bytes() == b"{}\n"


def test_an_export_never_creates_its_job_folder_through_a_link_at_the_tenant_folder(run_cli, tmp_path):
    data = _tenants(tmp_path)
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "t1")
    result = run_cli("export", "--source", str(data / "{tenant}") + "/", "--tenant", "t1", "--output", str(out),
                     "--kickoff", KICKOFF)
    assert result.code != 0, result.err
    assert "not writable" in result.err and "Traceback" not in result.err
    assert not os.listdir(elsewhere)
