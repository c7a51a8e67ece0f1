"""Attachments over real HTTP: `Attachment.url`s that resolve inside the source are served with the job.

A DocumentReference's `Binary/<id>` and relative-path attachments are rewritten to download
URLs of the job, with `size` and `hash`, and download with the job's token only; an escaping
path or a link out of the source is not served and is reported; absolute URLs are left as they
are with one note per job; a PDF in the source's `attachments/` folder is no bad record; the files
go with the job; `--max-inline-attachment-bytes` moves large inline data to a served file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest

from tests.server_process import FHIR_HEADERS, poll, serve
from tests.smart_client import ClientKey, get_token, register, write_jwks

PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"
BINARY = b"binary content \x00\x01\x02"
SECRET = b"outside the source"
PHOTO = bytes(range(256)) * 20  # 5,120 bytes


def _b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


def _hash(content: bytes) -> str:
    return base64.b64encode(hashlib.sha1(content).digest()).decode()


def _doc(rid: str, *urls: str) -> dict:
    return {"resourceType": "DocumentReference", "id": rid, "status": "current",
            "content": [{"attachment": {"contentType": "application/pdf", "url": url}} for url in urls]}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("attach")
    (root / "secret.txt").write_bytes(SECRET)
    src = root / "src"
    (src / "attachments" / "scans").mkdir(parents=True)
    (src / "attachments" / "scans" / "report 1.pdf").write_bytes(PDF)
    os.symlink("../../secret.txt", src / "attachments" / "out.pdf")
    resources = [
        {"resourceType": "Patient", "id": "p1", "photo": [{"contentType": "image/png", "data": _b64(PHOTO)}]},
        {"resourceType": "Binary", "id": "b1", "contentType": "application/pdf", "data": _b64(BINARY)},
        {"resourceType": "Binary", "id": "b2", "contentType": "text/plain", "data": _b64(b"never referenced")},
        _doc("d1", "Binary/b1", "attachments/scans/report%201.pdf"),
        _doc("d2", "../secret.txt", "attachments/out.pdf", "Binary/missing"),
        {**_doc("d3", "Binary/b1"), "content": [{"attachment": {"contentType": "text/plain", "data": _b64(b"hi")}}]},
    ]
    (src / "data.ndjson").write_text("".join(json.dumps(r) + "\n" for r in resources))
    # Many chunks, each with absolute URLs: still one note in the job's error[].
    elsewhere = [_doc(f"x{n}", f"https://other.example/doc/{n}.pdf") for n in range(60)]
    (src / "elsewhere.ndjson").write_text("".join(json.dumps(r) + "\n" for r in elsewhere))
    return src


class Setup:
    def __init__(self, server, key):
        self.server, self.key = server, key

    def client(self, scope: str = "system/*.read") -> httpx.Client:
        with httpx.Client(timeout=30) as plain:
            token = get_token(plain, self.server.base_url + "/auth/token", self.key, "a1", scope)
        return httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def setup(tmp_path_factory, source):
    root = tmp_path_factory.mktemp("attach-server")
    key = ClientKey("ES384")
    register(root / "state", "a1", "--jwks", write_jwks(root, key), "--tenant", "acme")
    with serve(source, root / "out", root / "state", "--chunk-bytes", "2048") as server:
        yield Setup(server, key)


@pytest.fixture(scope="module")
def job(setup):
    with setup.client() as client:
        response = client.get(setup.server.fhir + "/$export?_type=Patient,DocumentReference", headers=FHIR_HEADERS)
        assert response.status_code == 202, response.text
        status_url = response.headers["Content-Location"]
        answer = poll(client, status_url)
        assert answer.status_code == 200, answer.text
        manifest = answer.json()
        resources = {}
        for entry in manifest["output"]:
            for line in client.get(entry["url"]).text.splitlines():
                resource = json.loads(line)
                resources[resource["id"]] = resource
        errors = [json.loads(line) for entry in manifest["error"] for line in client.get(entry["url"]).text.splitlines()]
    return {"status_url": status_url, "manifest": manifest, "resources": resources, "errors": errors}


def _attachments(resource: dict) -> list[dict]:
    return [content["attachment"] for content in resource["content"]]


def _diagnostics(job) -> list[str]:
    return [issue["diagnostics"] for outcome in job["errors"] for issue in outcome["issue"]]


def test_binary_and_relative_path_attachments_download_with_the_jobs_token(setup, job):
    binary, pdf = _attachments(job["resources"]["d1"])
    files = setup.server.base_url + "/files/acme/"
    for attachment, content in ((binary, BINARY), (pdf, PDF)):
        assert attachment["url"].startswith(files) and "/attachments/DocumentReference/" in attachment["url"]
        assert attachment["size"] == len(content) and attachment["hash"] == _hash(content)
        with setup.client() as client:
            response = client.get(attachment["url"])
            assert response.status_code == 200 and response.content == content
            head = client.head(attachment["url"])
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["content-length"]) == len(content)
        unauthenticated = httpx.get(attachment["url"], timeout=30)
        assert unauthenticated.status_code == 401
        with setup.client("system/Patient.read") as patients_only:
            assert patients_only.get(attachment["url"]).status_code == 403
    # The same Binary for another resource: the same URL; inline data is kept as it is.
    assert job["resources"]["d3"]["content"][0]["attachment"]["data"] == _b64(b"hi")
    assert job["resources"]["p1"]["photo"][0]["data"] == _b64(PHOTO)


def test_only_what_is_named_is_served_and_nothing_else(setup, job):
    """An unreferenced Binary, a file of the source or of the job by another name: never served."""
    url = _attachments(job["resources"]["d1"])[0]["url"]
    base = url.rsplit("/attachments/", 1)[0]
    unreferenced = hashlib.sha1(b"never referenced").hexdigest()
    with setup.client() as client:
        for path in (f"attachments/DocumentReference/{unreferenced}", "attachments/Binary/" + unreferenced,
                     "attachments/DocumentReference/..%2Fmanifest.json", "attachments/../manifest.json",
                     "attachments/DocumentReference/" + "0" * 40):
            assert client.get(f"{base}/{path}").status_code == 404, path


def test_an_escaping_path_or_a_link_out_is_not_served_and_is_reported(setup, job):
    attachments = _attachments(job["resources"]["d2"])
    assert [a["url"] for a in attachments] == ["../secret.txt", "attachments/out.pdf", "Binary/missing"]
    assert not any("size" in a or "hash" in a for a in attachments)
    reported = [d for d in _diagnostics(job) if "(DocumentReference/d2)" in d]
    assert len(reported) == 3 and all("not served, left as it is" in d for d in reported)
    assert any("could leave the source" in d for d in reported)
    assert any("outside the source folder" in d for d in reported)
    assert any("a Binary the source does not hold" in d for d in reported)
    served = Path(setup.server.state_dir).parent / "out"
    assert not any(p.read_bytes() == SECRET for p in served.rglob("*") if p.is_file())


def test_absolute_urls_are_left_as_they_are_with_one_note_per_job(job):
    for n in range(60):
        assert _attachments(job["resources"][f"x{n}"])[0]["url"] == f"https://other.example/doc/{n}.pdf"
    notes = [outcome["issue"][0] for outcome in job["errors"]
             if outcome["issue"][0]["diagnostics"].startswith("Attachment.url: attachments whose url is an absolute")]
    assert len(notes) == 1 and notes[0]["severity"] == "information"
    assert not any("other.example" in d for d in _diagnostics(job))


def test_a_pdf_in_the_attachments_folder_is_not_a_bad_record(job):
    assert not any("report" in d or "not valid JSON" in d or "out.pdf:" in d for d in _diagnostics(job))
    assert len(job["errors"]) == 4  # d2's three warnings and the one note


def test_attachment_files_are_deleted_with_the_job(setup, source):
    with setup.client() as client:
        response = client.get(setup.server.fhir + "/$export?_type=DocumentReference", headers=FHIR_HEADERS)
        status_url = response.headers["Content-Location"]
        manifest = poll(client, status_url).json()
        line = next(line for entry in manifest["output"] for line in client.get(entry["url"]).text.splitlines()
                    if '"d1"' in line)
        url = _attachments(json.loads(line))[1]["url"]
        assert client.get(url).content == PDF
        job_id = status_url.rsplit("/", 1)[1]
        folder = next((Path(setup.server.state_dir).parent / "out").rglob(job_id))
        assert any((folder / "attachments").rglob("*"))
        assert client.delete(status_url).status_code == 202
        assert client.get(url).status_code == 404
    assert not folder.exists()
    assert (source / "attachments" / "scans" / "report 1.pdf").read_bytes() == PDF  # a hard link, if any, went


def test_max_inline_attachment_bytes_moves_large_data_to_a_served_file(run_cli, source, tmp_path):
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                     "--kickoff", "http://localhost/fhir/$export?_type=Patient,DocumentReference",
                     "--max-inline-attachment-bytes",
                     "1000")
    assert result.code == 0, result.err
    manifest = result.manifest()
    lines = [json.loads(line) for entry in manifest["output"]
             for line in Path(entry["url"].removeprefix("file://")).read_text().splitlines()]
    photo = next(r for r in lines if r["id"] == "p1")["photo"][0]
    assert "data" not in photo and photo["size"] == len(PHOTO) and photo["hash"] == _hash(PHOTO)
    assert photo["contentType"] == "image/png"
    assert Path(photo["url"].removeprefix("file://")).read_bytes() == PHOTO
    small = next(r for r in lines if r["id"] == "d3")["content"][0]["attachment"]
    assert small == {"contentType": "text/plain", "data": _b64(b"hi")}  # under the limit: kept
