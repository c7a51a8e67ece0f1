"""REST reads of what clients resolve (`GET [base]/{type}/{id}`) and Group discovery (`GET [base]/Group`),
over real HTTP with `--auth smart`, real keys and a per-tenant source (`--source '.../{tenant}/'`).

The source of tenant `acme` is the generated sample data, plus Groups of our own (for search) and a gzip
file of Locations; tenant `globex` holds an Organization and a Group of its own; tenant `fresh`'s folder
is changed while the server runs. Expected bytes are read from the source files, line by line.
"""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import SYNTHEA
from tests.server_process import serve
from tests.smart_client import ClientKey, get_token, register, write_jwks

CLIENTS = {"a1": "acme", "g1": "globex", "f1": "fresh"}
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
GROUPS = [  # acme's own Groups, beside the sample's grp-00001 ("Sample cohort 1", urn:example:cohort|COHORT-00001)
    {"resourceType": "Group", "id": "g-diabetes", "type": "person", "actual": True, "name": "Diabetes registry",
     "identifier": [{"system": "urn:example:registry", "value": "R-1"}, {"value": "LOCAL-7"}],
     "member": [{"entity": {"reference": "Patient/pat-000001"}}]},
    {"resourceType": "Group", "id": "g-eclair", "type": "person", "actual": True, "name": "Éclair Study",
     "identifier": [{"system": "urn:example:cohort", "value": "COHORT-00002"}]},
    {"resourceType": "Group", "id": "g-diet", "type": "person", "actual": True, "name": "diet trial",
     "identifier": [{"system": "urn:example:registry", "value": "R-2"}]},
]
LOCATIONS = [{"resourceType": "Location", "id": f"loc-{n}", "name": f"Ward {n}"} for n in range(1, 40)]


class Setup:
    def __init__(self, server, keys, sources: Path):
        self.server, self.keys, self.sources = server, keys, sources
        self.token_url = server.base_url + "/auth/token"

    def client(self, client_id: str, scope: str = "system/*.read") -> httpx.Client:
        """An HTTP client carrying a fresh access token of `client_id` with `scope`."""
        with httpx.Client(timeout=30) as plain:
            token = get_token(plain, self.token_url, self.keys[client_id], client_id, scope)
        return httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"})


def _ndjson(resources: list[dict]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in resources)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("reads")
    sources = root / "src"
    shutil.copytree(sample_dir, sources / "acme")
    (sources / "acme" / "more-groups.ndjson").write_bytes(_ndjson(GROUPS))
    (sources / "acme" / "Location.ndjson.gz").write_bytes(gzip.compress(_ndjson(LOCATIONS)))
    (sources / "globex").mkdir()
    (sources / "globex" / "data.ndjson").write_bytes(_ndjson([
        {"resourceType": "Organization", "id": "org-globex", "name": "Globex"},
        {"resourceType": "Group", "id": "g-globex", "name": "Globex members", "actual": True, "type": "person"}]))
    (sources / "fresh").mkdir()
    (sources / "fresh" / "Organization.ndjson").write_bytes(_ndjson([{"resourceType": "Organization", "id": "o1"}]))
    keys = {client_id: ClientKey("ES384") for client_id in CLIENTS}
    for client_id, tenant in CLIENTS.items():
        register(root / "state", client_id, "--jwks", write_jwks(root, keys[client_id]), "--tenant", tenant)
    with serve(Path(f"{sources}/{{tenant}}/"), root / "out", root / "state", "--read-index-interval", "0.2s") as server:
        yield Setup(server, keys, sources)


