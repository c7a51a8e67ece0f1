"""organizeOutputBy=Organization, Group, Practitioner: blocks checked against an oracle computed here.

The oracle reads the source files (or, at Patient level, the plain export's) in
plain Python: a resource belongs to the block of each instance of the type that
one of its `reference`s names (`Type/id`, an absolute URL ending so, `_history`,
or a `urn:uuid:`/`urn:oid:` id of one of the source's instances), and an
instance to its own block.
"""

from __future__ import annotations

import gzip
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import orjson
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from launcher.kickoff.parser import parse_get
from pipelines.job import ExportJob
from pipelines.options import LOCAL_RUNNER
from pipelines.plan import build_plan, organize_refusal
from pipelines.settings import ExportSettings
from tests.columnar_data import TX, file_of, run_export
from tests.conftest import SHARED_DATA
from tests.server_process import FHIR_HEADERS, poll, serve
from transforms.errors import Refused
from transforms.records import Origin, Resource, ResourceBatch
from transforms.write.organized import WriteBlocks

BASE = "https://ehr.example.org/fhir"
# Hand-made resources beside the generated sample: a Claim naming two Organizations (one by
# urn:uuid), an Organization part of another (by absolute URL), references in `_history` form, a
# dangling one, an untyped one naming a Patient, and an Observation about a Group.
EXTRA = [
    {"resourceType": "Claim", "id": "claim-two", "status": "active", "use": "claim",
     "patient": {"reference": "Patient/pat-00001"}, "provider": {"reference": "Organization/org-00001"},
     "insurer": {"reference": "urn:uuid:org-00002"}, "created": "2020-01-01",
     "priority": {"coding": [{"code": "normal"}]}, "type": {"coding": [{"code": "oral"}]}},
    {"resourceType": "Organization", "id": "org-child", "name": "Ward",
     "partOf": {"reference": "https://elsewhere.example/fhir/Organization/org-00001"}},
    {"resourceType": "Observation", "id": "obs-group", "status": "final", "code": {"text": "x"},
     "subject": {"reference": "Group/grp-00001/_history/2"},
     "performer": [{"reference": "Organization/no-such-org"}, {"reference": "urn:uuid:pat-00002"}]},
    {"resourceType": "Observation", "id": "obs-hist", "status": "final", "code": {"text": "y"},
     "subject": {"reference": "urn:uuid:pat-00003"},
     "performer": [{"reference": "Organization/org-00002/_history/1"}]},
]
TYPES = ("Organization", "Group", "Practitioner")


