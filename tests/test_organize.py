"""organizeOutputBy=Patient: blocks checked against the plain export regrouped by patient, here."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from launcher.kickoff.parser import KickoffRefused, parse_get
from pipelines.options import LOCAL_RUNNER
from tests.columnar_data import file_of, run_export
from tests.conftest import SHARED_DATA
from transforms.fhir.compartment import compartment_patients
from transforms.records import Origin, Resource, ResourceBatch
from transforms.write.organized import WriteBlocks

BASE = "https://ehr.example.org/fhir"


def _blocks(manifest: dict) -> dict[str, list[list[bytes]]]:
    """Each patient's blocks, as lists of lines, checking headers, counts and that no entry names a type."""
    assert manifest["outputOrganizedBy"] == "Patient"
    found: dict[str, list[list[bytes]]] = defaultdict(list)
    for entry in manifest["output"]:
        assert "type" not in entry, entry
        lines = file_of(entry["url"]).read_bytes().splitlines()
        assert len(lines) == entry["count"], entry
        current = None
        for line in lines:
            body = orjson.loads(line)
            if body["resourceType"] == "Parameters":
                [parameter] = body["parameter"]
                assert parameter["name"] == "header" and set(parameter) == {"name", "valueReference"}
                patient = parameter["valueReference"]["reference"].removeprefix("Patient/")
                current = []
                found[patient].append(current)
                continue
            assert current is not None, f"{entry['url']} starts without a header"
            current.append(line)
    return found


def _lines(manifest: dict) -> list[tuple[dict, bytes]]:
    return [(orjson.loads(line), line) for entry in manifest["output"]
            for line in file_of(entry["url"]).read_bytes().splitlines()]


def _oracle(manifest: dict, whole: dict) -> dict[str, Counter]:
    """A plain export regrouped by patient: each patient's compartment's lines, placed by the same
    export without `_elements` (`whole`), whose resources keep every reference."""
    patients = {(body["resourceType"], body["id"]): compartment_patients(body["resourceType"], body)
                for body, _ in _lines(whole) if body["resourceType"] != "Group"}
    grouped: dict[str, Counter] = defaultdict(Counter)
    for body, line in _lines(manifest):
        for patient in patients.get((body["resourceType"], body["id"]), ()):
            grouped[patient][line] += 1
    return grouped


def _source_patients(folder: Path) -> set[str]:
    """The ids of the source folder's Patients (NDJSON, gzip or not)."""
    import gzip

    ids = set()
    for path in [*folder.glob("Patient*.ndjson"), *folder.glob("Patient*.ndjson.gz")]:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        ids |= {orjson.loads(line)["id"] for line in data.splitlines() if line.strip()}
    return ids


def _check(organized: dict, plain: dict, covered: set, whole: dict | None = None) -> None:
    blocks = _blocks(organized)
    assert all(len(parts) == 1 for parts in blocks.values()), "a patient's block is split or repeated"
    oracle = _oracle(plain, whole or plain)
    oracle = {p: lines for p, lines in oracle.items() if p in covered}
    assert {p: Counter(parts[0]) for p, parts in blocks.items()} == oracle
    for patient, [block] in blocks.items():  # the Patient first, when exported
        types = [orjson.loads(line)["resourceType"] for line in block]
        assert "Patient" not in types[1:], patient
        if "Patient" in types:
            assert orjson.loads(block[0])["id"] == patient


@pytest.mark.parametrize("query", ["", "?_type=Patient,Observation,Encounter&_since=2019-06-01T00:00:00Z",
                                   "?_typeFilter=Observation%3Fstatus%3Dfinal&_elements=Observation.code,Encounter.period"])
def test_a_system_export_organized_by_patient_is_the_plain_export_regrouped(sample_dir, tmp_path, query):
    plain = run_export(sample_dir, tmp_path / "plain", parse_get(f"{BASE}/$export{query}"))
    organized = run_export(sample_dir, tmp_path / "org", parse_get(
        f"{BASE}/$export{query}{'&' if query else '?'}organizeOutputBy=Patient"))
    whole = plain
    if "_elements" in query:
        whole = run_export(sample_dir, tmp_path / "whole", parse_get(f"{BASE}/$export{query.split('&_elements')[0]}"))
    _check(organized, plain, _source_patients(sample_dir), whole=whole)
    # Resources in no patient's compartment are notices, never silently gone.
    placed = {line for blocks in _blocks(organized).values() for block in blocks for line in block}
    alone = [line for e in plain["output"] for line in file_of(e["url"]).read_bytes().splitlines()
             if line not in placed]
    notices = sum(e["count"] for e in organized["error"]) - sum(e["count"] for e in plain["error"])
    assert notices == len(alone)


