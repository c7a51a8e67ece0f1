"""allowPartialManifests over real HTTP: files listed while the export runs, pages frozen once served."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from launcher.tools.sample_data import generate
from tests.server_process import FHIR_HEADERS, serve

BASE = "https://ehr.example.org/fhir"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial")
    generate(root / "data", patients=1500, seed=5)
    # Small chunks and parts, and pages of 3 files: a run of several seconds that publishes as it goes.
    with serve(root / "data", root / "out", root / "state", "--auth", "none", "--chunk-bytes", "8192",
               "--max-lines-per-part", "300", "--manifest-page-files", "3") as running:
        yield running


def test_files_appear_while_the_export_runs_and_the_pages_list_each_once(server):
    with httpx.Client(timeout=30) as client:
        kickoff = client.get(server.fhir + "/$export?allowPartialManifests=true", headers=FHIR_HEADERS)
        assert kickoff.status_code == 202, kickoff.text
        status = kickoff.headers["Content-Location"]
        served: dict[str, dict] = {}  # page URL -> the manifest it answered with, the first time
        listed_while_running, url, deadline = [], status, time.monotonic() + 240
        while url is not None and time.monotonic() < deadline:
            answer = client.get(url)
            if answer.status_code == 202:
                time.sleep(0.1)
                continue
            assert answer.status_code == 200, answer.text
            page = answer.json()
            served[url] = page
            running = "X-Progress" in answer.headers  # served before the export finished
            for entry in page["output"] + page.get("error", []) + page.get("deleted", []):
                if running:
                    listed_while_running.append(entry["url"])
                download = client.get(entry["url"])  # every listed file downloads, at once
                assert download.status_code == 200, (entry, download.text)
                assert len(download.content.splitlines()) == entry["count"]
            url = page["link"][0]["url"] if page.get("link") else None
        assert url is None, "the pages never ended"
        # Frozen: every page answers as it did the first time.
        for page_url, first in served.items():
            assert client.get(page_url).json() == first
        pages = list(served.values())
        files = [e["url"] for p in pages for e in p["output"] + p.get("error", []) + p.get("deleted", [])]
        assert len(files) == len(set(files)), "a file is listed twice"
        assert all(len(p["output"]) + len(p.get("error", [])) + len(p.get("deleted", [])) <= 3 for p in pages)
        assert len(pages) > 3 and all(p["transactionTime"] == pages[0]["transactionTime"] for p in pages)
        assert len(listed_while_running) > 0, "no file was listed before the export finished"
        assert client.get(status.split("?")[0] + "?page=0").status_code == 400
        # Nothing listed was renamed or removed: the final files are exactly the pages' files.
        job_dir = server.state_dir.parent / "out"
        on_disk = {p.name for p in job_dir.rglob("*.ndjson")}
        assert {f.rsplit("/", 1)[1] for f in files} == on_disk


def test_a_client_that_does_not_ask_gets_one_manifest_and_no_pages(server):
    with httpx.Client(timeout=30) as client:
        kickoff = client.get(server.fhir + "/$export?_type=Patient", headers=FHIR_HEADERS)
        status = kickoff.headers["Content-Location"]
        deadline = time.monotonic() + 120
        while (answer := client.get(status)).status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.2)
        manifest = answer.json()
        assert answer.status_code == 200 and "link" not in manifest and len(manifest["output"]) > 3
        assert client.get(status + "?page=2").status_code == 400


def test_the_cli_shows_the_pages_of_a_finished_export(run_cli, sample_dir, tmp_path):
    done = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                   "--max-lines-per-part", "50", "--kickoff", f"{BASE}/$export?allowPartialManifests=true")
    assert done.code == 0, done.err
    job_id = done.manifest_path.parent.name
    final = done.manifest()
    pages, page = [], 1
    while True:
        shown = run_cli("manifest", job_id, "--page", str(page))
        assert shown.code == 0, shown.err
        pages.append(json.loads(shown.out))
        if "link" not in pages[-1]:
            break
        assert pages[-1]["link"][0]["url"].endswith(f"manifest.json?page={page + 1}")
        page += 1
    listed = [e["url"] for p in pages for e in p["output"]]
    assert sorted(listed) == sorted(e["url"] for e in final["output"])  # each file once, as published
    assert len(pages) == 1 and len(listed) > 3  # under the default 1,000 files a page
    again = run_cli("manifest", job_id, "--page", "2")
    assert again.code == 1 and "fewer pages" in again.err
    plain = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out2"),
                    "--kickoff", f"{BASE}/$export?_type=Patient")
    refused = run_cli("manifest", plain.manifest_path.parent.name, "--page", "1")
    assert refused.code == 1 and "allowPartialManifests" in refused.err