@pytest.fixture(scope="module")
def source(tmp_path_factory, sample_dir) -> Path:
    folder = tmp_path_factory.mktemp("source")
    for path in sample_dir.glob("*.ndjson"):
        shutil.copy(path, folder / path.name)
    (folder / "Extra.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in EXTRA))
    return folder


def _source_resources(folder: Path) -> list[dict]:
    """Every resource of a folder of NDJSON files and Bundle documents (gzip or not)."""
    found = []
    for path in sorted(folder.iterdir()):
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        if path.name.endswith((".ndjson", ".ndjson.gz")):
            found += [orjson.loads(line) for line in data.splitlines() if line.strip()]
        elif path.name.endswith((".json", ".json.gz")):
            found += [entry["resource"] for entry in orjson.loads(data)["entry"]]
    return found


def _named(node: object, by: str, instances: set[str]) -> set[str]:
    """The ids of `by` instances that the references in `node` name."""
    names: set[str] = set()
    if isinstance(node, list):
        for item in node:
            names |= _named(item, by, instances)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                value = value.split("/_history/")[0]
                if value.startswith(("urn:uuid:", "urn:oid:")):
                    rid = value.split(":", 2)[2]
                else:
                    *_, kind, rid = ["", *value.split("/")]
                    rid = rid if kind == by else None
                if rid in instances:
                    names.add(rid)
            else:
                names |= _named(value, by, instances)
    return names


def _canonical(body: dict) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _oracle(exported: list[dict], by: str, instances: set[str]) -> tuple[dict[str, Counter], int]:
    """Each instance's block (canonical resources), and how many exported resources are in none."""
    blocks: dict[str, Counter] = defaultdict(Counter)
    alone = 0
    for body in exported:
        owners = _named(body, by, instances) | ({body["id"]} if body["resourceType"] == by else set())
        alone += not owners
        for owner in owners:
            blocks[owner][_canonical(body)] += 1
    return blocks, alone


def _blocks(lines_of_files: list[list[bytes]], by: str) -> dict[str, list[dict]]:
    """Each instance's one block (its resources, parsed) from the output files' lines, checking
    that every file starts with a header, no block is split or repeated, and the instance leads it."""
    found: dict[str, list[dict]] = {}
    for lines in lines_of_files:
        current = None
        for line in lines:
            body = orjson.loads(line)
            if body["resourceType"] == "Parameters":
                [parameter] = body["parameter"]
                assert parameter["name"] == "header"
                kind, rid = parameter["valueReference"]["reference"].split("/")
                assert kind == by and rid not in found, rid
                current = found[rid] = []
                continue
            assert current is not None, "a file starts without a header"
            current.append(body)
    for rid, block in found.items():
        mine = [i for i, body in enumerate(block) if body["resourceType"] == by and body["id"] == rid]
        assert mine == list(range(len(mine))), (rid, mine)  # the instance (and its copies) right after its header
    return found


def _manifest_blocks(manifest: dict, by: str) -> dict[str, list[dict]]:
    assert manifest["outputOrganizedBy"] == by
    files = []
    for entry in manifest["output"]:
        assert "type" not in entry and f"/by-{by}-" in entry["url"], entry
        lines = file_of(entry["url"]).read_bytes().splitlines()
        assert len(lines) == entry["count"]
        files.append(lines)
    return _blocks(files, by)


def _exported(manifest: dict) -> list[dict]:
    return [orjson.loads(line) for e in manifest["output"] for line in file_of(e["url"]).read_bytes().splitlines()]


def _check(blocks: dict[str, list[dict]], oracle: dict[str, Counter]) -> None:
    assert {rid: Counter(map(_canonical, block)) for rid, block in blocks.items()} == oracle


def _notices(manifest: dict, by: str) -> int:
    reason = f"in no block of an organizeOutputBy={by} export"
    return sum(reason.encode() in line
               for e in manifest["error"] for line in file_of(e["url"]).read_bytes().splitlines())


@pytest.mark.parametrize("by", TYPES)
def test_a_system_export_organized_by_a_type_holds_each_instance_and_what_references_it(source, tmp_path, by):
    manifest = run_export(source, tmp_path / "org", parse_get(f"{BASE}/$export?organizeOutputBy={by}"))
    resources = _source_resources(source)
    instances = {r["id"] for r in resources if r["resourceType"] == by}
    oracle, alone = _oracle(resources, by, instances)
    blocks = _manifest_blocks(manifest, by)
    _check(blocks, oracle)
    assert set(blocks) == instances  # at system level every instance is exported, so has a block
    assert _notices(manifest, by) == alone > 0  # the rest: omitted, each named, never silently
    if by == "Organization":  # a resource naming two instances is in both blocks
        assert {rid for rid, block in blocks.items() if any(b["id"] == "claim-two" for b in block)} == {
            "org-00001", "org-00002"}
        assert any(b["id"] == "org-child" for b in blocks["org-00001"])  # partOf, by absolute URL
        assert "no-such-org" not in blocks
    if by == "Group":
        assert [b["id"] for b in blocks["grp-00001"]] == ["grp-00001", "obs-group"]


def test_types_and_filters_choose_what_the_blocks_hold(source, tmp_path):
    query = "_type=Organization,Encounter,Claim&_typeFilter=Encounter%3Fstatus%3Dfinished"
    plain = run_export(source, tmp_path / "plain", parse_get(f"{BASE}/$export?{query}"))
    manifest = run_export(source, tmp_path / "org", parse_get(f"{BASE}/$export?{query}&organizeOutputBy=Organization"))
    instances = {r["id"] for r in _source_resources(source) if r["resourceType"] == "Organization"}
    oracle, alone = _oracle(_exported(plain), "Organization", instances)
    _check(_manifest_blocks(manifest, "Organization"), oracle)
    assert _notices(manifest, "Organization") == alone


def test_a_patient_level_export_organized_by_its_referenced_organizations(source, tmp_path):
    kickoff = f"{BASE}/Patient/$export?_type=Patient,Encounter,Organization"
    plain = run_export(source, tmp_path / "plain", parse_get(kickoff), include_referenced="Organization")
    manifest = run_export(source, tmp_path / "org", parse_get(kickoff + "&organizeOutputBy=Organization"),
                          include_referenced="Organization")
    exported = _exported(plain)
    instances = {r["id"] for r in _source_resources(source) if r["resourceType"] == "Organization"}
    oracle, alone = _oracle(exported, "Organization", instances)
    blocks = _manifest_blocks(manifest, "Organization")
    _check(blocks, oracle)
    assert set(blocks) == {r["id"] for r in exported if r["resourceType"] == "Organization"}
    assert _notices(manifest, "Organization") == alone


def test_a_group_export_organized_by_group_has_the_kicked_off_groups_block(source, tmp_path):
    kickoff = f"{BASE}/Group/grp-00001/$export?_type=Group,Patient,Observation&organizeOutputBy=Group"
    manifest = run_export(source, tmp_path / "org", parse_get(kickoff))
    blocks = _manifest_blocks(manifest, "Group")
    # Members are named by the Group, not naming it; obs-group names it but is in no member's compartment.
    assert list(blocks) == ["grp-00001"] and [b["resourceType"] for b in blocks["grp-00001"]] == ["Group"]
    assert _notices(manifest, "Group") > 0


@pytest.mark.parametrize("query, says", [
    ("/Patient/$export?_type=Patient,Encounter&organizeOutputBy=Organization",
     "Organization is outside the Patient compartment and this Patient-level export holds none"),
    ("/Patient/$export?organizeOutputBy=Group", "a Patient-level export holds no Group"),
    ("/Group/grp-00001/$export?organizeOutputBy=Group", "holds its Group only when _type names Group"),
    ("/$export?_type=Patient,Encounter&organizeOutputBy=Practitioner", "_type leaves out Practitioner"),
])
def test_a_type_the_export_does_not_hold_is_refused_naming_organize_output_by(tmp_path, run_cli, source, query,
                                                                              says):
    request = parse_get(BASE + query)
    assert says in organize_refusal(request, ExportSettings(source=str(source), output=str(tmp_path)))
    job = ExportJob("job", TX, ExportSettings(source=str(source), output=str(tmp_path / "x")))
    with pytest.raises(Refused, match="organizeOutputBy: .*" + re.escape(says)):
        build_plan(request, job)
    for lenient in ((), ("--lenient",)):  # never ignored: the files would be read wrongly
        result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                         "--kickoff", BASE + query, *lenient)
        assert result.code == 2 and "organizeOutputBy" in result.err and says in result.err, result.err


