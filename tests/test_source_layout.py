"""Issue 14: how a source folder is walked (subfolders, links leaving it, FIFOs) and the format
traps (a Bundle on an NDJSON line, NDJSON in a `.json` file). Real files, real Beam runs."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.util import assert_that, equal_to

from transforms.read.chunks import plan_chunks
from transforms.read.pushdown import ReadSelection
from transforms.read.resources import ReadResources
from transforms.storage.source_files import SourceError, list_source, match_source
from transforms.write.error_files import locate

KICKOFF = "https://ehr.example.org/fhir/$export"


def _patient(pid: str) -> str:
    return json.dumps({"resourceType": "Patient", "id": pid})


def _read(pipeline, source, selection=None, source_format="auto"):
    return pipeline | ReadResources(str(source), source_format, selection=selection)


def _ids(batches):
    return batches | "Ids" >> beam.FlatMap(lambda b: [(r.type, r.body["id"]) for r in b.resources])


def _where(read, root: str):
    return (read.errors | "All" >> beam.combiners.ToList()
            | "Where" >> beam.FlatMap(lambda rs, lines: [(w, r.reason) for r, w in locate(rs, root, lines)],
                                      beam.pvalue.AsList(read.lines)))


def _tenants(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "acme" / "sub").mkdir(parents=True)
    (data / "beta" / "lake").mkdir(parents=True)
    (data / "acme" / "p.ndjson").write_text(_patient("a1") + "\n")
    (data / "acme" / "sub" / "q.ndjson").write_text(_patient("a2") + "\n")
    (data / "beta" / "p.ndjson").write_text(_patient("b1") + "\n")
    (data / "beta" / "lake" / "r.ndjson").write_text(_patient("b2") + "\n")
    os.symlink("../beta/p.ndjson", data / "acme" / "link.ndjson")        # a file out of the tenant
    os.symlink("../../beta/lake", data / "acme" / "sub" / "lake")         # a folder out of the tenant
    os.symlink("p.ndjson", data / "acme" / "alias.ndjson")               # inside: read once, as p.ndjson
    os.symlink("..", data / "acme" / "sub" / "up")                        # inside, a cycle: read once
    return data


OUT = "a link whose target is outside the source folder (not followed)"
ALIAS = "a link to a file the source holds under another name (read once, at that name)"


# --- links out of the source root (item 5) ----------------------------------------------------

def test_links_leaving_the_source_folder_are_refused_not_read(pipeline, tmp_path):
    data = _tenants(tmp_path)
    out = _read(pipeline, data / "acme")
    assert_that(_ids(out.batches), equal_to([("Patient", "a1"), ("Patient", "a2")]))
    assert_that(_where(out, f"{data}/acme/"), equal_to([
        ("alias.ndjson", ALIAS), ("link.ndjson", OUT), ("sub/lake", OUT),
    ]), label="Errors")
    pipeline.run()


def test_a_glob_refuses_links_leaving_its_folder(tmp_path):
    data = _tenants(tmp_path)
    files, refused = list_source(f"{data}/acme/*.ndjson")
    assert [Path(p).name for p, _ in files] == ["p.ndjson"]  # alias.ndjson leads to it: read once
    assert [(Path(p).name, why) for p, why in refused] == [("link.ndjson", OUT)]
    assert [Path(c.path).name for c in plan_chunks(f"{data}/acme/*.ndjson")] == ["p.ndjson"]


def test_a_tenant_export_never_exports_another_tenants_resources(run_cli, tmp_path):
    data = _tenants(tmp_path)
    result = run_cli("export", "--source", str(data / "{tenant}"), "--tenant", "acme", "--output",
                     str(tmp_path / "out"), "--kickoff", KICKOFF)
    assert result.code == 0, result.err
    manifest = result.manifest()
    ids = set()
    for entry in manifest["output"]:
        ids |= {orjson.loads(line)["id"] for line in Path(entry["url"].removeprefix("file://")).read_bytes().splitlines()}
    assert ids == {"a1", "a2"}
    issues = []
    for entry in manifest["error"]:
        issues += [orjson.loads(line)["issue"][0] for line in Path(entry["url"].removeprefix("file://")).read_bytes().splitlines()]
    assert sorted(i["diagnostics"] for i in issues) == [
        f"alias.ndjson: {ALIAS}; not exported", f"link.ndjson: {OUT}; not exported", f"sub/lake: {OUT}; not exported"]
    assert "beta" not in json.dumps(issues) and str(tmp_path) not in json.dumps(issues)


# --- subfolders (item 8) -----------------------------------------------------------------------

def test_subfolders_are_read_recursively_and_hidden_ones_skipped(pipeline, tmp_path):
    (tmp_path / "year=2024" / "month=01").mkdir(parents=True)
    (tmp_path / ".staging" / "deep").mkdir(parents=True)
    (tmp_path / "year=2024" / ".tmp").mkdir()
    (tmp_path / "top.ndjson").write_text(_patient("t") + "\n")
    (tmp_path / "year=2024" / "month=01" / "p.ndjson").write_text(_patient("deep") + "\n{bad\n")
    (tmp_path / "year=2024" / ".hidden.ndjson").write_text(_patient("h1") + "\n")
    (tmp_path / "year=2024" / ".tmp" / "x.ndjson").write_text(_patient("h2") + "\n")
    (tmp_path / ".staging" / "deep" / "y.ndjson").write_text(_patient("h3") + "\n")
    assert [p for p, _ in match_source(str(tmp_path))] == [
        f"{tmp_path}/top.ndjson", f"{tmp_path}/year=2024/month=01/p.ndjson"]
    assert [p for p, _ in match_source(f"{tmp_path}/")] == [
        f"{tmp_path}/top.ndjson", f"{tmp_path}/year=2024/month=01/p.ndjson"]
    out = _read(pipeline, tmp_path)
    assert_that(_ids(out.batches), equal_to([("Patient", "t"), ("Patient", "deep")]))
    assert_that(_where(out, f"{tmp_path}/"), equal_to([
        ("year=2024/month=01/p.ndjson line 2", "not valid JSON (unexpected character, expected a string key at column 2)"),
    ]), label="Errors")
    pipeline.run()


# --- FIFOs and other non-regular files (item 14d) ----------------------------------------------

def _unblock(fifo: Path) -> threading.Timer:
    """Opens the FIFO's write end after a while, so a reader that opened it wrongly does not hang."""
    def open_writer():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
    timer = threading.Timer(3.0, open_writer)
    timer.daemon = True
    timer.start()
    return timer


