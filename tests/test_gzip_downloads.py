"""gzip downloads compressed once: the first stores its bytes beside the part, later ones send them; the stored
copy is never listed nor served by its own name, Range and HEAD stay on the part's own bytes, and the copy goes
with its job (DELETE, expiry)."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import httpx

from tests.server_process import FHIR_HEADERS, poll, serve
from transforms.storage.layout import gzip_cache_path

GZIP = {"Accept-Encoding": "gzip"}


def _export(client: httpx.Client, server) -> tuple[str, dict]:
    response = client.get(server.fhir + "/$export?_type=Observation", headers=FHIR_HEADERS)
    assert response.status_code == 202, response.text
    status_url = response.headers["Content-Location"]
    return status_url, poll(client, status_url).json()


def _local(root: Path, url: str) -> Path:
    return root / "out" / url.split("/files/", 1)[1]


def _raw(client: httpx.Client, url: str, headers: dict) -> tuple[httpx.Response, bytes]:
    with client.stream("GET", url, headers=headers) as response:
        return response, b"".join(response.iter_raw())


def test_a_part_is_compressed_once_and_its_copy_goes_with_the_job(sample_dir, tmp_path):
    with serve(sample_dir, tmp_path / "out", tmp_path / "state") as server, httpx.Client(timeout=30) as client:
        status_url, manifest = _export(client, server)
        url = manifest["output"][0]["url"]
        part = _local(tmp_path, url)
        data = part.read_bytes()
        copy = Path(gzip_cache_path(str(part)))
        assert not copy.exists()

        first, first_raw = _raw(client, url, GZIP)
        assert first.status_code == 200 and first.headers["content-encoding"] == "gzip"
        assert first.headers["vary"] == "Accept-Encoding"
        assert gzip.decompress(first_raw) == data
        assert copy.read_bytes() == first_raw  # stored whole, dated as the part
        stored = copy.stat()
        assert stored.st_mtime_ns == part.stat().st_mtime_ns

        second, second_raw = _raw(client, url, GZIP)
        assert second.status_code == 200 and second.headers["content-encoding"] == "gzip"
        assert second_raw == first_raw and int(second.headers["content-length"]) == len(first_raw)
        assert second.headers["etag"]
        again = copy.stat()
        assert (again.st_ino, again.st_mtime_ns) == (stored.st_ino, stored.st_mtime_ns)  # sent, not made again

        ranged = client.get(url, headers={"Range": "bytes=10-", **GZIP})
        assert ranged.status_code == 206 and ranged.content == data[10:] and "content-encoding" not in ranged.headers
        head = client.head(url, headers=GZIP)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(data)
        assert "content-encoding" not in head.headers and head.content == b""
        plain = client.get(url, headers={"Accept-Encoding": "identity"})
        assert plain.content == data and "content-encoding" not in plain.headers

        # Never listed, never served by its own name, never for another job.
        done = client.get(status_url).json()
        assert all(not entry["url"].rsplit("/", 1)[1].startswith(".") for entry in done["output"] + done["error"])
        assert client.get(url.rsplit("/", 1)[0] + "/" + copy.name).status_code == 404
        other_url, other = _export(client, server)
        other_part = _local(tmp_path, other["output"][0]["url"])
        assert other_part.name == part.name and other_part != part
        assert not Path(gzip_cache_path(str(other_part))).exists()
        assert gzip.decompress(_raw(client, other["output"][0]["url"], GZIP)[1]) == other_part.read_bytes()

        assert client.delete(status_url).status_code == 202
        assert not copy.exists() and not part.parent.exists()
        assert client.get(url, headers=GZIP).status_code == 404
        assert client.delete(other_url).status_code == 202


def test_a_stale_copy_is_never_sent(sample_dir, tmp_path):
    """A copy dated otherwise than its part (another version of the file) is made again."""
    with serve(sample_dir, tmp_path / "out", tmp_path / "state") as server, httpx.Client(timeout=30) as client:
        _, manifest = _export(client, server)
        url = manifest["output"][0]["url"]
        part = _local(tmp_path, url)
        copy = Path(gzip_cache_path(str(part)))
        copy.write_bytes(gzip.compress(b'{"resourceType":"Observation","id":"stale"}\n'))
        assert gzip.decompress(_raw(client, url, GZIP)[1]) == part.read_bytes()
        assert gzip.decompress(copy.read_bytes()) == part.read_bytes()


def test_an_expired_job_takes_its_copy_with_it(sample_dir, tmp_path):
    args = ("--cleanup-ttl", "5s", "--maintenance-interval", "1s")
    with serve(sample_dir, tmp_path / "out", tmp_path / "state", *args) as server, \
            httpx.Client(timeout=30) as client:
        _, manifest = _export(client, server)
        url = manifest["output"][0]["url"]
        copy = Path(gzip_cache_path(str(_local(tmp_path, url))))
        response, raw = _raw(client, url, GZIP)
        if response.status_code == 404:  # expired already on a very slow machine: nothing was stored
            assert not copy.exists()
            return
        assert copy.exists()
        deadline = time.monotonic() + 60
        while copy.parent.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not os.path.exists(copy) and not copy.parent.exists()