def test_organize_output_by_patient_is_never_refused_for_what_the_export_holds(source, tmp_path):
    for query in ("/Patient/$export?_type=Observation&organizeOutputBy=Patient", "/$export?organizeOutputBy=Patient",
                  "/Patient/$export?_type=Encounter,Organization&organizeOutputBy=Organization"):
        settings = ExportSettings(source=str(source), output=str(tmp_path), include_referenced="Organization")
        assert organize_refusal(parse_get(BASE + query), settings) is None


def test_blocks_of_any_type_go_through_run_files_per_partition(tmp_path):
    """The same bounded spill as Patient blocks: run files by partition, grouped one partition at a time."""
    def resource(resource_type: str, rid: str, index: int, *blocks: str) -> Resource:
        body = {"resourceType": resource_type, "id": rid}
        return Resource(resource_type, orjson.dumps(body), body, index, patients=blocks)

    resources = [resource("Encounter", f"e{i}", i, f"o{i % 5}") for i in range(50)]
    resources += [resource("Organization", f"o{i}", 50 + i, f"o{i}") for i in range(5)]
    resources.append(resource("Organization", "a-ward", 55, "a-ward", "o3"))  # part of o3: in both blocks
    pipeline = TestPipeline(runner=LOCAL_RUNNER)
    _ = pipeline | __import__("apache_beam").Create([ResourceBatch(Origin("x", 0), resources)]) \
        | WriteBlocks(str(tmp_path), 1000, 1 << 20, by="Organization")
    pipeline.run().wait_until_finish()
    runs = list((tmp_path / "organize").rglob("*.run"))
    assert 1 <= len(runs) <= 6  # one per partition the bundle touched, at most one per block
    parts = list(tmp_path.glob("by-Organization.*.ndjson"))
    blocks = _blocks([part.read_bytes().splitlines() for part in parts], "Organization")
    assert {rid: len(block) for rid, block in blocks.items()} == {**{f"o{i}": 11 for i in range(5)}, "o3": 12,
                                                                  "a-ward": 1}
    assert all(block[0] == {"resourceType": "Organization", "id": rid} for rid, block in blocks.items())


