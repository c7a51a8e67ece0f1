"""Exports to and from `gs://` against a real GCS API emulator, and V4 signed URLs.

The emulator ignores `ifGenerationMatch` and never checks signatures, so the
first is enforced by a wrapper this file proves, and signatures are verified
here, independently of the signing code, with the test's own key.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlparse

import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from pipelines.export import ExportJob, build_pipeline
from pipelines.models import ExportRequest
from pipelines.options import LOCAL_RUNNER, ExportSettings
from tests import gcs_emulator
from transforms.storage import files as gcs
from transforms.storage.layout import MANIFEST_NAME
from transforms.storage.urls import gcs_path_of, resign

BUCKET = gcs_emulator.BUCKET
KICKOFF = "https://ehr.example.org/fhir/$export"


@pytest.fixture(scope="session")
def emulator():
    """A GCS emulator for the session, with `STORAGE_EMULATOR_HOST` pointing at it."""
    with gcs_emulator.serve_as_configured() as host:
        yield host


@pytest.fixture(scope="session")
def bucket(emulator):
    return gcs.client().bucket(BUCKET)


@pytest.fixture(scope="session")
def gcs_source(bucket, sample_dir) -> tuple[str, dict[str, list[bytes]]]:
    """The sample NDJSON uploaded to `gs://bulk-test/src/`, and its lines per type."""
    lines: dict[str, list[bytes]] = {}
    for path in sorted(sample_dir.glob("*.ndjson")):
        bucket.blob(f"src/{path.name}").upload_from_string(path.read_bytes())
        for line in path.read_bytes().splitlines():
            lines.setdefault(json.loads(line)["resourceType"], []).append(line)
    return f"gs://{BUCKET}/src", lines


@pytest.fixture(scope="session")
def key(tmp_path_factory) -> tuple[Path, rsa.RSAPublicKey]:
    """A service-account JSON key made here, and its public key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "test", "private_key_id": "k1", "private_key": pem,
            "client_email": "signer@test.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": "https://oauth2.googleapis.com/token"}
    path = tmp_path_factory.mktemp("key") / "key.json"
    path.write_text(json.dumps(info))
    return path, private.public_key()


