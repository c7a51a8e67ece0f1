"""An export that serves attachments finds the source's Binaries in its one read of a file source (issue 28:
the second read of the whole source, for the Binaries alone, doubled a narrow export's time), and reports
what a read of its own types alone would: a bad line that only a Binary could be is not the export's."""

from __future__ import annotations

import base64
import json
import multiprocessing
from pathlib import Path

import orjson

import launcher.jobs.process as process
import transforms.read.resources as resources

KICKOFF = "https://ehr.example.org/fhir/$export?_type=DocumentReference&_since=2024-01-01T00:00:00Z"
OLD, NEW = "2020-05-05T00:00:00Z", "2025-05-05T00:00:00Z"
CONTENT = b"the scanned letter"


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    lines = [
        # A Binary older than _since: an exported resource still has its content served.
        {"resourceType": "Binary", "id": "old", "meta": {"lastUpdated": OLD}, "contentType": "text/plain",
         "data": base64.b64encode(CONTENT).decode()},
        {"resourceType": "DocumentReference", "id": "d1", "meta": {"lastUpdated": NEW}, "status": "current",
         "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/old"}}]},
        {"resourceType": "Binary", "meta": {"lastUpdated": NEW}},  # no id: a Binary read alone drops it
        {"resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": NEW}},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    text += '{"resourceType":"Binary","id":\n'  # broken, and only a Binary could be: not the export's
    text += '{"note":"Binary"}\n'  # not a resource, naming only Binary
    text += '{"resourceType":"DocumentReference","id":\n'  # broken, of the exported type: reported
    (src / "data.ndjson").write_text(text)
    return src


def test_binaries_come_from_the_one_read_and_only_the_exports_own_bad_lines_are_reported(run_cli, tmp_path,
                                                                                          monkeypatch):
    opened = tmp_path / "opened.txt"
    real_open = resources.open_chunk

    def counted(chunk):
        with opened.open("a") as log:
            log.write(f"{Path(chunk.path).name} {chunk.start}\n")
        return real_open(chunk)

    monkeypatch.setattr(resources, "open_chunk", counted)
    # The pipeline process is forked from this one (not from the fork server), so it reads through the count.
    monkeypatch.setattr(process, "_CTX", multiprocessing.get_context("fork"))
    result = run_cli("export", "--source", str(_source(tmp_path)), "--output", str(tmp_path / "out"),
                     "--kickoff", KICKOFF)
    assert result.code == 0, result.err
    assert opened.read_text().splitlines() == ["data.ndjson 0"]  # one chunk, opened once

    manifest = result.manifest()
    [entry] = manifest["output"]
    [document] = [orjson.loads(line) for line in Path(entry["url"].removeprefix("file://")).read_bytes().splitlines()]
    attachment = document["content"][0]["attachment"]
    assert attachment["url"] != "Binary/old" and attachment["size"] == len(CONTENT)
    served = Path(attachment["url"].removeprefix("file://"))
    assert served.read_bytes() == CONTENT

    issues = [issue for e in manifest["error"]
              for line in Path(e["url"].removeprefix("file://")).read_bytes().splitlines()
              for issue in orjson.loads(line)["issue"]]
    errors = [issue["diagnostics"].split(":")[0] for issue in issues if issue["severity"] == "error"]
    assert errors == ["data.ndjson line 7"], issues  # the broken DocumentReference; nothing of the Binaries' lines


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_resources_naming_a_binary_are_served_later_and_copies_across_branches_are_still_duplicates(run_cli,
                                                                                                      tmp_path):
    """The resources that may name a Binary are served and written in their own later stage; the others
    at once. A Binary inside a Bundle line is found too; a copy that names a Binary and a different copy
    that does not are both exported and both reported; each count equals its file's lines."""
    src = tmp_path / "src"
    src.mkdir()
    encoded = base64.b64encode(CONTENT).decode()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Binary", "id": "inner", "contentType": "text/plain", "data": encoded}}]}
    lines = [
        bundle,
        {"resourceType": "DocumentReference", "id": "d1", "status": "current",
         "content": [{"attachment": {"contentType": "text/plain", "url": "Binary/inner"}}]},
        {"resourceType": "DocumentReference", "id": "d1", "status": "superseded",  # another copy, no Binary
         "content": [{"attachment": {"contentType": "text/plain", "url": "attachments/letter.txt"}}]},
        {"resourceType": "DocumentReference", "id": "d2", "status": "current",  # written at once
         "content": [{"attachment": {"contentType": "text/plain", "url": "attachments/letter.txt"}}]},
        {"resourceType": "DocumentReference", "id": "d3", "status": "current",  # an escaped slash
         "content": [{"attachment": {"contentType": "text/plain", "url": "Binary\\/inner"}}]},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines).replace("Binary\\\\/inner", "Binary\\/inner")
    (src / "data.ndjson").write_text(text)
    (src / "attachments").mkdir()
    (src / "attachments" / "letter.txt").write_bytes(b"a letter")

    result = run_cli("export", "--source", str(src), "--output", str(tmp_path / "out"), "--kickoff",
                     "https://ehr.example.org/fhir/$export?_type=DocumentReference")
    assert result.code == 0, result.err
    manifest = result.manifest()
    documents = []
    for entry in manifest["output"]:
        assert entry["type"] == "DocumentReference"
        written = _lines(Path(entry["url"].removeprefix("file://")))
        assert entry["count"] == len(written)
        documents += written
    served = {(d["id"], d["status"]): d["content"][0]["attachment"] for d in documents}
    assert sorted(served) == [("d1", "current"), ("d1", "superseded"), ("d2", "current"), ("d3", "current")]
    for key, content in [(("d1", "current"), CONTENT), (("d3", "current"), CONTENT),
                         (("d1", "superseded"), b"a letter"), (("d2", "current"), b"a letter")]:
        attachment = served[key]
        assert attachment["url"].startswith("file://") and attachment["size"] == len(content), key
        assert Path(attachment["url"].removeprefix("file://")).read_bytes() == content

    issues = [issue for e in manifest["error"]
              for line in Path(e["url"].removeprefix("file://")).read_bytes().splitlines()
              for issue in orjson.loads(line)["issue"]]
    duplicates = sorted(i["diagnostics"].split(":")[0].split(" (")[0]
                        for i in issues if i["code"] == "duplicate")
    assert duplicates == ["data.ndjson line 2", "data.ndjson line 3"], issues