def _lines(path: Path) -> dict[str, bytes]:
    """The source lines of a file by id, as they are in the file (without the line break)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return {json.loads(line)["id"]: line.rstrip(b"\r\n") for line in f if line.strip()}


def _diagnostics(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    return response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("name", ["Practitioner.ndjson", "Organization.ndjson", "Location.ndjson.gz"])
def test_a_read_answers_the_source_line_byte_for_byte(setup, name):
    lines = _lines(setup.sources / "acme" / name)
    with setup.client("a1") as client:
        for resource_id, line in lines.items():
            response = client.get(f"{setup.server.fhir}/{json.loads(line)['resourceType']}/{resource_id}")
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("application/fhir+json")
            assert response.content == line


def test_a_read_without_a_token_is_401(setup):
    practitioner = next(iter(_lines(setup.sources / "acme" / "Practitioner.ndjson")))
    response = httpx.get(f"{setup.server.fhir}/Practitioner/{practitioner}", timeout=30)
    _diagnostics(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    _diagnostics(httpx.get(f"{setup.server.fhir}/Group?name=diab", timeout=30), 401)


def test_a_read_needs_a_scope_covering_its_type(setup):
    practitioner = next(iter(_lines(setup.sources / "acme" / "Practitioner.ndjson")))
    organization = next(iter(_lines(setup.sources / "acme" / "Organization.ndjson")))
    with setup.client("a1", "system/Organization.read") as client:
        refused = client.get(f"{setup.server.fhir}/Practitioner/{practitioner}")
        assert "do not cover Practitioner" in _diagnostics(refused, 403)
        assert client.get(f"{setup.server.fhir}/Organization/{organization}").status_code == 200
        # Refused before the index is asked: a missing id of an uncovered type is 403 too, telling nothing.
        _diagnostics(client.get(f"{setup.server.fhir}/Practitioner/no-such-id"), 403)
        _diagnostics(client.get(f"{setup.server.fhir}/Group?name=diab"), 403)
        _diagnostics(client.get(f"{setup.server.fhir}/Group/grp-00001"), 403)
    with setup.client("a1", "system/Practitioner.rs") as client:  # SMART v2
        assert client.get(f"{setup.server.fhir}/Practitioner/{practitioner}").status_code == 200


def test_what_the_source_lacks_and_compartment_types_are_404(setup):
    patient = next(iter(_lines(setup.sources / "acme" / "Patient.ndjson")))
    observation = next(iter(_lines(setup.sources / "acme" / "Observation.ndjson")))
    with setup.client("a1") as client:
        assert "not in the source" in _diagnostics(client.get(f"{setup.server.fhir}/Practitioner/no-such-id"), 404)
        assert "not in the source" in _diagnostics(client.get(f"{setup.server.fhir}/Medication/m1"), 404)
        # In the source, but in the Patient compartment: served by $export only.
        for path in (f"Patient/{patient}", f"Observation/{observation}"):
            assert "$export only" in _diagnostics(client.get(f"{setup.server.fhir}/{path}"), 404)
        _diagnostics(client.get(f"{setup.server.fhir}/Nonsense/x"), 404)  # no route: not an R4 type
        _diagnostics(client.get(f"{setup.server.fhir}/Organization/bad%20id"), 404)


def test_a_group_is_read_as_the_source_has_it_by_a_client_that_may_export_its_patients(setup):
    line = _lines(setup.sources / "acme" / "Group.ndjson")["grp-00001"]
    with setup.client("a1", "system/Group.read system/Patient.read") as client:
        response = client.get(f"{setup.server.fhir}/Group/grp-00001")
    assert response.status_code == 200 and response.content == line


def test_a_group_read_without_patient_scope_has_no_roster(setup):
    source = json.loads(_lines(setup.sources / "acme" / "Group.ndjson")["grp-00001"])
    with setup.client("a1", "system/Group.read system/Organization.read") as client:
        group = client.get(f"{setup.server.fhir}/Group/grp-00001").json()
        found = client.get(f"{setup.server.fhir}/Group?identifier=urn:example:cohort|COHORT-00001").json()
    assert found["entry"][0]["resource"] == group
    assert "member" not in group and "quantity" not in group and "Patient/" not in json.dumps(group)
    assert SUBSETTED in group["meta"]["tag"]
    kept = {k: v for k, v in source.items() if k not in ("member", "quantity", "meta")}
    assert {k: v for k, v in group.items() if k != "meta"} == kept  # name, identifier, managingEntity, ...


def _search(client: httpx.Client, setup: Setup, query: str, **headers) -> dict:
    response = client.get(f"{setup.server.fhir}/Group?{query}", headers=headers)
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


def _ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", ()) if e["search"]["mode"] == "match"]


@pytest.mark.parametrize("query, expected", [
    ("identifier=urn:example:cohort|COHORT-00001", ["grp-00001"]),
    ("identifier=urn%3Aexample%3Aregistry%7CR-1", ["g-diabetes"]),
    ("identifier=COHORT-00002", ["g-eclair"]),  # a value alone: any system
    ("identifier=|LOCAL-7", ["g-diabetes"]),  # no system
    ("identifier=|R-1", []),
    ("identifier=urn:example:registry|", ["g-diabetes", "g-diet"]),  # any value of the system
    ("identifier=R-2,COHORT-00001", ["g-diet", "grp-00001"]),  # ORed
    ("identifier=urn:example:other|R-1", []),
    ("name=di", ["g-diabetes", "g-diet"]),  # starts with, ignoring case
    ("name=DIAB", ["g-diabetes"]),
    ("name=eclair", ["g-eclair"]),  # and accents
    ("name=registry", []),  # not "contains"
    ("name=sample%20cohort", ["grp-00001"]),
    ("name=di&identifier=urn:example:registry|R-2", ["g-diet"]),  # ANDed
    ("", ["g-diabetes", "g-diet", "g-eclair", "grp-00001"]),
])
def test_group_search_by_identifier_and_name(setup, query, expected):
    with setup.client("a1") as client:
        bundle = _search(client, setup, query)
    assert _ids(bundle) == expected and bundle["total"] == len(expected)
    for entry in bundle.get("entry", ()):
        assert entry["fullUrl"] == f"{setup.server.fhir}/Group/{entry['resource']['id']}"


def test_group_search_entries_are_the_source_groups(setup):
    source = {g["id"]: g for g in GROUPS}
    with setup.client("a1") as client:
        bundle = _search(client, setup, "name=di")
    assert [e["resource"] for e in bundle["entry"]] == [source["g-diabetes"], source["g-diet"]]


def test_group_search_summary_count_and_count(setup):
    with setup.client("a1") as client:
        counted = _search(client, setup, "_summary=count")
        assert counted["total"] == 4 and "entry" not in counted
        first = _search(client, setup, "_count=3")
        assert first["total"] == 4 and _ids(first) == ["g-diabetes", "g-diet", "g-eclair"]
        following = next(link["url"] for link in first["link"] if link["relation"] == "next")
        second = client.get(following).json()
        assert _ids(second) == ["grp-00001"] and not [k for k in second["link"] if k["relation"] == "next"]
        none = _search(client, setup, "name=di&_count=0")
        assert none["total"] == 2 and "entry" not in none and [k["relation"] for k in none["link"]] == ["self"]


def test_group_search_refuses_unknown_parameters_unless_lenient(setup):
    with setup.client("a1") as client:
        assert "'member'" in _diagnostics(client.get(f"{setup.server.fhir}/Group?member=Patient/x"), 400)
        _diagnostics(client.get(f"{setup.server.fhir}/Group?_count=lots"), 400)
        bundle = _search(client, setup, "name=diab&member=Patient/x", Prefer="handling=lenient")
    assert _ids(bundle) == ["g-diabetes"]
    outcomes = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "'member'" in outcomes[0]["issue"][0]["diagnostics"]


def test_a_tenant_reads_and_finds_only_its_own_source(setup):
    practitioner = next(iter(_lines(setup.sources / "acme" / "Practitioner.ndjson")))
    with setup.client("a1") as acme, setup.client("g1") as globex:
        _diagnostics(acme.get(f"{setup.server.fhir}/Organization/org-globex"), 404)
        _diagnostics(acme.get(f"{setup.server.fhir}/Group/g-globex"), 404)
        assert globex.get(f"{setup.server.fhir}/Organization/org-globex").status_code == 200
        _diagnostics(globex.get(f"{setup.server.fhir}/Practitioner/{practitioner}"), 404)
        _diagnostics(globex.get(f"{setup.server.fhir}/Group/grp-00001"), 404)
        assert _ids(_search(globex, setup, "")) == ["g-globex"]
        assert "g-globex" not in _ids(_search(acme, setup, ""))


def _until(check, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the index did not follow the source"
        time.sleep(0.1)


def test_the_index_follows_files_added_changed_and_removed(setup):
    folder = setup.sources / "fresh"
    with setup.client("f1") as client:
        base = setup.server.fhir
        assert client.get(f"{base}/Organization/o1").status_code == 200
        _diagnostics(client.get(f"{base}/Location/l1"), 404)
        added = _ndjson([{"resourceType": "Location", "id": "l1", "name": "new"},
                         {"resourceType": "Group", "id": "g-new", "name": "New group", "actual": True}])
        (folder / "added.ndjson").write_bytes(added)
        _until(lambda: client.get(f"{base}/Location/l1").status_code == 200)
        assert client.get(f"{base}/Location/l1").content == added.splitlines()[0]
        assert _ids(_search(client, setup, "name=new")) == ["g-new"]
        with open(folder / "Organization.ndjson", "ab") as f:  # a changed file
            f.write(_ndjson([{"resourceType": "Organization", "id": "o2"}]))
        _until(lambda: client.get(f"{base}/Organization/o2").status_code == 200)
        (folder / "added.ndjson").unlink()
        _until(lambda: client.get(f"{base}/Location/l1").status_code == 404)
        assert _search(client, setup, "name=new")["total"] == 0


def test_the_capability_statement_lists_read_and_group_search(setup):
    statement = httpx.get(setup.server.fhir + "/metadata", timeout=30).json()
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for name in ("Practitioner", "Organization", "Location"):
        assert by_type[name]["interaction"] == [{"code": "read"}], name
    assert by_type["Group"]["interaction"] == [{"code": "read"}, {"code": "search-type"}]
    params = {p["name"]: p for p in by_type["Group"]["searchParam"]}
    assert params["identifier"]["type"] == "token" and params["name"]["type"] == "string"
    assert "REST search only" in params["name"]["documentation"]
    for name in ("Patient", "Observation", "Medication"):  # compartment types; a type no source holds
        assert by_type[name]["interaction"] == [], name


@pytest.fixture(scope="module")
def synthea(tmp_path_factory):
    if not SYNTHEA.is_dir():
        pytest.skip("../shared/data is not present")
    root = tmp_path_factory.mktemp("synthea-reads")
    with serve(SYNTHEA, root / "out", root / "state") as server:
        yield server


def test_synthea_gzip_reads_and_group_search(synthea):
    """The shared data, as the reference server exported it: gzip NDJSON, Groups without identifiers."""
    with httpx.Client(timeout=30) as client:
        for name in ("Practitioner", "Organization", "Device"):
            lines = _lines(SYNTHEA / f"{name}.ndjson.gz")
            for resource_id in [*lines][:3] + [*lines][-3:]:
                response = client.get(f"{synthea.fhir}/{name}/{resource_id}")
                assert response.status_code == 200 and response.content == lines[resource_id]
        groups = _lines(SYNTHEA / "Group.ndjson.gz")
        assert client.get(f"{synthea.fhir}/Group/NeighborhoodHealthPlan").content == groups["NeighborhoodHealthPlan"]
        assert client.get(f"{synthea.fhir}/Group?_summary=count").json()["total"] == len(groups) == 8
        found = client.get(f"{synthea.fhir}/Group?name=blue%20cross").json()
        assert [e["resource"]["id"] for e in found["entry"]] == ["BlueCrossBlueShield"]
