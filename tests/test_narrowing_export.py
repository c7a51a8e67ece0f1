"""`_typeFilter` and `_elements` end to end through the CLI, at every level."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.helpers import BASE, SYNTHEA, exported, keys, needs_shared, read_ndjson
from transforms.fhir.elements import SUBSETTED_TAG

LOINC_HEIGHT = "http://loinc.org|8302-2"
LOINC_WEIGHT = "http://loinc.org|29463-7"


def has_coding(resource: dict, token: str) -> bool:
    system, code = token.split("|")
    return any(c.get("system") == system and c.get("code") == code for c in resource.get("code", {}).get("coding", []))


def type_filter(*queries: str) -> str:
    return "&".join(f"_typeFilter={quote(q, safe='')}" for q in queries)


@needs_shared
def test_synthea_type_filter_keeps_exactly_the_matching_observations(run_cli, tmp_path):
    url = f"{BASE}/$export?_type=Observation,Patient&{type_filter('Observation?code=' + LOINC_HEIGHT)}"
    result = run_cli("export", "--source", str(SYNTHEA), "--output", str(tmp_path / "out"), "--kickoff", url)
    assert result.code == 0, result.err
    got = exported(result.manifest())
    source = read_ndjson(SYNTHEA)
    expected = [r for r in source if r["resourceType"] == "Observation" and has_coding(r, LOINC_HEIGHT)]
    expected += [r for r in source if r["resourceType"] == "Patient"]  # Patient has no filter: all of them
    assert keys(got) == keys(expected)
    assert len([r for r in got if r["resourceType"] == "Observation"]) == 968


@needs_shared
def test_synthea_two_filters_on_one_type_give_the_union(run_cli, tmp_path):
    filters = type_filter(f"Observation?code={LOINC_HEIGHT}", f"Observation?code={LOINC_WEIGHT}")
    result = run_cli("export", "--source", str(SYNTHEA), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/$export?_type=Observation&{filters}")
    assert result.code == 0, result.err
    source = read_ndjson(SYNTHEA)
    expected = [r for r in source if r["resourceType"] == "Observation"
                and (has_coding(r, LOINC_HEIGHT) or has_coding(r, LOINC_WEIGHT))]
    assert keys(exported(result.manifest())) == keys(expected)


@pytest.mark.parametrize("level", ["$export", "Patient/$export", "Group/grp-00001/$export"])
def test_type_filter_applies_at_every_level(run_cli, sample_dir, tmp_path, level):
    plain = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "a"),
                    "--kickoff", f"{BASE}/{level}?_type=Condition,Patient")
    filtered = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "b"),
                       "--kickoff", f"{BASE}/{level}?_type=Condition,Patient&{type_filter('Condition?clinical-status=active')}")
    assert plain.code == 0 and filtered.code == 0, (plain.err, filtered.err)
    everything = exported(plain.manifest())
    active = [r for r in everything if r["resourceType"] == "Patient" or any(
        c.get("code") == "active" for c in r.get("clinicalStatus", {}).get("coding", []))]
    assert keys(exported(filtered.manifest())) == keys(active)
    assert len(active) < len(everything)


def test_elements_subsets_with_one_tag_and_keeps_untouched_bytes(run_cli, sample_dir, tmp_path):
    result = run_cli("export", "--source", str(sample_dir), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/$export?_type=Observation,Patient&_elements=Observation.code,id")
    assert result.code == 0, result.err
    for resource in exported(result.manifest()):
        tags = [t for t in resource["meta"].get("tag", []) if t.get("code") == "SUBSETTED"]
        assert tags == [SUBSETTED_TAG]
        if resource["resourceType"] == "Observation":
            assert set(resource) <= {"resourceType", "id", "meta", "code", "status"}
            assert {"code", "status"} <= set(resource)
        else:
            assert "name" not in resource and "birthDate" not in resource


def test_elements_leaves_resources_it_does_not_change_byte_identical(run_cli, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    untouched = b'{"resourceType": "Observation", "id": "o1",   "status": "final", "code": {"text": "x"}}'
    changed = b'{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"y"},"valueString":"v"}'
    (source / "obs.ndjson").write_bytes(untouched + b"\n" + changed + b"\n")
    result = run_cli("export", "--source", str(source), "--output", str(tmp_path / "out"),
                     "--kickoff", f"{BASE}/$export?_elements=Observation.code")
    assert result.code == 0, result.err
    [entry] = result.manifest()["output"]
    lines = open(entry["url"].removeprefix("file://"), "rb").read().splitlines()
    assert lines[0] == untouched
    second = json.loads(lines[1])
    assert "valueString" not in second and second["meta"]["tag"] == [SUBSETTED_TAG]
