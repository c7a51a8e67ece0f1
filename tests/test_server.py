"""`bulk-export serve` over real HTTP: a uvicorn server in a subprocess, httpx as the client.

Covers the IG's kick-off, status, delete and download at all three levels, the
refusals (each a 4xx with an OperationOutcome), 429 at the cap, a server
killed mid-export and restarted, Range and gzip downloads, and bad input that
must not take the server down.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import gzip
import json
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from tests.helpers import _levels
from tests.server_process import FHIR_HEADERS, poll, serve

FUTURE = "2999-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("server")
    with serve(sample_dir, root / "out", root / "state") as running:
        yield running


def _outcome(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["severity"] == "error"
    return body["issue"][0]["diagnostics"]


def _kick_off(client: httpx.Client, method: str, url: str, body: dict | None = None) -> str:
    if method == "GET":
        response = client.get(url, headers=FHIR_HEADERS)
    else:
        response = client.post(url, headers={**FHIR_HEADERS, "Content-Type": "application/fhir+json"}, json=body)
    assert response.status_code == 202, response.text
    return response.headers["Content-Location"]


@pytest.mark.parametrize("level", [0, 1, 2], ids=["system", "patient", "group"])
def test_kick_off_poll_download_delete_at_every_level(server, sample_dir, level):
    method, path, body = _levels(sample_dir)[level]
    with httpx.Client(timeout=30) as client:
        status_url = _kick_off(client, method, server.fhir + path, body)
        assert status_url.startswith(server.fhir + "/")
        first = client.get(status_url)
        assert first.status_code == 202
        assert 0 < len(first.headers["X-Progress"]) < 100 and int(first.headers["Retry-After"]) >= 1
        done = poll(client, status_url)
        assert done.status_code == 200 and done.headers["content-type"].startswith("application/json")
        assert email.utils.parsedate_to_datetime(done.headers["Expires"])
        manifest = done.json()
        assert manifest["request"] == server.fhir + path
        assert manifest["requiresAccessToken"] is False and manifest["output"]
        for entry in manifest["output"] + manifest["error"]:
            assert entry["url"].startswith(server.base_url + "/files/")
            got = client.get(entry["url"], headers={"Accept": "application/fhir+ndjson"})
            assert got.status_code == 200 and got.headers["content-type"].startswith("application/fhir+ndjson")
            assert len(got.content.splitlines()) == entry["count"]
        assert client.delete(status_url).status_code == 202
        _outcome(client.get(status_url), 404)
        for entry in manifest["output"]:
            _outcome(client.get(entry["url"]), 404)


def _refusals(sample_dir: Path) -> list:
    url = "/$export"
    post = {**FHIR_HEADERS, "Content-Type": "application/fhir+json"}
    patient_param = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/x"}}]}
    return [
        ("GET", url, {"Prefer": "respond-async"}, None, 400, "Accept"),
        ("GET", url, {"Accept": "application/fhir+json"}, None, 400, "Prefer"),
        ("GET", url + "?_type=Nope", FHIR_HEADERS, None, 400, "_type"),
        ("GET", url + "?_since=yesterday", FHIR_HEADERS, None, 400, "_since"),
        ("GET", url + f"?_since={FUTURE}", FHIR_HEADERS, None, 400, "_since"),
        ("GET", url + "?_outputFormat=text/csv", FHIR_HEADERS, None, 400, "_outputFormat"),
        ("GET", url + "?_nonsense=1", FHIR_HEADERS, None, 400, "_nonsense"),
        ("GET", url + "?includeAssociatedData=_custom", FHIR_HEADERS, None, 400, "includeAssociatedData"),
        ("POST", url, post, patient_param, 400, "patient"),
        ("POST", url, {**FHIR_HEADERS, "Content-Type": "text/plain"}, "x", 415, "Content-Type"),
        ("POST", url, post, b"{not json", 400, "JSON"),
        ("POST", url, post, b"{" + b" " * (2 << 20) + b"}", 413, "bytes"),
        ("GET", "/Group/nope-404/$export", FHIR_HEADERS, None, 400, "Group"),
        ("GET", "/Group/a%2Fb/$export", FHIR_HEADERS, None, 404, ""),
        ("GET", "/../$export", FHIR_HEADERS, None, 404, ""),
        ("GET", "/bulk-status/no-such-job", {}, None, 404, "no-such-job"),
        ("DELETE", "/bulk-status/no-such-job", {}, None, 404, "no-such-job"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_every_refusal_is_a_4xx_operation_outcome_naming_the_cause(server, sample_dir, case):
    method, path, headers, body, status, named = _refusals(sample_dir)[case]
    content = body if isinstance(body, (bytes, str)) else (json.dumps(body) if body is not None else None)
    with httpx.Client(timeout=30) as client:
        response = client.request(method, server.fhir + path, headers=headers, content=content)
        assert named in _outcome(response, status)
        assert client.get(server.fhir + "/metadata").status_code == 200  # still serving


def test_errors_use_the_json_media_type_the_client_asks_for(server):
    response = httpx.get(server.fhir + "/bulk-status/nope", headers={"Accept": "application/json"})
    assert response.status_code == 404 and response.headers["content-type"].startswith("application/json")
    assert response.json()["resourceType"] == "OperationOutcome"


def test_lenient_handling_ignores_what_strict_refuses(server):
    with httpx.Client(timeout=30) as client:
        status_url = client.get(server.fhir + "/$export?_type=Organization&_nonsense=1",
                                headers={**FHIR_HEADERS, "Prefer": "respond-async, handling=lenient"})
        assert status_url.status_code == 202
        manifest = poll(client, status_url.headers["Content-Location"]).json()
        assert "_nonsense" in manifest["message"]


def test_metadata_is_a_bulk_data_capability_statement(server):
    statement = httpx.get(server.fhir + "/metadata").json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["instantiates"] == ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]
    rest = statement["rest"][0]
    base = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
    assert rest["operation"] == [{"name": "export", "definition": base + "export"}]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert by_type["Patient"]["operation"][0]["definition"] == base + "patient-export"
    assert by_type["Group"]["operation"][0]["definition"] == base + "group-export"
    assert "Observation" in by_type and len(by_type) > 140


def test_range_and_gzip_downloads(server):
    with httpx.Client(timeout=30) as client:
        status_url = _kick_off(client, "GET", server.fhir + "/$export?_type=Observation")
        entry = poll(client, status_url).json()["output"][0]
        whole = client.get(entry["url"], headers={"Accept-Encoding": "identity"})
        assert whole.status_code == 200 and "content-encoding" not in whole.headers
        data = whole.content
        part = client.get(entry["url"], headers={"Range": "bytes=100-", "Accept-Encoding": "gzip"})
        assert part.status_code == 206 and part.content == data[100:]
        assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
        zipped = client.stream("GET", entry["url"], headers={"Accept-Encoding": "gzip"})
        with zipped as response:
            assert response.headers["content-encoding"] == "gzip"
            raw = b"".join(response.iter_raw())
        assert gzip.decompress(raw) == data and len(raw) < len(data)
        assert client.get(entry["url"], headers={"Range": f"bytes={len(data) + 10}-"}).status_code == 416


def _local_port(response: httpx.Response) -> int:
    """The client's port of the connection that carried `response`."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_a_connection_left_idle_longer_than_a_clients_own_limit_stays_open(server):
    """httpx drops an idle connection after 5 s; a server that closed at 5 s too would race it, and a
    client reusing the connection just then would get "Connection reset by peer"."""
    with httpx.Client(timeout=30, limits=httpx.Limits(keepalive_expiry=60)) as client:
        first = client.get(server.fhir + "/metadata")
        port = _local_port(first)
        time.sleep(6)
        again = client.get(server.fhir + "/metadata")
        assert first.status_code == again.status_code == 200
        assert _local_port(again) == port


