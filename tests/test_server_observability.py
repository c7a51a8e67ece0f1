"""What `bulk-export serve` tells its operator, over real HTTP (uvicorn in a subprocess, httpx):
an access line per request and a line per job event, never a token nor a query value; `--log-format
json`; `GET /metrics` in the Prometheus text format; and who may read the operator page and /metrics.
"""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server_process import FHIR_HEADERS, Server, poll, serve
from tests.smart_client import TENANT, ClientKey, assertion, get_token, register, token_form, write_jwks

SECRET_VALUE = "Smith-4711"  # a query value that could be PHI
SECRET_TOKEN = "tok-" + "s3cr3t" * 4
ADMIN = "admin-" + "0123456789abcdef"
TYPE_FILTER = f"Patient%3Ffamily%3D{SECRET_VALUE}"


@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("observed")
    with serve(sample_dir, root / "out", root / "state") as running:
        yield running


def _lines(server: Server, needle: str, timeout_s: float = 60) -> list[str]:
    """The log's lines containing `needle`, waiting (at most `timeout_s`) until there is one."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [line for line in server.log.read_text().splitlines() if needle in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _kick_off(client: httpx.Client, server: Server, query: str = "_type=Patient") -> str:
    response = client.get(f"{server.fhir}/$export?{query}", headers=FHIR_HEADERS)
    assert response.status_code == 202, response.text
    return response.headers["Content-Location"]


def _job_id(status_url: str) -> str:
    return status_url.rsplit("/", 1)[1]


def test_access_and_job_lines_name_neither_a_token_nor_a_query_value(server):
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {SECRET_TOKEN}"}) as client:
        status_url = _kick_off(client, server, f"_type=Patient,Observation&_typeFilter={TYPE_FILTER}")
        manifest = poll(client, status_url).json()
        url = manifest["output"][0]["url"]
        assert client.get(url, params={"note": SECRET_VALUE}).status_code == 200
        assert client.delete(status_url).status_code == 202
    job = _job_id(status_url)
    kickoff = _lines(server, "GET /fhir/$export 202")
    assert kickoff and "from 127.0.0.1" in kickoff[-1] and kickoff[-1].endswith("query: _type,_typeFilter")
    download = _lines(server, f"GET /files/default/{job}/")
    assert download and " 200 " in download[-1] and download[-1].endswith("query: note")
    assert _lines(server, f"DELETE /fhir/bulk-status/{job} 202")
    assert _lines(server, f"job {job} started: tenant=default level=system types=Patient,Observation")
    complete = _lines(server, f"job {job} complete:")[0]
    counts = {e["type"]: e["count"] for e in manifest["output"]}  # the filter leaves no Patient
    assert all(f"{name} {n:,}" in complete for name, n in counts.items()) and " bytes, after " in complete
    assert _lines(server, f"job {job} deleted:")
    log = server.log.read_text()
    for secret in (SECRET_VALUE, SECRET_TOKEN, "Bearer", "family"):
        assert secret not in log


def test_json_lines_and_a_failed_job(tmp_path, sample_dir):
    """`--log-format json`: every log line is one JSON object; a job that fails (a truncated gzip source
    file) logs its failure with the reason."""
    source = tmp_path / "source"
    shutil.copytree(sample_dir, source)
    whole = gzip.compress(b'{"resourceType":"Patient","id":"p"}\n' * 200)
    (source / "Trunc.ndjson.gz").write_bytes(whole[: len(whole) // 2])
    with serve(source, tmp_path / "out", tmp_path / "state", "--log-format", "json") as running, \
            httpx.Client(timeout=30) as client:
        status_url = _kick_off(client, running)
        assert poll(client, status_url).status_code == 500
        assert _lines(running, '"event":"error"')
    printed = ("serving FHIR", "operator page at")  # serve's own lines on stdout, before logging starts
    records = [json.loads(line) for line in running.log.read_text().splitlines() if not line.startswith(printed)]
    access = [r for r in records if r["logger"] == "launcher.server.access" and r["path"] == "/fhir/$export"]
    assert access[0]["status"] == 202 and access[0]["query_names"] == ["_type"] and access[0]["method"] == "GET"
    jobs = {r["event"]: r for r in records if r["logger"] == "launcher.server.jobs"}
    assert set(jobs) == {"kickoff", "error"} and jobs["error"]["level"] == "WARNING"
    assert any(r["level"] == "WARNING" and "--auth none" in r["message"] for r in records)
    assert jobs["error"]["job_id"] == _job_id(status_url) and "cannot read source file" in jobs["error"]["reason"]
    assert jobs["error"]["export_level"] == "system" and jobs["error"]["duration_s"] >= 0


def test_a_cancel_and_an_expiry_each_log_a_line(tmp_path, big_source):
    args = ("--cleanup-ttl", "1s", "--maintenance-interval", "1s", "--chunk-bytes", "256")
    with serve(big_source, tmp_path / "out", tmp_path / "state", *args) as running, \
            httpx.Client(timeout=60) as client:
        cancelled = _kick_off(client, running, "")  # every type of 2,500 patients: still running when deleted
        assert client.delete(cancelled).status_code == 202
        expiring = _job_id(_kick_off(client, running, "_type=Organization"))
        assert _lines(running, f"job {expiring} expired and removed:", timeout_s=120)
    assert _lines(running, f"job {_job_id(cancelled)} cancelled:")
    assert _lines(running, f"job {expiring} complete:")


def _scrape(url: str, **kwargs) -> dict[tuple[str, tuple], float]:
    response = httpx.get(url, timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def test_metrics_move_after_an_export_a_refusal_and_a_download(server):
    before = _scrape(server.base_url + "/metrics")
    with httpx.Client(timeout=30) as client:
        manifest = poll(client, _kick_off(client, server, "_type=Patient")).json()
        assert client.get(server.fhir + "/$export", headers={"Prefer": "respond-async"}).status_code == 400
        assert client.get(manifest["output"][0]["url"]).status_code == 200
    after = _scrape(server.base_url + "/metrics")

    def moved(name: str, **labels) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    patients = sum(e["count"] for e in manifest["output"])
    assert moved("bulk_export_job_events_total", event="kickoff") == 1
    assert moved("bulk_export_job_events_total", event="complete") == 1
    assert moved("bulk_export_jobs", tenant="default", state="complete") == 1
    assert moved("bulk_export_duration_seconds_count") == 1
    assert moved("bulk_export_resources_written_total", type="Patient") == patients
    assert moved("bulk_export_bytes_written_total") > 0
    assert moved("bulk_export_downloads_total") == 1
    assert moved("bulk_export_refusals_total", status="400", reason="invalid") == 1


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: it only picks the outgoing address
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_without_an_admin_token_only_loopback_clients_see_the_page(tmp_path, sample_dir):
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach the server from")
    with serve(sample_dir, tmp_path / "out", tmp_path / "state", "--host", "0.0.0.0") as running:
        assert httpx.get(running.base_url + "/", timeout=30).status_code == 200  # loopback
        remote = running.base_url.replace("127.0.0.1", address)
        assert httpx.get(remote + "/fhir/metadata", timeout=30).status_code == 200
        for path in ("/", "/metrics", "/jobs/x"):
            response = httpx.get(remote + path, timeout=30)
            assert response.status_code == 403 and "--admin-token" in response.text, response.text


def test_with_auth_on_the_page_and_metrics_need_the_admin_token(tmp_path, sample_dir):
    state = tmp_path / "state"
    key = ClientKey("ES384")
    register(state, "acme-client", "--jwks", write_jwks(tmp_path, key), "--tenant", TENANT)
    with serve(sample_dir, tmp_path / "out", state) as smart:  # a registered client: --auth smart
        assert httpx.get(smart.base_url + "/", timeout=30).status_code == 403  # loopback, but auth is on
    with serve(sample_dir, tmp_path / "out", state, "--admin-token", ADMIN) as running, \
            httpx.Client(timeout=30) as client:
        for headers in ({}, {"Authorization": "Bearer wrong-" + ADMIN}, {"Authorization": "Basic " + ADMIN}):
            response = client.get(running.base_url + "/", headers=headers)
            assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        assert client.get(running.base_url + "/metrics").status_code == 401
        token_url = running.base_url + "/auth/token"
        token = get_token(client, token_url, key, "acme-client")
        assert client.post(token_url, data=token_form(assertion(key, "nobody", token_url))).status_code == 401
        status_url = _kick_off(httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}), running)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        page = client.get(running.base_url + "/", headers=admin)
        assert page.status_code == 200 and _job_id(status_url) in page.text and token not in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        metrics = _scrape(running.base_url + "/metrics", headers=admin)
        assert metrics[("bulk_export_token_grants_total", ())] == 1
        assert metrics[("bulk_export_token_refusals_total", (("reason", "invalid_client"),))] == 1
        assert metrics[("bulk_export_refusals_total", (("reason", "login"), ("status", "401")))] >= 4
        assert client.post(running.base_url + "/login", data={"token": "wrong"}).status_code == 401
        login = client.post(running.base_url + "/login", data={"token": ADMIN})
        assert login.status_code == 303 and "httponly" in login.headers["set-cookie"].lower()
        assert client.get(running.base_url + f"/jobs/{_job_id(status_url)}").status_code == 200  # the cookie
    log = running.log.read_text()
    assert ADMIN not in log and token not in log and "/login 303" in log
    assert "GET /fhir/$export 202" in log and _lines(running, "GET /fhir/$export 202")[0].endswith(
        "client=acme-client query: _type")


def test_a_short_admin_token_is_refused(tmp_path, sample_dir, run_cli):
    result = run_cli("serve", "--source", str(sample_dir), "--output", str(tmp_path / "out"), "--state-dir",
                 str(tmp_path / "state"), "--admin-token", "short")
    assert result.code == 2 and "--admin-token" in result.err
