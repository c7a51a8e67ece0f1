"""Bulk Publish end to end: a Parquet source changing over publish runs, served by `bulk-export serve` over real
HTTP and read from the static folder, followed by the reference consumer (`bulk-export pull`).

Runs: a snapshot; inserts and an update; a deletion and an update; a run with no change (no page, no ETag
moves); then `--snapshot` (the old chain ends `#closed`). At each point a fresh consumer, over HTTP and from the
folder, and one following from the start hold exactly the source's current resources, byte for byte. A reader
thread walks the chain over HTTP through every run and never meets a broken page or a dangling link.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import io
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest

from launcher.cli import main as cli
from launcher.publish import pages
from launcher.publish.consumer import Dataset
from launcher.publish.folder import ROOT_NAME, PublicationFolder, publication_dir
from tests.columnar_data import record_row, write_rows
from tests.gcs_emulator import free_port
from tests.server_process import serve
from tests.smart_client import ClientKey, get_token, register, write_jwks
from transforms.storage.layout import gzip_cache_path

NAME = "directory"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Source:
    """A Parquet source of current resources and tombstones, rewritten whole at each change."""

    def __init__(self, folder: Path):
        self.folder, self.rows = folder, {}
        folder.mkdir(parents=True)

    def put(self, rtype: str, rid: str, version: int) -> None:
        body = {"resourceType": rtype, "id": rid, "status": "active", "version": version}
        self.rows[(rtype, rid)] = record_row(rtype, rid, body, _now())

    def delete(self, rtype: str, rid: str) -> None:
        self.rows[(rtype, rid)] = record_row(rtype, rid, "", _now(), deleted=True)

    def save(self) -> None:
        write_rows("parquet", self.folder / "records.parquet", list(self.rows.values()))
        time.sleep(0.01)  # the next run's transactionTime is after every stamp

    def current(self) -> dict[str, dict[str, bytes]]:
        found: dict[str, dict[str, bytes]] = {}
        for (rtype, rid), row in self.rows.items():
            if not row["deleted"]:
                found.setdefault(rtype, {})[rid] = row["resource"].encode()
        return found


def _pull(where: str, into: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(["pull", where, "--into", str(into), "--once"])
    return code, err.getvalue()


def _held(into: Path) -> dict[str, dict[str, bytes]]:
    return {t: ids for t, ids in Dataset(str(into)).resources.items() if ids}


def _snapshot_of_pages(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in [folder / ROOT_NAME, *(folder / "manifests").glob("*")]}


class ChainReader(threading.Thread):
    """Walks the chain over HTTP again and again: every page must parse, every link and file must answer 200."""

    def __init__(self, root: str):
        super().__init__(daemon=True)
        self.root, self.stop, self.walks, self.problems = root, threading.Event(), 0, []

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                url = self.root
                while url and not pages.is_marker(url):
                    response = client.get(url)
                    if response.status_code != 200:
                        self.problems.append(f"{url}: {response.status_code}")
                        break
                    body = orjson.loads(response.content)  # a half-written page would not parse
                    for file_url in pages.listed_urls(body):
                        if client.get(file_url).status_code != 200:
                            self.problems.append(f"{file_url} listed by {url} is missing")
                    url = pages.next_url(body)
                self.walks += 1


@pytest.fixture
def published(tmp_path, run_cli):
    source = Source(tmp_path / "src")
    out, state = tmp_path / "out", tmp_path / "state"
    port = free_port()
    public = f"http://127.0.0.1:{port}/publish/default/{NAME}"
    folder = Path(publication_dir(str(out), "default", NAME))

    def publish(*extra: str):
        return run_cli("publish", NAME, "--source", str(source.folder), "--output", str(out),
                       "--public-url", public, "--update-cadence", "PT1H", *extra, state_dir=state)

    with serve(source.folder, out, tmp_path / "serve-state", "--auth", "none", port=port):
        yield source, publish, public + "/" + ROOT_NAME, folder


def test_four_runs_then_a_snapshot_every_consumer_holds_the_source(published, tmp_path):
    source, publish, root, folder = published
    for rid in ("o1", "o2", "o3"):
        source.put("Observation", rid, 1)
    source.put("Patient", "p1", 1)
    source.save()
    first = publish()
    assert first.code == 0 and first.out.startswith("snapshot "), first.err

    follower = tmp_path / "follower"

    def check(point: str) -> None:
        for into in (tmp_path / f"fresh-{point}", follower):
            code, err = _pull(root, into)
            assert code == 0, err
            assert _held(into) == source.current(), (point, into.name, err)

    check("1")
    stub_url = pages.next_url(orjson.loads((folder / ROOT_NAME).read_bytes()))
    stub = orjson.loads(httpx.get(stub_url).content)
    assert pages.next_url(stub) == pages.PENDING and not any(stub.get(n) for n in pages.FILE_LISTS)

    reader = ChainReader(root)
    reader.start()
    try:
        source.put("Observation", "o4", 1)  # an insert
        source.put("Patient", "p1", 2)  # an update
        source.save()
        second = publish()
        assert second.code == 0 and second.out.startswith("update "), second.err
        check("2")

        source.delete("Observation", "o2")
        source.put("Observation", "o3", 2)
        source.save()
        third = publish()
        assert third.code == 0 and "1 deleted file(s)" in third.out, third.out + third.err
        check("3")

        before = _snapshot_of_pages(folder)
        etag = httpx.get(root).headers["etag"]
        fourth = publish()
        assert fourth.code == 0 and fourth.out.startswith("no changes since"), fourth.out + fourth.err
        assert _snapshot_of_pages(folder) == before and httpx.get(root).headers["etag"] == etag
        check("4")

        old_tail = [rel for rel, _ in PublicationFolder(str(folder), root.removesuffix("/" + ROOT_NAME)).chain()][-1]
        source.put("Patient", "p2", 1)
        source.save()
        fifth = publish("--snapshot")
        assert fifth.code == 0 and "previous chain closed" in fifth.out, fifth.out + fifth.err
    finally:
        reader.stop.set()
        reader.join(60)
    assert reader.walks > 0 and reader.problems == []

    assert pages.next_url(orjson.loads((folder / old_tail).read_bytes())) == pages.CLOSED
    code, err = _pull(root, follower)
    assert code == 0 and "the chain is closed: starting again from the root" in err, err
    assert _held(follower) == source.current()
    fresh = tmp_path / "fresh-after-snapshot"
    code, err = _pull(root, fresh)
    assert code == 0 and _held(fresh) == source.current()
    assert err.count("in, 0 deleted") == 1, err  # one snapshot page, nothing to replay


def test_manifests_carry_etags_and_short_caching_files_long_caching_missing_pages_404(published):
    source, publish, root, folder = published
    source.put("Patient", "p1", 1)
    source.save()
    assert publish().code == 0
    with httpx.Client(timeout=30) as client:
        first = client.get(root)
        assert first.status_code == 200 and first.headers["content-type"] == "application/json"
        assert first.headers["cache-control"] == "public, max-age=10"
        body = first.json()
        assert body["manifestType"] == pages.MANIFEST_TYPE and body["updateCadence"] == "PT1H"
        assert body["requiresAccessToken"] is False
        again = client.get(root, headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.headers["etag"] == first.headers["etag"]
        stale = client.get(root, headers={"If-None-Match": '"other"'})
        assert stale.status_code == 200 and stale.content == first.content
        [entry] = body["output"]
        got = client.get(entry["url"])
        assert got.status_code == 200 and got.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert got.content == source.current()["Patient"]["p1"] + b"\n"
        missing = client.get(root.replace(ROOT_NAME, "manifests/nope.json"))
        assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
        assert client.get(root.replace(ROOT_NAME, ".publish/publication.json")).status_code == 404

        # The link swap changes the stub's body, so its ETag.
        stub_url = pages.next_url(body)
        stub = client.get(stub_url)
        source.put("Patient", "p2", 1)
        source.save()
        assert publish().code == 0
        swapped = client.get(stub_url, headers={"If-None-Match": stub.headers["etag"]})
        assert swapped.status_code == 200 and pages.next_url(swapped.json()).startswith("http")


def test_an_overlapping_run_is_refused_and_leaves_the_chain_alone(published):
    source, publish, root, folder = published
    source.put("Patient", "p1", 1)
    source.save()
    assert publish().code == 0
    before = _snapshot_of_pages(folder)
    source.put("Patient", "p2", 1)
    source.save()
    with PublicationFolder(str(folder)).lock(0):
        busy = publish("--lock-wait", "0.3s")
    assert busy.code == 3, busy.err
    assert busy.err.strip().count("\n") == 0 and "another run of publication directory" in busy.err
    assert _snapshot_of_pages(folder) == before


def test_a_waiting_run_goes_on_once_the_other_ends(published):
    source, publish, root, folder = published
    source.put("Patient", "p1", 1)
    source.save()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with PublicationFolder(str(folder)).lock(0):
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    threading.Timer(1.0, release.set).start()
    result = publish("--lock-wait", "60s")
    holder.join()
    assert result.code == 0 and result.out.startswith("snapshot "), result.err


def test_cleanup_keeps_live_files_and_removes_unlisted_ones_after_the_grace(published, tmp_path):
    source, publish, root, folder = published
    source.put("Patient", "p1", 1)
    source.save()
    assert publish().code == 0
    old_files = {p for p in (folder / "files").rglob("*.ndjson")}
    source.put("Patient", "p2", 1)
    source.save()
    assert publish("--snapshot").code == 0
    old_pages = set((folder / "manifests").glob("*"))
    publication = PublicationFolder(str(folder), root.removesuffix("/" + ROOT_NAME))
    live = {folder / publication.rel_of(url) for _, body in publication.chain() for url in pages.listed_urls(body)}
    assert old_files and not old_files & live

    kept = publish("--cleanup", "--grace", "1h")
    assert kept.code == 0 and kept.out.startswith("removed 0 file(s)")
    assert all(p.exists() for p in old_files)
    time.sleep(1.1)
    swept = publish("--cleanup", "--grace", "1s")
    assert swept.code == 0, swept.err
    assert not any(p.exists() for p in old_files) and all(p.exists() for p in live)
    assert len(list((folder / "manifests").glob("*"))) < len(old_pages)
    code, err = _pull(root, tmp_path / "after-cleanup")
    assert code == 0 and _held(tmp_path / "after-cleanup") == source.current(), err


def test_a_static_folder_is_followed_from_its_path(tmp_path, run_cli):
    """Published with its file:// URL (no --public-url), the folder is read as it lies on disk."""
    source = Source(tmp_path / "src")
    out = tmp_path / "out"
    folder = Path(publication_dir(str(out), "default", NAME))
    source.put("Patient", "p1", 1)
    source.put("Patient", "p2", 1)
    source.save()
    assert run_cli("publish", NAME, "--source", str(source.folder), "--output", str(out)).code == 0
    follower = tmp_path / "follower"
    assert _pull(str(folder), follower)[0] == 0 and _held(follower) == source.current()
    source.delete("Patient", "p1")
    source.put("Patient", "p3", 1)
    source.save()
    assert run_cli("publish", NAME, "--source", str(source.folder), "--output", str(out)).code == 0
    for into in (follower, tmp_path / "fresh"):
        code, err = _pull("file://" + str(folder), into)
        assert code == 0 and _held(into) == source.current(), err