def test_a_fifo_as_the_source_is_refused_without_opening_it(pipeline, tmp_path):
    fifo = tmp_path / "in.ndjson"
    os.mkfifo(fifo)
    timer = _unblock(fifo)
    with pytest.raises(SourceError, match=r"in\.ndjson.* is not a regular file or a folder"):
        match_source(str(fifo))
    _read(pipeline, fifo)
    with pytest.raises(SourceError, match="not a regular file"):
        pipeline.run()
    timer.cancel()


def test_a_fifo_as_the_source_fails_the_export_clearly(run_cli, tmp_path):
    fifo = tmp_path / "in.ndjson"
    os.mkfifo(fifo)
    timer = _unblock(fifo)
    result = run_cli("export", "--source", str(fifo), "--output", str(tmp_path / "out"), "--kickoff", KICKOFF)
    timer.cancel()
    assert result.code != 0
    assert "not a regular file" in result.err + result.out


def test_a_fifo_in_a_folder_is_reported_and_never_opened(pipeline, tmp_path):
    (tmp_path / "p.ndjson").write_text(_patient("p") + "\n")
    os.mkfifo(tmp_path / "pipe.ndjson")
    timer = _unblock(tmp_path / "pipe.ndjson")
    out = _read(pipeline, tmp_path)
    assert_that(_ids(out.batches), equal_to([("Patient", "p")]))
    assert_that(_where(out, f"{tmp_path}/"), equal_to([
        ("pipe.ndjson", "not a regular file (a FIFO, socket or device; not opened)"),
    ]), label="Errors")
    pipeline.run()
    timer.cancel()


# --- format traps (item 11) -------------------------------------------------------------------

def _bundle(kind: str, *entries) -> dict:
    return {"resourceType": "Bundle", "id": f"b-{kind}", "type": kind, "entry": list(entries)}


