"""Tests for launcher.tools.sample_data: determinism, file layout, references and realism knobs."""
import re
from pathlib import Path

import orjson
import pytest

from launcher.tools.sample_data import RESOURCES_PER_PATIENT, generate, iter_resources

PATIENTS = 300
INSTANT = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
REF_TYPES = ("Patient", "Practitioner", "Organization", "Encounter")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    counts = generate(out, PATIENTS, seed=7)
    return out, counts


def _load(out: Path) -> dict[str, list[dict]]:
    return {p.stem: [orjson.loads(line) for line in p.read_bytes().splitlines()]
            for p in sorted(out.glob("*.ndjson"))}


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.ndjson"))}


def _walk_refs(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "reference" and isinstance(v, str):
                yield v
            else:
                yield from _walk_refs(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_refs(v)


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert generate(a, 60, seed=3) == generate(b, 60, seed=3)
    generate(c, 60, seed=4)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert fa.keys() == fc.keys()
    assert fa != fc


def test_counts_match_lines_types_and_unique_ids(generated):
    out, counts = generated
    data = _load(out)
    assert set(data) == set(counts)
    assert list(counts) == sorted(counts)
    for rtype, resources in data.items():
        assert counts[rtype] == len(resources)
        assert all(r["resourceType"] == rtype for r in resources)
        ids = [r["id"] for r in resources]
        assert len(set(ids)) == len(ids)
    assert counts["Patient"] == PATIENTS
    assert counts["Group"] == PATIENTS // 25
    assert counts["Organization"] >= 2 and counts["Practitioner"] >= 2
    for rtype in ("Observation", "Encounter", "Condition", "MedicationRequest"):
        assert counts[rtype] > 0
    per_patient = sum(counts.values()) / PATIENTS
    assert abs(per_patient - RESOURCES_PER_PATIENT) / RESOURCES_PER_PATIENT < 0.05


def test_all_references_resolve(generated):
    out, _ = generated
    data = _load(out)
    known = {f"{t}/{r['id']}" for t in REF_TYPES for r in data.get(t, [])}
    seen = set()
    for resources in data.values():
        for res in resources:
            for ref in _walk_refs(res):
                seen.add(ref.split("/", 1)[0])
                assert ref in known, ref
    assert {"Patient", "Practitioner", "Organization", "Encounter"} <= seen
    for pat in data["Patient"]:
        assert pat["generalPractitioner"][0]["reference"].startswith("Practitioner/")
        assert pat["managingOrganization"]["reference"].startswith("Organization/")
    grouped = [m["entity"]["reference"] for g in data["Group"] for m in g["member"]]
    assert len(grouped) == len(set(grouped)) == PATIENTS


def test_meta_and_group_realism(generated):
    out, _ = generated
    data = _load(out)
    everything = [r for rs in data.values() for r in rs]
    stamps = [r["meta"]["lastUpdated"] for r in everything if "meta" in r]
    assert all(INSTANT.match(s) for s in stamps), [s for s in stamps if not INSTANT.match(s)][:3]
    assert len({s[:4] for s in stamps}) > 5
    assert any(s.endswith("Z") for s in stamps)
    assert any(not s.endswith("Z") for s in stamps)
    assert any("." not in s for s in stamps)
    assert 0 < len(everything) - len(stamps) < 0.05 * len(everything)
    members = [m for g in data["Group"] for m in g["member"]]
    assert all(g["type"] == "person" and g["actual"] is True for g in data["Group"])
    assert any(m.get("inactive") is True for m in members)
    assert any("end" in m.get("period", {}) for m in members)


def test_resource_shapes(generated):
    out, _ = generated
    data = _load(out)
    obs = data["Observation"][0]
    for key in ("status", "category", "code", "subject", "encounter", "performer",
                "effectiveDateTime", "valueQuantity"):
        assert key in obs
    assert obs["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    prac = data["Practitioner"][0]
    assert prac["identifier"][0]["system"] == "http://hl7.org/fhir/sid/us-npi"
    assert prac["name"]
    pat = data["Patient"][0]
    for key in ("identifier", "name", "gender", "birthDate", "address"):
        assert key in pat
    for cond in data["Condition"]:
        assert {"subject", "encounter", "onsetDateTime", "clinicalStatus",
                "verificationStatus"} <= cond.keys()
    for med in data["MedicationRequest"]:
        assert {"subject", "requester", "authoredOn", "medicationCodeableConcept",
                "intent", "status"} <= med.keys()
    for enc in data["Encounter"]:
        assert {"subject", "participant", "serviceProvider", "period"} <= enc.keys()


def test_iter_resources_matches_files(generated):
    out, counts = generated
    lines = {t: iter(p.read_bytes().splitlines()) for t, p in
             ((p.stem, p) for p in out.glob("*.ndjson"))}
    n = 0
    for res in iter_resources(PATIENTS, seed=7):
        assert orjson.dumps(res) == next(lines[res["resourceType"]])
        n += 1
    assert n == sum(counts.values())
    assert all(next(it, None) is None for it in lines.values())


def test_iter_resources_is_lazy_and_rejects_negative():
    gen = iter_resources(10**9)
    assert next(gen)["resourceType"] == "Organization"
    with pytest.raises(ValueError):
        list(iter_resources(-1))


def test_zero_patients(tmp_path):
    counts = generate(tmp_path, 0)
    assert counts["Patient"] == 0 and counts["Group"] == 1
    assert (tmp_path / "Patient.ndjson").read_bytes() == b""