def test_a_group_export_has_blocks_only_for_its_members(sample_dir, tmp_path):
    kickoff = f"{BASE}/Group/grp-00001/$export?_type=Patient,Condition,Observation"
    plain = run_export(sample_dir, tmp_path / "plain", parse_get(kickoff))
    organized = run_export(sample_dir, tmp_path / "org", parse_get(kickoff + "&organizeOutputBy=Patient"))
    members = {orjson.loads(line)["id"] for e in plain["output"] if e["type"] == "Patient"
               for line in file_of(e["url"]).read_bytes().splitlines()}
    assert set(_blocks(organized)) == members
    _check(organized, plain, covered=members)


def test_a_block_is_never_split_a_large_one_gets_a_part_of_its_own(sample_dir, tmp_path):
    request = parse_get(f"{BASE}/$export?organizeOutputBy=Patient")
    organized = run_export(sample_dir, tmp_path / "org", request, max_lines_per_part=6)
    _check(organized, run_export(sample_dir, tmp_path / "plain", parse_get(f"{BASE}/$export")),
           _source_patients(sample_dir))
    blocks = _blocks(organized)
    assert all(len(parts) == 1 for parts in blocks.values())
    for entry in organized["output"]:
        lines = file_of(entry["url"]).read_bytes().splitlines()
        headers = sum(line.startswith(b'{"resourceType":"Parameters"') for line in lines)
        assert entry["count"] <= 6 or headers == 1, entry  # over the limit only as one block alone
    assert any(entry["count"] > 6 for entry in organized["output"])


def test_spilled_run_files_are_written_per_partition(tmp_path):
    """The grouping reads run files from disk: one per partition a bundle touched."""
    resources = [Resource("Observation", b'{"id":"o%d"}' % i, None, i, patients=(f"p{i % 5}",)) for i in range(50)]
    pipeline = TestPipeline(runner=LOCAL_RUNNER)
    _ = pipeline | __import__("apache_beam").Create([ResourceBatch(Origin("x", 0), resources)]) \
        | WriteBlocks(str(tmp_path), 1000, 1 << 20)
    pipeline.run().wait_until_finish()
    runs = list((tmp_path / "organize").rglob("*.run"))
    assert 1 <= len(runs) <= 5
    parts = list(tmp_path.glob("by-Patient.*.ndjson"))
    lines = [line for part in parts for line in part.read_bytes().splitlines()]
    assert len(lines) == 55 and sum(b"header" in line for line in lines) == 5


@pytest.mark.parametrize("query, says", [
    ("organizeOutputBy=Encounter", "organizeOutputBy: 'Encounter' is not supported; use Patient"),
    ("organizeOutputBy=Patient&_outputFormat=application/vnd.apache.parquet",
     "organizeOutputBy: needs NDJSON output"),
])
def test_unsupported_organizations_are_refused_naming_the_parameter(query, says):
    with pytest.raises(KickoffRefused, match=says):
        parse_get(f"{BASE}/$export?{query}")
    with pytest.raises(KickoffRefused, match=says):
        parse_get(f"{BASE}/$export?{query}", strict=False)  # never ignored


def test_synthea_organized_by_patient_is_synthea_regrouped(tmp_path):
    folder = SHARED_DATA / "synthea-100"
    if not folder.is_dir():
        pytest.skip(f"shared Synthea data is absent ({SHARED_DATA})")
    plain = run_export(folder, tmp_path / "plain", parse_get(f"{BASE}/$export"))
    organized = run_export(folder, tmp_path / "org", parse_get(f"{BASE}/$export?organizeOutputBy=Patient"),
                           max_lines_per_part=5000)
    _check(organized, plain, _source_patients(folder))
    assert len(_blocks(organized)) == sum(e["count"] for e in plain["output"] if e["type"] == "Patient")
    assert Path(file_of(organized["output"][0]["url"])).exists()