def test_keep_alive_sets_how_long_an_idle_connection_stays_open(sample_dir, tmp_path):
    with serve(sample_dir, tmp_path / "out", tmp_path / "state", "--keep-alive", "1s") as short, \
            httpx.Client(timeout=30, limits=httpx.Limits(keepalive_expiry=60)) as client:
        port = _local_port(client.get(short.fhir + "/metadata"))
        time.sleep(2.5)
        assert _local_port(client.get(short.fhir + "/metadata")) != port


def test_thousands_of_polls_do_not_take_the_server_down(server):
    with httpx.Client(timeout=30) as client:
        status_url = _kick_off(client, "GET", server.fhir + "/$export?_type=Patient")
        limits = httpx.Limits(max_connections=50)
        with httpx.Client(timeout=60, limits=limits) as pollers:
            with concurrent.futures.ThreadPoolExecutor(50) as pool:
                codes = list(pool.map(lambda _: pollers.get(status_url).status_code, range(2000)))
        assert set(codes) <= {200, 202}
        assert poll(client, status_url).status_code == 200


def test_429_at_the_tenants_cap(big_source, tmp_path):
    with serve(big_source, tmp_path / "out", tmp_path / "state", "--max-active-per-tenant", "1",
               "--chunk-bytes", "256") as server, httpx.Client(timeout=30) as client:
        first = _kick_off(client, "GET", server.fhir + "/$export")
        second = client.get(server.fhir + "/$export", headers=FHIR_HEADERS)
        assert "active" in _outcome(second, 429)
        assert int(second.headers["Retry-After"]) > 0
        assert client.delete(first).status_code == 202
        _outcome(client.get(first), 404)