def test_a_bundle_on_an_ndjson_line_is_read_as_its_entries(pipeline, tmp_path):
    tx = _bundle("transaction",
                 {"resource": {"resourceType": "Patient", "id": "p1"}, "request": {"method": "POST"}},
                 {"request": {"method": "DELETE", "url": "Patient/gone"}},
                 {"resource": {"resourceType": "Observation", "id": "o1"}},
                 {"resource": {"resourceType": "Patient"}},
                 {"resource": {"resourceType": "Patient", "id": "p2", "meta": {"lastUpdated": "2099-01-01T00:00:00Z"}}})
    document = _bundle("document", {"resource": {"resourceType": "Composition", "id": "c"}})
    history = _bundle("history", {"resource": {"resourceType": "Patient", "id": "p9"}})
    lines = [_patient("p0"), json.dumps(tx), json.dumps(document), json.dumps(history)]
    (tmp_path / "b.ndjson").write_text("\n".join(lines) + "\n")
    from transforms.fhir.window import LastUpdatedWindow
    selection = ReadSelection.of(["Patient"], LastUpdatedWindow("2030-01-01T00:00:00Z"))
    out = _read(pipeline, tmp_path / "b.ndjson", selection)
    assert_that(_ids(out.batches), equal_to([("Patient", "p0"), ("Patient", "p1")]))
    assert_that(_where(out, f"{tmp_path}/"), equal_to([
        ("b.ndjson line 2 Bundle.entry[1]", "Bundle entry has no resource (request.method DELETE)"),
        ("b.ndjson line 2 Bundle.entry[3]", "has no id"),
        ("b.ndjson line 2 Bundle.entry[4] (Patient/p2)", "meta.lastUpdated: updated after transactionTime"),
        ("b.ndjson line 4", "Bundle type 'history' is not a source of resources"),
    ]), label="Errors")
    pipeline.run()


def test_a_document_bundle_line_stays_one_bundle_and_entries_are_compact(pipeline, tmp_path):
    document = _bundle("document", {"resource": {"resourceType": "Composition", "id": "c"}})
    tx = _bundle("batch", {"resource": {"resourceType": "Patient", "id": "p1", "active": True}})
    (tmp_path / "b.ndjson").write_text(json.dumps(document) + "\r\n" + json.dumps(tx) + "\n")
    out = _read(pipeline, tmp_path / "b.ndjson")
    raws = out.batches | beam.FlatMap(lambda b: [(r.type, r.raw) for r in b.resources])
    assert_that(raws, equal_to([
        ("Bundle", json.dumps(document).encode()),
        ("Patient", b'{"resourceType":"Patient","id":"p1","active":true}'),
    ]))
    assert_that(out.errors, equal_to([]), label="NoErrors")
    pipeline.run()


