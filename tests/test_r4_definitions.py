"""The committed FHIR R4 definitions match the official hl7.fhir.r4.core package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import derive_r4_script, r4_package_tgz
from transforms.fhir.r4 import RESOURCE_TYPES, is_resource_type

COMMITTED_DIR = Path(__file__).resolve().parent.parent / "transforms" / "fhir" / "r4"
derive_r4 = derive_r4_script()


@pytest.fixture(scope="module")
def package_tgz() -> Path:
    return r4_package_tgz()


def test_derivation_reproduces_committed_files(package_tgz, tmp_path):
    assert derive_r4.main(["--package", str(package_tgz), "--out", str(tmp_path)]) == 0
    for name in derive_r4.DERIVATIONS:
        fresh = (tmp_path / name).read_bytes()
        committed = (COMMITTED_DIR / name).read_bytes()
        assert fresh == committed, (
            f"{name} is stale; run `python scripts/derive_r4.py` to regenerate"
        )


def test_check_mode_passes_on_committed_files(package_tgz):
    assert derive_r4.main(["--package", str(package_tgz), "--check"]) == 0


def test_check_mode_fails_on_stale_files(package_tgz, tmp_path):
    (tmp_path / "resource_types.json").write_text("{}\n")
    assert (
        derive_r4.main(
            ["--package", str(package_tgz), "--out", str(tmp_path), "--check"]
        )
        == 1
    )


def test_resource_types():
    for name in ("Patient", "Observation", "Group", "Bundle", "OperationOutcome"):
        assert name in RESOURCE_TYPES
        assert is_resource_type(name)
    for name in ("Resource", "DomainResource", "Element", "HumanName"):
        assert name not in RESOURCE_TYPES
        assert not is_resource_type(name)
    assert len(RESOURCE_TYPES) == 146
    assert isinstance(RESOURCE_TYPES, frozenset)


def test_elements_from_snapshots():
    types = json.loads((COMMITTED_DIR / "elements.json").read_text())["resourceTypes"]
    assert set(types) == RESOURCE_TYPES
    observation, patient = types["Observation"], types["Patient"]
    # Inherited from Resource/DomainResource: the snapshot holds them under Observation.
    assert {"id", "meta", "implicitRules", "modifierExtension", "status", "code", "value[x]"} <= set(
        observation["elements"]
    )
    assert observation["mandatory"] == ["code", "implicitRules", "modifierExtension", "status"]
    assert "Quantity" in observation["choices"]["value[x]"]
    assert "string" in observation["choices"]["value[x]"]
    # In R4 no Patient element has min >= 1; active, deceased[x] and link are modifiers.
    assert patient["mandatory"] == ["active", "deceased[x]", "implicitRules", "link", "modifierExtension"]
    assert patient["choices"] == {"deceased[x]": ["boolean", "dateTime"], "multipleBirth[x]": ["boolean", "integer"]}


def test_search_parameters_per_type():
    data = json.loads((COMMITTED_DIR / "search_parameters.json").read_text())
    types = data["resourceTypes"]
    observation, patient = types["Observation"], types["Patient"]
    assert observation["code"] == {"type": "token", "expression": "Observation.code"}
    assert observation["subject"]["type"] == "reference"
    assert observation["subject"]["target"] == ["Device", "Group", "Location", "Patient"]
    assert observation["date"] == {"type": "date", "expression": "Observation.effective"}
    assert observation["patient"]["expression"] == "Observation.subject.where(resolve() is Patient)"
    assert patient["name"] == {"type": "string", "expression": "Patient.name"}
    # A union over many bases keeps only this type's branches.
    assert types["Condition"]["code"] == {"type": "token", "expression": "Condition.code"}
    assert set(types["Resource"]) == {"_id", "_lastUpdated", "_profile", "_security", "_source", "_tag"}
    assert types["Resource"]["_lastUpdated"] == {"type": "date", "expression": "Resource.meta.lastUpdated"}
    assert data["choices"]["Observation.effective"] == ["DateTime", "Instant", "Period", "Timing"]
    assert set(types) - {"Resource"} <= RESOURCE_TYPES