def test_under_smart_auth_every_page_and_file_needs_a_token_whose_scopes_cover_it(tmp_path, run_cli):
    keys = {"a1": ClientKey("ES384"), "g1": ClientKey("ES384")}
    state = tmp_path / "serve-state"
    register(state, "a1", "--jwks", write_jwks(tmp_path, keys["a1"]), "--tenant", "acme")
    register(state, "g1", "--jwks", write_jwks(tmp_path, keys["g1"]), "--tenant", "globex")
    source = Source(tmp_path / "src")
    source.put("Patient", "p1", 1)
    source.put("Observation", "o1", 1)
    source.save()
    out, port = tmp_path / "out", free_port()
    public = f"http://127.0.0.1:{port}/publish/acme/{NAME}"
    published = run_cli("publish", NAME, "--tenant", "acme", "--source", str(source.folder), "--output", str(out),
                        "--public-url", public, "--kickoff", "http://x/fhir/$export?_type=Patient,Observation")
    assert published.code == 0, published.err
    root = f"{public}/{ROOT_NAME}"
    with serve(source.folder, out, state, port=port) as server, httpx.Client(timeout=30) as plain:
        token_url = server.base_url + "/auth/token"

        def token(client_id: str, scope: str = "system/*.read") -> dict:
            return {"Authorization": f"Bearer {get_token(plain, token_url, keys[client_id], client_id, scope)}"}

        assert plain.get(root).status_code == 401
        everything = token("a1")
        body = plain.get(root, headers=everything).json()
        assert body["requiresAccessToken"] is True
        urls = {entry["type"]: entry["url"] for entry in body["output"]}
        assert all(plain.get(url, headers=everything).status_code == 200 for url in urls.values())
        assert plain.get(urls["Patient"]).status_code == 401
        patients_only = token("a1", "system/Patient.read")
        assert plain.get(root, headers=patients_only).status_code == 403  # the page lists Observation too
        assert plain.get(urls["Patient"], headers=patients_only).status_code == 200
        assert plain.get(urls["Observation"], headers=patients_only).status_code == 403
        assert plain.get(root, headers=token("g1")).status_code == 404  # another tenant's publication
        code, err = _pull_with(root, tmp_path / "consumer", everything["Authorization"].split()[1])
        assert code == 0 and _held(tmp_path / "consumer") == source.current(), err


def _pull_with(where: str, into: Path, token: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(["pull", where, "--into", str(into), "--once", "--token", token])
    return code, err.getvalue()


def test_a_published_file_is_compressed_once_and_its_copy_swept_with_it(published):
    source, publish, root, folder = published
    source.put("Patient", "p1", 1)
    source.save()
    assert publish().code == 0
    [entry] = httpx.get(root, timeout=30).json()["output"]
    [local] = (folder / "files").rglob("*.ndjson")
    copy = Path(gzip_cache_path(str(local)))
    with httpx.Client(timeout=30, headers={"Accept-Encoding": "gzip"}) as client:
        for _ in range(2):
            with client.stream("GET", entry["url"]) as response:
                raw = b"".join(response.iter_raw())
            assert response.headers["content-encoding"] == "gzip" and gzip.decompress(raw) == local.read_bytes()
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert copy.read_bytes() == raw
    source.put("Patient", "p2", 1)
    source.save()
    assert publish("--snapshot").code == 0
    time.sleep(1.1)
    assert publish("--cleanup", "--grace", "1s").code == 0
    assert not local.exists() and not copy.exists()