def test_a_server_killed_mid_export_leaves_no_job_running_for_ever(big_source, tmp_path):
    args = ("--chunk-bytes", "256", "--lease", "2s", "--maintenance-interval", "1s")
    out, state = tmp_path / "out", tmp_path / "state"
    with serve(big_source, out, state, *args) as server, httpx.Client(timeout=30) as client:
        status_url = _kick_off(client, "GET", server.fhir + "/$export")
        assert client.get(status_url).status_code == 202
        path = status_url.removeprefix(server.base_url)
        server.kill()
    with serve(big_source, out, state, *args) as again, httpx.Client(timeout=30) as client:
        final = poll(client, again.base_url + path, timeout_s=60)
        assert "failed" in _outcome(final, 500)
        assert client.delete(again.base_url + path).status_code == 202


def test_the_kick_off_url_names_the_public_base_behind_a_proxy(sample_dir, tmp_path):
    public = "https://bulk.example.org/api"
    with serve(sample_dir, tmp_path / "out", tmp_path / "state", "--base-url", public) as server, \
            httpx.Client(timeout=30) as client:
        response = client.get(server.fhir + "/$export?_type=Organization", headers=FHIR_HEADERS)
        status_url = response.headers["Content-Location"]
        assert status_url.startswith(public + "/fhir/")
        local = server.base_url + status_url.removeprefix(public)
        manifest = poll(client, local).json()
        assert manifest["request"] == public + "/fhir/$export?_type=Organization"
        assert all(e["url"].startswith(public + "/files/") for e in manifest["output"])


def test_a_quoted_type_filter_reaches_the_kickoff_parser_as_received(server):
    query = "_type=Observation&_typeFilter=" + quote("Observation?status=final", safe="")
    with httpx.Client(timeout=30) as client:
        manifest = poll(client, _kick_off(client, "GET", server.fhir + "/$export?" + query)).json()
        assert manifest["request"] == server.fhir + "/$export?" + query


def test_include_associated_data_is_taken_over_http(server):
    """The IG's values are accepted (the bundled sample has no Provenance, so none is added)."""
    url = server.fhir + "/$export?_type=Organization&includeAssociatedData=LatestProvenanceResources"
    with httpx.Client(timeout=30) as client:
        manifest = poll(client, _kick_off(client, "GET", url)).json()
        assert {e["type"] for e in manifest["output"]} == {"Organization"} and "message" not in manifest



def test_a_post_kick_off_with_a_url_query_is_refused_as_the_cli_refuses_it(server):
    """The IG takes a POST kick-off's parameters from its body: a query beside it is refused (400, naming
    the query), not ignored, with the text the CLI's parser gives."""
    from launcher.kickoff.parser import KickoffRefused, parse_post

    query = "_typeFilter=" + quote("Observation?status=final", safe="")
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Observation"}]}
    with httpx.Client(timeout=30) as client:
        response = client.post(server.fhir + "/$export?" + query, json=body,
                               headers={**FHIR_HEADERS, "Content-Type": "application/fhir+json"})
        diagnostics = _outcome(response, 400)
    assert "_typeFilter" in diagnostics and "status=final" not in diagnostics
    with pytest.raises(KickoffRefused) as cli:
        parse_post(body, server.fhir + "/$export?" + query)
    assert diagnostics == str(cli.value)


@pytest.mark.parametrize("running", [True, False], ids=["running", "complete"])
def test_concurrent_deletes_of_one_job_answer_202_or_404_never_500(big_source, tmp_path, running):
    """DELETE answers 202 in every state; one that finds the job already gone answers 404 as any later
    request does. Nothing fails with a traceback in the log, and the job and its files are gone."""
    slow = ("--chunk-bytes", "256") if running else ()
    with serve(big_source, tmp_path / "out", tmp_path / "state", *slow) as server, httpx.Client(timeout=60) as client:
        status_url = _kick_off(client, "GET", server.fhir + "/$export")
        if not running:
            assert poll(client, status_url).status_code == 200
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: client.delete(status_url).status_code, range(16)))
        assert 202 in codes and set(codes) <= {202, 404}, codes
        _outcome(client.get(status_url), 404)
        job_id = status_url.rsplit("/", 1)[1]
        assert not list((tmp_path / "out").rglob(f"*{job_id}*")), (list((tmp_path / "out").rglob("*")), server.log.read_text())
    log = server.log.read_text()
    assert "Traceback" not in log and "unexpected" not in log, log