def verify_v4(url: str, public_key: rsa.RSAPublicKey, now: dt.datetime | None = None) -> None:
    """Checks a V4 signed GET URL as GCS does (signature and validity window); raises if it fails."""
    parsed = urlparse(url)
    query = dict(parse_qsl(parsed.query, keep_blank_values=True))
    signature = bytes.fromhex(query.pop("X-Goog-Signature"))
    assert query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256" and query["X-Goog-SignedHeaders"] == "host"
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
    canonical = "\n".join(["GET", parsed.path, canonical_query, f"host:{parsed.netloc}", "", "host",
                           "UNSIGNED-PAYLOAD"])
    scope = query["X-Goog-Credential"].split("/", 1)[1]
    to_sign = "\n".join(["GOOG4-RSA-SHA256", query["X-Goog-Date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    public_key.verify(signature, to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    start = dt.datetime.strptime(query["X-Goog-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.timezone.utc)
    now = now or dt.datetime.now(dt.timezone.utc)
    assert start - dt.timedelta(minutes=1) <= now < start + dt.timedelta(seconds=int(query["X-Goog-Expires"]))


def _objects(bucket, prefix: str) -> list[str]:
    return sorted(b.name for b in bucket.client.list_blobs(bucket, prefix=prefix))


def _read(bucket, path: str) -> bytes:
    return bucket.blob(gcs.split(path)[1]).download_as_bytes()


def _export(source: str, output: str, **settings) -> tuple[ExportJob, dict]:
    job = ExportJob(f"job-{time.monotonic_ns()}", "2030-01-01T00:00:00Z", ExportSettings(source, output, **settings))
    pipeline = BeamTestPipeline(runner=LOCAL_RUNNER)
    build_pipeline(pipeline, ExportRequest(request_url=KICKOFF), job)
    pipeline.run().wait_until_finish()
    return job, json.loads(_read(gcs.client().bucket(BUCKET), f"{job.job_dir}/{MANIFEST_NAME}"))


def test_the_emulator_wrapper_enforces_if_generation_match(bucket):
    """The emulator alone ignores preconditions; the wrapper must turn a second create-once into 412."""
    from google.api_core.exceptions import PreconditionFailed

    blob = bucket.blob("precondition/once.txt")
    blob.upload_from_string(b"first", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob("precondition/once.txt").upload_from_string(b"second", if_generation_match=0)
    bucket.blob("precondition/src.txt").upload_from_string(b"other")
    with pytest.raises(PreconditionFailed):
        bucket.copy_blob(bucket.blob("precondition/src.txt"), bucket, "precondition/once.txt", if_generation_match=0)
    assert blob.download_as_bytes() == b"first"


def test_publish_once_never_overwrites_an_existing_manifest(bucket):
    final = f"gs://{BUCKET}/publish/{MANIFEST_NAME}"
    for n, data in enumerate((b"one", b"two")):
        bucket.blob(f"publish/.hidden-{n}").upload_from_string(data)
    gcs.publish_once(f"gs://{BUCKET}/publish/.hidden-0", final)
    with pytest.raises(gcs.ObjectExists, match="never overwritten"):
        gcs.publish_once(f"gs://{BUCKET}/publish/.hidden-1", final)
    assert _objects(bucket, "publish/") == [f"publish/{MANIFEST_NAME}"]
    assert _read(bucket, final) == b"one"


def test_export_from_and_to_gcs_writes_parts_then_the_manifest(bucket, gcs_source):
    source, lines = gcs_source
    job, manifest = _export(source, f"gs://{BUCKET}/out", max_lines_per_part=40)
    assert manifest["requiresAccessToken"] is True and manifest["transactionTime"] == job.transaction_time
    exported: dict[str, list[bytes]] = {}
    for entry in manifest["output"]:
        assert entry["url"].startswith(f"{job.job_dir}/{entry['type']}-")
        data = _read(bucket, entry["url"])
        assert data.endswith(b"\n") and data.count(b"\n") == entry["count"] <= 40
        exported.setdefault(entry["type"], []).extend(data.splitlines())
    assert {t: sorted(ls) for t, ls in exported.items()} == {t: sorted(ls) for t, ls in lines.items()}
    # Only final names are left: no temporary parts, no hidden manifest.
    prefix = gcs.split(job.job_dir)[1] + "/"
    assert _objects(bucket, prefix) == sorted([gcs.split(e["url"])[1] for e in manifest["output"]]
                                              + [prefix + MANIFEST_NAME])
    # Each object is served as what it is: the manifest as JSON, the parts as FHIR NDJSON.
    types = {name: bucket.get_blob(name).content_type for name in _objects(bucket, prefix)}
    assert types.pop(prefix + MANIFEST_NAME) == "application/json"
    assert set(types.values()) == {"application/fhir+ndjson"}


def test_a_command_line_export_runs_from_gcs_to_gcs_in_its_fork_server(bucket, gcs_source, tmp_path):
    # The run is forked from the fork server, which imported Beam without its GCS client
    # (`launcher.jobs.fork_preload`); the emulator's anonymous credentials are preloaded there too.
    source, lines = gcs_source
    script = ("import sys; from launcher.jobs import fork_server; fork_server._PRELOAD.append('tests.gcs_emulator');"
              " from launcher.cli.main import main; sys.exit(main(sys.argv[1:]))")
    output = f"gs://{BUCKET}/cli-{time.monotonic_ns()}"
    done = subprocess.run([sys.executable, "-c", script, "export", "--source", source, "--output", output,
                           "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
                          env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    [path] = [line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("manifest: ")]
    assert path.startswith(output + "/")
    manifest = json.loads(_read(bucket, path))
    exported: dict[str, list[bytes]] = {}
    for entry in manifest["output"]:
        data = _read(bucket, entry["url"])
        assert data.count(b"\n") == entry["count"]
        exported.setdefault(entry["type"], []).extend(data.splitlines())
    assert {t: sorted(ls) for t, ls in exported.items()} == {t: sorted(ls) for t, ls in lines.items()}


def test_signed_urls_verify_with_the_key_and_download_the_parts(bucket, gcs_source, key):
    key_path, public_key = key
    source, lines = gcs_source
    job, manifest = _export(source, f"gs://{BUCKET}/signed", signed_urls=True, url_ttl=3600,
                            signing_key=str(key_path))
    assert manifest["requiresAccessToken"] is False
    total = 0
    for entry in manifest["output"]:
        url = entry["url"]
        verify_v4(url, public_key)
        assert gcs_path_of(url).startswith(job.job_dir + "/")
        with urllib.request.urlopen(url, timeout=10) as response:
            data = response.read()
        assert data == _read(bucket, gcs_path_of(url)) and data.count(b"\n") == entry["count"]
        total += entry["count"]
    assert total == sum(len(ls) for ls in lines.values())
    # A URL expires, and a tampered one does not verify.
    url = manifest["output"][0]["url"]
    with pytest.raises(AssertionError):
        verify_v4(url, public_key, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    with pytest.raises(InvalidSignature):
        verify_v4(url.replace("-0.ndjson", "-1.ndjson", 1), public_key)
    fresh = resign([url], 60, str(key_path))[0]
    verify_v4(fresh, public_key)
    assert "X-Goog-Expires=60" in fresh and gcs_path_of(fresh) == gcs_path_of(url)


def test_attachments_are_copied_beside_the_parts_and_signed_like_them(bucket, key):
    """A `Binary/<id>` and a relative path of a gs:// source, served from gs:// output by signed URLs."""
    key_path, public_key = key
    pdf, binary = b"%PDF-1.4 attachment\n" + bytes(range(256)), b"binary \x00 content"
    resources = [
        {"resourceType": "Binary", "id": "b1", "data": base64.b64encode(binary).decode()},
        {"resourceType": "DocumentReference", "id": "d1", "status": "current", "content": [
            {"attachment": {"contentType": "text/plain", "url": "Binary/b1"}},
            {"attachment": {"contentType": "application/pdf", "url": "attachments/r.pdf"}}]},
    ]
    bucket.blob("attach-src/data.ndjson").upload_from_string("".join(json.dumps(r) + "\n" for r in resources))
    bucket.blob("attach-src/attachments/r.pdf").upload_from_string(pdf)
    job, manifest = _export(f"gs://{BUCKET}/attach-src", f"gs://{BUCKET}/attach-out", signed_urls=True,
                            signing_key=str(key_path))
    assert not manifest["error"]  # the PDF is no bad record
    part = next(e["url"] for e in manifest["output"] if e["type"] == "DocumentReference")
    with urllib.request.urlopen(part, timeout=10) as response:
        document = json.loads(response.read())
    for attachment, content in zip((c["attachment"] for c in document["content"]), (binary, pdf)):
        verify_v4(attachment["url"], public_key)
        assert gcs_path_of(attachment["url"]).startswith(f"{job.job_dir}/attachments/DocumentReference/")
        with urllib.request.urlopen(attachment["url"], timeout=10) as response:
            assert response.read() == content
        assert attachment["size"] == len(content)
        assert attachment["hash"] == base64.b64encode(hashlib.sha1(content).digest()).decode()
    prefix = gcs.split(job.job_dir)[1] + "/"
    assert [name for name in _objects(bucket, prefix) if "/attachments/" in name or "/." in name] == sorted(
        f"{prefix}attachments/DocumentReference/{hashlib.sha1(c).hexdigest()}" for c in (binary, pdf))


def test_signing_refuses_local_output_and_bad_ttls(key):
    with pytest.raises(ValueError, match="--signed-urls needs a gs:// --output"):
        ExportSettings("in", "/tmp/out", signed_urls=True)
    for ttl in (0, 8 * 86400):
        with pytest.raises(ValueError, match="--url-ttl"):
            ExportSettings("in", f"gs://{BUCKET}/o", signed_urls=True, url_ttl=ttl)


def test_emulator_access_skips_the_credential_search(emulator):
    """A fresh process with the emulator set reaches GCS in seconds, not after ~22 s of credential retries."""
    code = ("import time; t = time.monotonic(); import tests.gcs_emulator\n"
            "from apache_beam.io.filesystems import FileSystems\n"
            f"FileSystems.exists('gs://{BUCKET}/nothing'); print(time.monotonic() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1], env={**os.environ, gcs.EMULATOR_ENV: emulator})
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) < 10


def test_gcs_paths_are_checked():
    assert gcs.split("gs://b/a/c.ndjson") == ("b", "a/c.ndjson")
    for bad in ("gs://b", "gs:///x", "/local/file"):
        with pytest.raises(ValueError, match="gs://bucket/object"):
            gcs.split(bad)
    with pytest.raises(ValueError, match="names no GCS object"):
        gcs_path_of("ftp://x/y")
