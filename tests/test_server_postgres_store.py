"""`bulk-export serve` on a PostgreSQL job store, over real HTTP: a network store's reads run in worker
threads (`Server.read`; a SQLite store's run on the event loop), and a client's whole walk works as it
does on SQLite."""

from __future__ import annotations

import httpx

from launcher.stores import open_store
from pipelines.models import ExportStatus
from tests.server_process import FHIR_HEADERS, poll, serve


def test_kick_off_poll_download_delete_on_a_postgresql_store(postgres_dsn, sample_dir, tmp_path):
    lines = {path.stem: len(path.read_bytes().splitlines()) for path in sample_dir.glob("*.ndjson")}
    with serve(sample_dir, tmp_path / "out", tmp_path / "state", "--job-store", postgres_dsn) as server, \
            httpx.Client(timeout=30) as client:
        kicked = client.get(f"{server.fhir}/$export?_type=Patient,Observation", headers=FHIR_HEADERS)
        assert kicked.status_code == 202, kicked.text
        status_url = kicked.headers["Content-Location"]
        job_id = status_url.rsplit("/", 1)[1]
        manifest = poll(client, status_url).json()
        counts = {entry["type"]: entry["count"] for entry in manifest["output"]}
        assert counts == {"Patient": lines["Patient"], "Observation": lines["Observation"]}
        downloaded = client.get(manifest["output"][0]["url"])
        assert downloaded.status_code == 200 and len(downloaded.content.splitlines()) == manifest["output"][0]["count"]
        assert open_store(postgres_dsn).get("default", job_id).status is ExportStatus.COMPLETE  # recorded there
        unknown = client.get(f"{server.fhir}/bulk-status/no-such-job")
        assert unknown.status_code == 404 and unknown.json()["resourceType"] == "OperationOutcome"
        assert client.delete(status_url).status_code == 202
        assert client.get(status_url).status_code == 404
    assert open_store(postgres_dsn).list("default", include_terminal=True) == []
