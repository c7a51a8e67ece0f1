"""Bulk Publish to a `gs://` output against a real GCS API emulator, read back over the emulator's HTTP.

A Parquet source is published to `gs://bulk-test/pub` with a public URL at the emulator's path-style
object URLs (as a public bucket serves them): a snapshot, an update (an insert, an update, a deletion), a
run with no change (no object rewritten). A fresh consumer and one following from the start hold exactly
the source's resources; pages and files carry their `Cache-Control` and content type as object metadata.
The lock is a create-only object (`ifGenerationMatch=0`, which the emulator wrapper enforces): a held
lock refuses a second run, a stale one is taken over. `publish` runs in its own process: the process it
forks exports from (a forkserver) must start with the emulator's address in its environment, which one
already started by an earlier test in this process would lack.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from launcher.publish import pages
from launcher.publish.bucket import FILE_CACHE, PAGE_CACHE
from launcher.publish.folder import ROOT_NAME, PublicationBusy, open_publication
from tests import gcs_emulator
from tests.test_publish import NAME, Source, _held, _pull
from transforms.storage import files as gcs

BUCKET = gcs_emulator.BUCKET
PREFIX = f"pub/default/publish/{NAME}"
ROOT = Path(__file__).resolve().parents[1]
# The CLI, after the tests' emulator module has made Beam's GCS access anonymous (tests/gcs_emulator.py).
CLI = "import sys, tests.gcs_emulator; from launcher.cli.main import main; sys.exit(main(sys.argv[1:]))"


class Ran(NamedTuple):
    code: int
    out: str
    err: str


def _cli(tmp_path: Path, *argv: str) -> Ran:
    done = subprocess.run([sys.executable, "-c", CLI, *argv, "--state-dir", str(tmp_path / "state")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    return Ran(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def emulator():
    with gcs_emulator.serve_as_configured() as host:
        yield host


@pytest.fixture
def bucket(emulator):
    bucket = gcs.client().bucket(BUCKET)
    for blob in list(bucket.client.list_blobs(bucket, prefix="pub/")):
        blob.delete()
    return bucket


def _objects(bucket) -> dict[str, object]:
    return {b.name[len(PREFIX) + 1:]: b for b in bucket.client.list_blobs(bucket, prefix=PREFIX + "/")}


def test_a_publication_on_gcs_is_served_by_the_bucket_and_followed_over_http(emulator, bucket, tmp_path):
    source = Source(tmp_path / "src")
    public = f"{emulator}/{BUCKET}/{PREFIX}"
    root = f"{public}/{ROOT_NAME}"

    def publish(*extra: str):
        return _cli(tmp_path, "publish", NAME, "--source", str(source.folder), "--output", f"gs://{BUCKET}/pub",
                    "--public-url", public, "--update-cadence", "PT1H", *extra)

    for rid in ("o1", "o2"):
        source.put("Observation", rid, 1)
    source.put("Patient", "p1", 1)
    source.save()
    first = publish()
    assert first.code == 0 and first.out.startswith("snapshot "), first.err
    follower = tmp_path / "follower"
    for into in (tmp_path / "fresh-1", follower):
        code, err = _pull(root, into)
        assert code == 0 and _held(into) == source.current(), err

    source.put("Observation", "o3", 1)
    source.put("Patient", "p1", 2)
    source.delete("Observation", "o1")
    source.save()
    second = publish()
    assert second.code == 0 and second.out.startswith("update ") and "1 deleted file(s)" in second.out, second.err
    for into in (tmp_path / "fresh-2", follower):
        code, err = _pull(root, into)
        assert code == 0 and _held(into) == source.current(), err

    before = {rel: blob.generation for rel, blob in _objects(bucket).items() if not rel.startswith(".publish/")}
    third = publish()
    assert third.code == 0 and third.out.startswith("no changes since"), third.err
    after = {rel: blob.generation for rel, blob in _objects(bucket).items() if not rel.startswith(".publish/")}
    assert after == before  # no page written, no object rewritten

    objects = _objects(bucket)
    place = open_publication(f"gs://{BUCKET}/pub", "default", NAME, public)
    chain = list(place.chain())
    assert [rel for rel, _ in chain][0] == ROOT_NAME and pages.next_url(chain[-1][1]) == pages.PENDING
    listed = {place.rel_of(url) for _, body in chain for url in pages.listed_urls(body)}
    assert listed and listed <= set(objects)
    for rel, blob in objects.items():
        if rel == ROOT_NAME or rel.startswith("manifests/"):
            assert (blob.cache_control, blob.content_type) == (PAGE_CACHE, "application/json"), rel
        elif rel.startswith("files/"):
            assert (blob.cache_control, blob.content_type) == (FILE_CACHE, "application/fhir+ndjson"), rel
    assert not any(rel.startswith(".publish/work/") for rel in objects)  # the exports' work is moved, then gone
    assert ".publish/lock" not in objects  # released


def test_the_lock_object_refuses_a_second_run_and_a_stale_one_is_taken_over(emulator, bucket, tmp_path):
    place = open_publication(f"gs://{BUCKET}/pub", "default", NAME, lock_stale_s=3600)
    with place.lock(0):
        lock = bucket.get_blob(f"{PREFIX}/.publish/lock")
        assert lock is not None and lock.time_created is not None
        with pytest.raises(PublicationBusy, match="another run"):
            with open_publication(f"gs://{BUCKET}/pub", "default", NAME).lock(0.5):
                pass
        source = Source(tmp_path / "src")
        source.put("Patient", "p1", 1)
        source.save()
        busy = _cli(tmp_path, "publish", NAME, "--source", str(source.folder), "--output", f"gs://{BUCKET}/pub",
                    "--lock-wait", "0.3s")
        assert busy.code == 3 and "another run of publication directory" in busy.err, busy.err
        assert not any(rel.startswith(("manifests/", "files/", ROOT_NAME)) for rel in _objects(bucket))
        # A run that died keeps its lock; past --lock-stale another run takes it over.
        taker = open_publication(f"gs://{BUCKET}/pub", "default", NAME, lock_stale_s=0.001)
        with taker.lock(0):
            newer = bucket.get_blob(f"{PREFIX}/.publish/lock")
            assert newer.generation != lock.generation
        assert bucket.get_blob(f"{PREFIX}/.publish/lock") is None