def test_synthea_bundles_organized_by_organization_follow_their_urn_uuid_references(tmp_path):
    folder = SHARED_DATA / "synthea-bundles"
    if not folder.is_dir():
        pytest.skip(f"shared Synthea data is absent ({SHARED_DATA})")
    manifest = run_export(folder, tmp_path / "org", parse_get(f"{BASE}/$export?organizeOutputBy=Organization"),
                          source_format="bundle")
    resources = _source_resources(folder)
    instances = {r["id"] for r in resources if r["resourceType"] == "Organization"}
    oracle, alone = _oracle(resources, "Organization", instances)
    blocks = _manifest_blocks(manifest, "Organization")
    _check(blocks, oracle)
    assert _notices(manifest, "Organization") == alone
    # Synthea names Organizations only as urn:uuid: ids, so every non-Organization here came by one.
    assert sum(b["resourceType"] != "Organization" for block in blocks.values() for b in block) > 100


def test_organize_output_by_organization_over_http(source, tmp_path):
    resources = _source_resources(source)
    instances = {r["id"] for r in resources if r["resourceType"] == "Organization"}
    with serve(source, tmp_path / "out", tmp_path / "state") as server, httpx.Client(timeout=30) as client:
        kicked = client.get(server.fhir + "/$export?organizeOutputBy=Organization", headers=FHIR_HEADERS)
        assert kicked.status_code == 202, kicked.text
        manifest = poll(client, kicked.headers["Content-Location"]).json()
        assert manifest["outputOrganizedBy"] == "Organization"
        files = [client.get(e["url"]).content.splitlines() for e in manifest["output"]]
        assert all("type" not in e for e in manifest["output"])
        _check(_blocks(files, "Organization"), _oracle(resources, "Organization", instances)[0])
        for lenient in ("", ", handling=lenient"):
            refused = client.get(server.fhir + "/Patient/$export?_type=Patient,Encounter&organizeOutputBy=Organization",
                                 headers={**FHIR_HEADERS, "Prefer": "respond-async" + lenient})
            assert refused.status_code == 400
            assert refused.json()["issue"][0]["diagnostics"].startswith("organizeOutputBy: Organization is outside")
