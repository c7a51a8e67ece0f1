"""The operator page in a real headless Chromium (Debian's `chromium`; `.ci/run` installs it), during a
running export and after it: the rendered DOM holds the job's row, state, per-type counts and links,
and a screenshot of each is saved under the test's temp folder. Skipped, saying why, without a browser.

The server runs with `--auth none` on loopback, where the page needs no admin token (Chromium's
`--dump-dom` cannot send a header); `tests/test_server_observability.py` checks the token.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from launcher.tools.sample_data import generate
from tests.server_process import FHIR_HEADERS, poll, serve

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        pytest.skip(f"no headless browser ({', '.join(BROWSERS)}) on PATH: `apt-get install chromium`")
    return found


def _render(browser: str, url: str, folder: Path, name: str) -> str:
    """The DOM Chromium renders for `url`; also saves its screenshot as `folder/name.png`."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={folder / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-2000:]
    shot = folder / f"{name}.png"
    subprocess.run([*common, "--window-size=1400,900", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return dom.stdout


def _counts(dom: str) -> dict[str, int]:
    """The per-type counts a rendered list or table shows."""
    found = re.findall(r'data-type="([A-Za-z]+)">(?:<td>)?[A-Za-z]+(?:</td>)? ?<(?:span|td) class="count">([\d,]+)<',
                       dom)
    return {name: int(count.replace(",", "")) for name, count in found}


def test_the_operator_page_in_chromium_during_and_after_an_export(browser, tmp_path):
    source = tmp_path / "source"
    # Read in 256-byte chunks, 2,400 patients take about 45 s on a quiet machine (800 took 15 s, which the two
    # renders below outlasted under load): the job is still running when they are made.
    generate(source, patients=2400, seed=2)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with serve(source, tmp_path / "out", tmp_path / "state", "--chunk-bytes", "256") as server, \
            httpx.Client(timeout=30) as client:
        status_url = client.get(server.fhir + "/$export", headers=FHIR_HEADERS).headers["Content-Location"]
        job = status_url.rsplit("/", 1)[1]
        deadline = time.monotonic() + 120
        while "; " not in client.get(status_url).headers.get("X-Progress", ""):  # a type has a count
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.2)

        running = _render(browser, server.base_url + "/", shots, "jobs-running")
        row = re.search(rf'<tr id="job-{job}" class="job state-([a-z-]+)">(.*?)</tr>', running)
        assert row, running
        assert row.group(1) == "in-progress" and '<td class="state">in-progress</td>' in row.group(2)
        assert f'href="/jobs/{job}"' in row.group(2) and "% read" in row.group(2)
        assert _counts(row.group(2)) and '<meta http-equiv="refresh"' in running
        detail = _render(browser, f"{server.base_url}/jobs/{job}", shots, "job-running")
        assert '<span class="state">in-progress</span>' in detail and _counts(detail)
        assert "The manifest is ready once the job is complete." in detail

        manifest = poll(client, status_url, timeout_s=600).json()
        written: dict[str, int] = {}
        for entry in manifest["output"]:
            written[entry["type"]] = written.get(entry["type"], 0) + entry["count"]

        done = _render(browser, server.base_url + "/", shots, "jobs-complete")
        row = re.search(rf'<tr id="job-{job}" class="job state-complete">(.*?)</tr>', done)
        assert row and '<td class="state">complete</td>' in row.group(1) and "100% read" in row.group(1)
        assert _counts(row.group(1)) == written and '<meta http-equiv="refresh"' not in done
        assert f'<td class="resources">{sum(written.values()):,}</td>' in row.group(1)
        assert re.search(r'<td class="expires">\d{4}-\d\d-\d\dT', row.group(1))
        detail = _render(browser, f"{server.base_url}/jobs/{job}", shots, "job-complete")
        assert _counts(detail) == written
        assert f'<a id="manifest" href="/jobs/{job}/manifest.json">' in detail
        for entry in manifest["error"]:
            assert f'class="error-file" href="{entry["url"]}"' in detail
        events = re.findall(r'<tr class="audit-event">.*?<td class="event">([a-z-]+)</td>', detail)
        assert events == ["kickoff", "complete"]
        linked = client.get(f"{server.base_url}/jobs/{job}/manifest.json").json()
        assert linked["output"] == manifest["output"]
    assert sorted(p.name for p in shots.glob("*.png")) == ["job-complete.png", "job-running.png",
                                                            "jobs-complete.png", "jobs-running.png"]
