"""`deleted[]` from Avro and Parquet sources: which deletions an incremental export lists, and how."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import pytest

from launcher.kickoff.parser import parse_get
from tests.columnar_data import exported, file_of, record_row, run_export, write_rows

BASE = "https://ehr.example.org/fhir"
SINCE = "2024-01-01T00:00:00Z"
BEFORE, AFTER = dt.datetime(2023, 6, 1, tzinfo=dt.timezone.utc), dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)


def _obs(rid: str, patient: str) -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{patient}"}}


def _rows() -> list[dict]:
    return [
        record_row("Patient", "a", {"resourceType": "Patient", "id": "a"}, AFTER),
        record_row("Patient", "b", {"resourceType": "Patient", "id": "b"}, AFTER),
        record_row("Observation", "live", _obs("live", "a"), AFTER),
        # deleted after _since: the deleted version's body is kept, or not
        record_row("Observation", "gone-a", _obs("gone-a", "a"), AFTER, deleted=True),
        record_row("Observation", "gone-b", _obs("gone-b", "b"), AFTER, deleted=True),
        record_row("Observation", "gone-nobody", "", AFTER, deleted=True),
        record_row("Patient", "gone-patient", "", AFTER, deleted=True),
        record_row("Condition", "gone-condition", {"resourceType": "Condition", "id": "gone-condition",
                                                   "subject": {"reference": "Patient/a"}}, AFTER, deleted=True),
        # deleted before _since: the previous run listed it already
        record_row("Observation", "gone-early", _obs("gone-early", "a"), BEFORE, deleted=True),
    ]


@pytest.fixture(params=["avro", "parquet"])
def source(request, tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    write_rows(request.param, folder / f"data.{request.param}", _rows())
    return folder


def _export(source: Path, out: Path, kickoff: str, patients: tuple[str, ...] = ()) -> dict:
    return run_export(source, out, parse_get(kickoff).model_copy(update={"patients": patients}))


def _deleted(manifest: dict) -> list[dict]:
    """Every deletion Bundle of the manifest's `deleted[]`, checking each entry's type and count."""
    bundles = []
    for entry in manifest["deleted"]:
        assert entry["type"] == "Bundle" and file_of(entry["url"]).parent.name == "deleted", entry
        lines = file_of(entry["url"]).read_bytes().splitlines()
        assert len(lines) == entry["count"], entry
        bundles += [orjson.loads(line) for line in lines]
    return bundles


def _urls(bundles: list[dict]) -> set[str]:
    for bundle in bundles:
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        assert [set(e) for e in bundle["entry"]] == [{"request"}] and bundle["entry"][0]["request"]["method"] == "DELETE"
    return {bundle["entry"][0]["request"]["url"] for bundle in bundles}


def test_an_incremental_system_export_lists_what_was_deleted_since(source, tmp_path):
    manifest = _export(source, tmp_path / "out", f"{BASE}/$export?_since={SINCE}")
    bundles = _deleted(manifest)
    assert _urls(bundles) == {"Observation/gone-a", "Observation/gone-b", "Observation/gone-nobody",
                              "Patient/gone-patient", "Condition/gone-condition"}
    assert all(b["meta"]["lastUpdated"] == "2024-06-01T00:00:00Z" for b in bundles), bundles
    exported_ids = {orjson.loads(line)["id"] for lines in exported(manifest).values() for line in lines}
    assert exported_ids == {"a", "b", "live"} and manifest["error"] == []


def test_without_since_nothing_is_listed_and_nothing_deleted_exported(source, tmp_path):
    manifest = _export(source, tmp_path / "out", f"{BASE}/$export")
    assert manifest["deleted"] == [] and not (tmp_path / "out" / "default" / "job" / "deleted").exists()
    assert sum(e["count"] for e in manifest["output"]) == 3


def test_type_narrows_the_deletions(source, tmp_path):
    manifest = _export(source, tmp_path / "out", f"{BASE}/$export?_since={SINCE}&_type=Patient,Condition")
    assert _urls(_deleted(manifest)) == {"Patient/gone-patient", "Condition/gone-condition"}


def test_a_type_filter_does_not_hide_a_deletion_of_its_type(source, tmp_path):
    """A deleted version cannot be searched reliably; every deletion of the filtered type is listed."""
    manifest = _export(source, tmp_path / "out",
                       f"{BASE}/$export?_since={SINCE}&_type=Observation&_typeFilter=Observation%3Fstatus%3Damended")
    assert sum(e["count"] for e in manifest["output"]) == 0
    assert _urls(_deleted(manifest)) == {"Observation/gone-a", "Observation/gone-b", "Observation/gone-nobody"}


def test_a_patient_export_lists_only_deletions_it_can_place_in_the_compartment(source, tmp_path):
    manifest = _export(source, tmp_path / "out", f"{BASE}/Patient/$export?_since={SINCE}", ("a",))
    # gone-b is patient b's; gone-nobody kept no body, so it cannot be placed; gone-patient is not a
    assert _urls(_deleted(manifest)) == {"Observation/gone-a", "Condition/gone-condition"}


def test_a_deleted_patient_in_scope_is_listed_by_its_id(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_rows("parquet", folder / "d.parquet", [
        record_row("Patient", "a", {"resourceType": "Patient", "id": "a"}, AFTER),
        record_row("Patient", "z", "", AFTER, deleted=True),
    ])
    manifest = _export(folder, tmp_path / "out", f"{BASE}/Patient/$export?_since={SINCE}")
    assert _urls(_deleted(manifest)) == set()  # z is no longer a patient of the source: not covered
    manifest = _export(folder, tmp_path / "out2", f"{BASE}/$export?_since={SINCE}&_type=Patient")
    assert _urls(_deleted(manifest)) == {"Patient/z"}


def test_a_deletion_without_an_id_or_type_is_an_error_naming_the_record(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_rows("parquet", folder / "d.parquet", [
        record_row("Observation", "", "", AFTER, deleted=True),
        record_row("NotAType", "x1", "", AFTER, deleted=True),
        record_row("Observation", "fine", "", AFTER, deleted=True),
    ])
    manifest = _export(folder, tmp_path / "out", f"{BASE}/$export?_since={SINCE}")
    assert _urls(_deleted(manifest)) == {"Observation/fine"}
    [entry] = manifest["error"]
    outcomes = [orjson.loads(line) for line in file_of(entry["url"]).read_bytes().splitlines()]
    texts = [o["issue"][0]["diagnostics"] for o in outcomes]
    assert texts == ["d.parquet record 0: deleted record: has no valid id; not listed in deleted[]; not exported",
                     "d.parquet record 1: deleted record: resourceType is not an R4 resource type;"
                     " not listed in deleted[]; not exported"], texts
    assert not any("NotAType" in t for t in texts)


def test_deleted_files_are_ndjson_bundles_even_for_parquet_output(source, tmp_path):
    manifest = _export(source, tmp_path / "out", f"{BASE}/$export?_since={SINCE}&_outputFormat=application/vnd.apache.parquet")
    assert all(e["url"].endswith(".ndjson") for e in manifest["deleted"])
    assert all(e["url"].endswith(".parquet") for e in manifest["output"])
    assert len(_deleted(manifest)) == 5


def test_deleted_parts_roll_over_at_the_line_limit(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_rows("avro", folder / "d.avro", [record_row("Observation", f"o{i}", "", AFTER, deleted=True)
                                            for i in range(7)])
    manifest = run_export(folder, tmp_path / "out", parse_get(f"{BASE}/$export?_since={SINCE}"), max_lines_per_part=3)
    assert sorted(e["count"] for e in manifest["deleted"]) == [1, 3, 3]
    assert len(_urls(_deleted(manifest))) == 7
