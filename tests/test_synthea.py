"""Exports of the real Synthea data in ../shared/data, compared with an independent reading."""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from tests.conftest import SHARED_DATA
from transforms.write.attachment_step import EXTERNAL_NOTE

SYNTHEA = SHARED_DATA / "synthea-100"
BUNDLES = SHARED_DATA / "synthea-bundles"
if not SYNTHEA.is_dir() or not BUNDLES.is_dir():
    pytest.skip(f"shared Synthea data is absent ({SHARED_DATA})", allow_module_level=True)

# As published with the data (shared/data/README.md).
SYNTHEA_COUNTS = {
    "Observation": 16315, "Claim": 6083, "Encounter": 3697, "ExplanationOfBenefit": 3697,
    "MedicationRequest": 2386, "Procedure": 2351, "Immunization": 1287, "DiagnosticReport": 897,
    "Condition": 639, "CarePlan": 278, "CareTeam": 278, "Organization": 203, "Practitioner": 203,
    "Patient": 100, "AllergyIntolerance": 38, "ImagingStudy": 16, "Group": 8, "Device": 4,
    "DocumentReference": 3,
}


def _ndjson_ids(folder: Path) -> dict[str, Counter]:
    ids: dict[str, Counter] = defaultdict(Counter)
    for path in sorted(folder.glob("*.ndjson.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    resource = json.loads(line)
                    ids[resource["resourceType"]][resource["id"]] += 1
    return dict(ids)


def _bundle_entry_ids(folder: Path) -> dict[str, Counter]:
    ids: dict[str, Counter] = defaultdict(Counter)
    for path in sorted(folder.glob("*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            bundle = json.load(f)
        assert bundle["type"] == "transaction"
        for entry in bundle["entry"]:
            ids[entry["resource"]["resourceType"]][entry["resource"]["id"]] += 1
    return dict(ids)


def _exported_ids(manifest: dict) -> dict[str, Counter]:
    ids: dict[str, Counter] = defaultdict(Counter)
    for entry in manifest["output"]:
        path = Path(unquote(urlparse(entry["url"]).path))
        lines = path.read_bytes().splitlines()
        assert len(lines) == entry["count"]
        for line in lines:
            resource = json.loads(line)
            assert resource["resourceType"] == entry["type"]
            ids[entry["type"]][resource["id"]] += 1
    return dict(ids)


def _export(run_cli, source: Path, output: Path) -> dict:
    result = run_cli("export", "--source", str(source), "--output", str(output))
    assert result.code == 0, result.err
    return result.manifest()


def test_synthea_100_system_export_keeps_every_resource_once(run_cli, tmp_path):
    manifest = _export(run_cli, SYNTHEA, tmp_path / "out")
    counts = Counter()
    for entry in manifest["output"]:
        counts[entry["type"]] += entry["count"]
    assert dict(counts) == SYNTHEA_COUNTS
    assert len(counts) == 19 and sum(counts.values()) == 38_483
    # No bad record; only the once-per-job note that Synthea's absolute attachment URLs are not served here.
    assert [e["count"] for e in manifest["error"]] == [1]
    [note] = _lines_of(manifest["error"][0])
    assert note["issue"][0]["severity"] == "information" and EXTERNAL_NOTE in note["issue"][0]["diagnostics"]
    source = _ndjson_ids(SYNTHEA)
    assert {t: sum(c.values()) for t, c in source.items()} == SYNTHEA_COUNTS  # the reading itself
    assert _exported_ids(manifest) == source


def test_synthea_bundles_export_every_entry_resource_once(run_cli, tmp_path):
    manifest = _export(run_cli, BUNDLES, tmp_path / "out")
    source = _bundle_entry_ids(BUNDLES)
    assert manifest["error"] == []
    assert _exported_ids(manifest) == source
    assert sum(e["count"] for e in manifest["output"]) == sum(sum(c.values()) for c in source.values())


def _lines_of(entry: dict) -> list[dict]:
    with open(unquote(urlparse(entry["url"]).path), "rb") as f:
        return [json.loads(line) for line in f]
