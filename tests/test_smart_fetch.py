"""smart-fetch 1.0.3, the SMART/Cumulus bulk client (cumulus-etl 4.x exports through it), run on its
defaults against `bulk-export serve --auth smart` over the shared Synthea data, with a Group: it must
exit 0 holding exactly the Group's resources, then the Practitioners and Organizations they reference,
which it reads by id after the bulk step. The expected sets are computed here from the source files.

smart-fetch comes with the `smart-fetch` extra (`pip install -e '.[smart-fetch]'`, Python 3.11+; `make`
installs it); without it, or without ../shared/data, the test skips.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from jwt.algorithms import ECAlgorithm

from tests.helpers import SYNTHEA, read_ndjson, referenced_patients, references
from tests.server_process import serve
from tests.smart_client import TENANT, ClientKey, register, write_jwks
from tests.test_patient_group_export import official_compartment_types

CLIENT = "smart-fetch"
# 3 patients, one of whom has a Device (by `Device.patient`): every kind of resource smart-fetch asks for.
GROUP = "HarvardPilgrimHealthCare"
# What smart-fetch 1.0.3 asks for by default (`resources.PATIENT_TYPES`, all listed in our CapabilityStatement),
# and its default Observation filter (`filtering.py`), one `_typeFilter` whose commas are `%2C` inside.
TYPES = {"Patient", "Encounter", "AllergyIntolerance", "Condition", "Device", "DiagnosticReport",
         "DocumentReference", "EpisodeOfCare", "Immunization", "MedicationDispense", "MedicationRequest",
         "Observation", "Procedure", "ServiceRequest", "Specimen"}
CATEGORIES = ["social-history", "vital-signs", "imaging", "laboratory", "survey", "exam", "procedure", "therapy",
              "activity"]
# Read by id after the bulk step (its "practitioner" and "organization" hydration tasks).
READ_TYPES = ("Practitioner", "Organization")


def _smart_fetch() -> str | None:
    """The smart-fetch beside this interpreter (the project's venv), else one on PATH (e.g. pipx)."""
    beside = Path(sys.executable).parent / "smart-fetch"
    return str(beside) if beside.exists() else shutil.which("smart-fetch")


class Run:
    """One smart-fetch export: its exit code and output, its work folder, and its bulk log."""

    def __init__(self, done: subprocess.CompletedProcess, folder: Path):
        self.code, self.output = done.returncode, done.stdout + done.stderr
        workdirs = sorted(p for p in folder.glob("0*") if p.is_dir())
        self.workdir = workdirs[0] if len(workdirs) == 1 else None
        log = self.workdir / "log.ndjson" if self.workdir else None
        self.events = [json.loads(line) for line in log.read_text().splitlines()] if log and log.exists() else []

    def files(self) -> dict[str, list[dict]]:
        """The resources of each NDJSON file in the work folder, by file name (`Type.001.ndjson.gz`)."""
        found = {}
        for path in sorted(self.workdir.glob("*.*.ndjson*")):  # not its log.ndjson
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt") as f:
                found[path.name] = [json.loads(line) for line in f if line.strip()]
        return found


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    if not SYNTHEA.is_dir():
        pytest.skip("../shared/data is not present")
    executable = _smart_fetch()
    if executable is None:
        pytest.skip("smart-fetch is not installed: pip install -e '.[smart-fetch]' (Python 3.11+)")
    root = tmp_path_factory.mktemp("smart-fetch")
    key = ClientKey("ES384")
    register(root / "state", CLIENT, "--jwks", write_jwks(root, key), "--tenant", TENANT)
    # smart-fetch signs with the first key of a `.jwks` file that has `kid`, `alg` and "sign" in `key_ops`.
    private = {**json.loads(ECAlgorithm.to_jwk(key.private)), "kid": key.kid, "alg": key.alg, "key_ops": ["sign"]}
    (root / "client.jwks").write_text(json.dumps({"keys": [private]}))
    with serve(SYNTHEA, root / "out", root / "state", "--auth", "smart") as server:
        done = subprocess.run(
            [executable, "export", "--fhir-url", server.fhir, "--smart-client-id", CLIENT,
             "--smart-key", str(root / "client.jwks"), "--group", GROUP, str(root / "fetched")],
            cwd=root, capture_output=True, text=True, timeout=600,
            env={**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"})
    return Run(done, root / "fetched")


def _oracle() -> dict[str, set[str]]:
    """The ids smart-fetch should end with, by type, computed from the source files: the Group's Patient
    compartment in its types (Observations of its categories), the Devices naming a member or referenced by
    those, and the Practitioners and Organizations all of these reference."""
    source = read_ndjson(SYNTHEA)
    group = next(r for r in source if r["resourceType"] == "Group" and r["id"] == GROUP)
    assert not any(m.get("inactive") or m.get("period") for m in group["member"])  # every member counts
    members = {m["entity"]["reference"].removeprefix("urn:uuid:").removeprefix("Patient/") for m in group["member"]}
    compartment = official_compartment_types() & TYPES
    assert "Device" not in compartment  # R4: a Device is outside the Patient compartment

    def covered(r: dict) -> bool:
        return bool((referenced_patients(r) | ({r["id"]} if r["resourceType"] == "Patient" else set())) & members)

    def in_category(r: dict) -> bool:
        return any(c.get("code") in CATEGORIES for concept in r.get("category", []) for c in concept.get("coding", []))

    bulk = [r for r in source if r["resourceType"] in compartment and covered(r)
            and (r["resourceType"] != "Observation" or in_category(r))]
    named = references(bulk)
    bulk += [r for r in source if r["resourceType"] == "Device" and (covered(r) or f"Device/{r['id']}" in named)]
    named = references(bulk)
    expected: dict[str, set[str]] = {}
    for r in bulk + [r for r in source if r["resourceType"] in READ_TYPES and f"{r['resourceType']}/{r['id']}"
                     in named]:
        expected.setdefault(r["resourceType"], set()).add(r["id"])
    return expected


def test_smart_fetch_exits_0_after_one_group_kickoff_on_its_defaults(run):
    assert run.code == 0, run.output
    kickoffs = [e["eventDetail"] for e in run.events if e["eventId"] == "kickoff"]
    assert len(kickoffs) == 1 and kickoffs[0]["errorCode"] is None, kickoffs
    url = urllib.parse.urlsplit(kickoffs[0]["exportUrl"])
    assert url.path.endswith(f"/fhir/Group/{GROUP}/$export")
    query = dict(urllib.parse.parse_qsl(url.query))
    # The defaults this test is about: Device beside the compartment types, and the comma inside the
    # `_typeFilter` value percent-encoded once more (`%252C` on the wire).
    assert set(query["_type"].split(",")) == TYPES
    assert query["_typeFilter"] == "Observation?category=" + "%2C".join(CATEGORIES)
    assert "_since" not in query
    assert kickoffs[0]["softwareName"] == "fhir-bulk-export-beam"


def test_smart_fetch_holds_exactly_the_groups_resources(run):
    assert run.code == 0, run.output
    assert run.workdir, "smart-fetch made no single work folder"
    files = run.files()
    expected = _oracle()
    # The bulk step's files are `Type.001.ndjson.gz`; the reads by id go to `Type.referenced.ndjson.gz`.
    bulk = {name: resources for name, resources in files.items() if ".referenced." not in name}
    read = {name: resources for name, resources in files.items() if ".referenced." in name}
    got: dict[str, list[str]] = {}
    for resources in bulk.values():
        for r in resources:
            got.setdefault(r["resourceType"], []).append(r["id"])
    bulk_types = set(expected) - set(READ_TYPES)
    assert {t: len(ids) for t, ids in got.items()} == {t: len(expected[t]) for t in bulk_types}
    assert {t: set(ids) for t, ids in got.items()} == {t: expected[t] for t in bulk_types}
    # The Group brings a Device (by `Device.patient`) and Observations: every Observation of the data is in
    # one of the categories, so the `%252C` filter must select them all, not match nothing (issue 27, item 8).
    assert expected.get("Device") and expected["Observation"]

    assert sorted(read) == sorted(f"{t}.referenced.ndjson.gz" for t in READ_TYPES)
    source = {(r["resourceType"], r["id"]): r for r in read_ndjson(SYNTHEA) if r["resourceType"] in READ_TYPES}
    for name, resources in read.items():
        resource_type = name.split(".")[0]
        assert sorted(r["id"] for r in resources) == sorted(expected[resource_type]), name
        assert all(r == source[(resource_type, r["id"])] for r in resources)  # as the source has them