def test_a_patient_export_of_a_one_line_transaction_bundle_finds_its_patients(run_cli, tmp_path):
    (tmp_path / "in").mkdir()
    tx = _bundle("transaction", {"resource": {"resourceType": "Patient", "id": "p1"}},
                 {"resource": {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}}})
    (tmp_path / "in" / "tx.ndjson").write_text(json.dumps(tx) + "\n")
    result = run_cli("export", "--source", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--kickoff", KICKOFF + "?_type=Patient,Observation")
    assert result.code == 0, result.err
    counts = {e["type"]: e["count"] for e in result.manifest()["output"]}
    assert counts == {"Patient": 1, "Observation": 1}
    # At Patient level the kick-off's own look-up finds the Patient inside the line's Bundle too.
    result = run_cli("export", "--source", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--kickoff", "https://x/fhir/Patient/$export?_type=Patient,Observation")
    assert result.code == 0, result.err
    counts = {e["type"]: e["count"] for e in result.manifest()["output"]}
    assert counts == {"Patient": 1, "Observation": 1}


def test_ndjson_in_a_json_file_gets_a_hint(pipeline, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.json").write_text(_patient("p1") + "\n" + _patient("p2") + "\n")
    (tmp_path / "broken.json").write_text('{"resourceType": "Patient", "id": ')
    out = _read(pipeline, tmp_path)
    assert_that(_where(out, f"{tmp_path}/"), equal_to([
        ("broken.json", "document is not valid JSON (unexpected end of data at line 1 column 35)"),
        ("sub/data.json", "document is not valid JSON (unexpected content after document at line 2 column 1); "
                          "it looks like NDJSON: use --source-format ndjson"),
    ]), label="Errors")
    pipeline.run()


@pytest.mark.parametrize("join", [False, True], ids=["side-input", "keyed-join"])
def test_a_bundle_lines_entries_keep_their_own_compartment_verdicts(run_cli, tmp_path, join):
    """Entries of one NDJSON line share the line's number: the keyed join must still tell them apart."""
    (tmp_path / "in").mkdir()
    group = {"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
             "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p3"}}]}
    tx = _bundle("transaction", *[
        {"resource": {"resourceType": "Observation", "id": f"o-{pid}", "subject": {"reference": f"Patient/{pid}"}}}
        for pid in ("p1", "p2", "p1", "p2")])
    tx["entry"][2]["resource"]["id"] = "o-p1-bis"
    tx["entry"][3]["resource"]["id"] = "o-p2-bis"
    (tmp_path / "in" / "data.ndjson").write_text("\n".join(
        [_patient("p1"), _patient("p2"), _patient("p3"), json.dumps(group), json.dumps(tx)]) + "\n")
    extra = ["--max-side-input-patients", "1"] if join else []  # 2 covered patients: a keyed join
    result = run_cli("export", "--source", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--kickoff", KICKOFF.replace("$export", "Group/g1/$export") + "?_type=Observation", *extra)
    assert result.code == 0, result.err
    ids = set()
    for entry in result.manifest()["output"]:
        ids |= {orjson.loads(line)["id"] for line in Path(entry["url"].removeprefix("file://")).read_bytes().splitlines()}
    assert ids == {"o-p1", "o-p1-bis"}


def test_a_line_whose_first_member_names_another_type_is_skipped_whatever_it_holds(pipeline, tmp_path):
    """`{"resourceType":"Claim",...` is a Claim: skipped unparsed even with a contained Patient (and
    broken); a Bundle line, a selected type's line and an escaped type are still read."""
    lines = [
        '{"resourceType":"Claim","id":"c1","contained":[{"resourceType":"Patient","id":"x"}],broken',
        '{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient","id":"b1"}}]}',
        '{"resourceType":"Patient","id":"p1",broken',
        '{"resourceType":"Pati\\u0065nt","id":"p2"}',
        '{"resourceType":"Patient","id":"p3"}',
    ]
    (tmp_path / "n.ndjson").write_text("\n".join(lines) + "\n")
    out = _read(pipeline, tmp_path / "n.ndjson", ReadSelection.of(["Patient"]))
    assert_that(_ids(out.batches), equal_to([("Patient", "b1"), ("Patient", "p2"), ("Patient", "p3")]))
    assert_that(_where(out, f"{tmp_path}/") | beam.Map(lambda w: w[0]), equal_to(["n.ndjson line 3"]),
                label="Errors")
    pipeline.run()


def test_a_narrow_read_skips_unparsed_only_lines_that_cannot_be_of_a_selected_type(pipeline, tmp_path):
    """`_type=Patient`: a line without `"Patient"` and without a `\\u` escape is not parsed, so a broken
    line of another type is not reported; a broken Patient line, and an escaped one, still are read."""
    lines = [
        _patient("p0"),
        '{"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p0"}}',
        '{"resourceType": "Observation", "id": "o2", broken',
        '{"resourceType": "Patient", "id": "p1", broken',
        '{"resourceType": "Pati\\u0065nt", "id": "p2"}',
    ]
    (tmp_path / "n.ndjson").write_text("\n".join(lines) + "\n")
    out = _read(pipeline, tmp_path / "n.ndjson", ReadSelection.of(["Patient"]))
    assert_that(_ids(out.batches), equal_to([("Patient", "p0"), ("Patient", "p2")]))
    assert_that(_where(out, f"{tmp_path}/") | beam.Map(lambda w: w[0]), equal_to(["n.ndjson line 4"]),
                label="Errors")
    pipeline.run()
