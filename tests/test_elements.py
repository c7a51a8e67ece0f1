"""Tests for transforms.fhir.elements: `_elements` parsing, subsetting and the Beam step."""

import gzip
import pickle

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import SHARED_DATA
from transforms.fhir.elements import (
    SUBSETTED_TAG,
    ElementsRefused,
    InvalidMeta,
    parse_elements,
)
from transforms.records import Origin, Resource, ResourceBatch
from transforms.select.subset_elements import SubsetElements, _SubsetFn

SYNTHEA_OBSERVATIONS = SHARED_DATA / "synthea-100" / "Observation.ndjson.gz"
OTHER_TAG = {"system": "http://example.org/tags", "code": "keep-me"}


def _observation(**extra) -> dict:
    body = {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"lastUpdated": "2020-01-01T00:00:00Z"},
        "status": "final",
        "_status": {"extension": [{"url": "http://example.org/x", "valueString": "s"}]},
        "category": [{"text": "vital-signs"}],
        "code": {"text": "Body Height"},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2010-09-06T15:38:27-04:00",
        "valueQuantity": {"value": 134.8, "unit": "cm"},
        "note": [{"text": "n"}],
    }
    body.update(extra)
    return body


def _patient(**extra) -> dict:
    body = {"resourceType": "Patient", "id": "p1", "active": True, "name": [{"family": "F"}], "gender": "female"}
    body.update(extra)
    return body


def _resource(body: dict, index: int = 0, raw: bytes | None = None) -> Resource:
    return Resource(body["resourceType"], raw if raw is not None else orjson.dumps(body), body, index)


def _tags(body: dict) -> list:
    return body["meta"]["tag"]


# --- subsetting ---------------------------------------------------------------------


def test_keeps_only_listed_always_kept_and_mandatory_elements():
    raw, body = parse_elements("Observation.subject").subset("Observation", _observation())
    # status and code are mandatory (min 1) in R4; the rest of the unlisted elements go.
    assert list(body) == ["resourceType", "id", "meta", "status", "_status", "code", "subject"]
    assert orjson.loads(raw) == body
    assert body["meta"]["lastUpdated"] == "2020-01-01T00:00:00Z"


def test_modifier_elements_are_kept_even_when_optional():
    spec = parse_elements("Patient.gender")
    extension = [{"url": "http://example.org/m", "valueBoolean": True}]
    _, body = spec.subset("Patient", _patient(implicitRules="http://x", modifierExtension=extension,
                                              deceasedBoolean=False, birthDate="1970-01-01"))
    assert set(body) == {"resourceType", "id", "meta", "active", "gender", "implicitRules",
                         "modifierExtension", "deceasedBoolean"}


def test_choice_element_covers_each_of_its_real_types_only():
    spec = parse_elements("Observation.value")
    _, body = spec.subset("Observation", _observation(_valueString={"id": "v"}, valueFoo=1))
    assert "valueQuantity" in body and "_valueString" in body
    assert "valueFoo" not in body  # Foo is not a type code of Observation.value[x]
    assert "effectiveDateTime" not in body
    assert parse_elements("Observation.value[x]").allowed_keys("Observation") == spec.allowed_keys("Observation")


def test_bare_entry_applies_to_every_type_and_typed_entry_to_its_own():
    spec = parse_elements("subject,Observation.note")
    _, observation = spec.subset("Observation", _observation())
    assert {"subject", "note"} <= set(observation) and "category" not in observation
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "note": [{"text": "n"}], "onsetDateTime": "2020-01-01"}
    _, condition = spec.subset("Condition", condition)
    assert set(condition) == {"resourceType", "id", "meta", "subject"}
    # Patient has no `subject`: a bare entry still subsets it, to its mandatory elements.
    _, patient = spec.subset("Patient", _patient())
    assert set(patient) == {"resourceType", "id", "meta", "active"}


def test_types_not_named_keep_only_their_mandatory_elements():
    # IG v3: "the server SHOULD omit unlisted, non-mandatory elements from the resources returned".
    spec = parse_elements("Observation.status")
    assert spec.allowed_keys("Patient") == {"resourceType", "id", "meta", "active", "deceasedBoolean",
                                            "deceasedDateTime", "_deceasedDateTime", "_deceasedBoolean",
                                            "_active", "implicitRules", "_implicitRules", "link",
                                            "modifierExtension", "_link", "_modifierExtension"}
    _, body = spec.subset("Patient", _patient())
    assert set(body) <= spec.allowed_keys("Patient") and _tags(body) == [SUBSETTED_TAG]


def test_exactly_one_subsetted_tag_and_other_tags_kept():
    spec = parse_elements("Observation.code")
    _, body = spec.subset("Observation", _observation())
    assert _tags(body) == [SUBSETTED_TAG]
    meta = {"tag": [OTHER_TAG, {**SUBSETTED_TAG, "display": "subsetted"}], "source": "s"}
    _, body = spec.subset("Observation", _observation(meta=meta))
    assert _tags(body) == meta["tag"]
    assert body["meta"]["source"] == "s"
    meta = {"tag": [OTHER_TAG]}
    _, body = spec.subset("Observation", _observation(meta=meta))
    assert _tags(body) == [OTHER_TAG, SUBSETTED_TAG]
    assert meta == {"tag": [OTHER_TAG]}  # the input is not modified


def test_meta_is_added_after_id_when_missing():
    body = _observation()
    del body["meta"]
    _, out = parse_elements("Observation.code").subset("Observation", body)
    assert list(out)[:3] == ["resourceType", "id", "meta"]
    assert out["meta"] == {"tag": [SUBSETTED_TAG]}
    assert "meta" not in body
    _, out = parse_elements("Observation.code").subset("Observation", {**body, "meta": None})
    assert out["meta"] == {"tag": [SUBSETTED_TAG]}


def test_resource_with_only_allowed_elements_is_unchanged_and_untagged():
    spec = parse_elements("Observation.subject")
    body = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "c"}}
    assert spec.subset("Observation", body) is None
    raw = b'{"resourceType" : "Observation", "id":"o1","status":"final","code":{"text":"c"}}'
    resource = _resource(body, raw=raw)
    batch = ResourceBatch(Origin("mem.ndjson", 0), [resource])
    [out] = list(_SubsetFn(spec).process(batch))
    assert out.resources[0] is resource


def test_bad_meta_is_refused_only_when_the_resource_must_be_tagged():
    spec = parse_elements("Observation.code")
    with pytest.raises(InvalidMeta, match="meta is not a JSON object"):
        spec.subset("Observation", _observation(meta=[]))
    with pytest.raises(InvalidMeta, match="meta.tag is not a JSON array"):
        spec.subset("Observation", _observation(meta={"tag": {}}))


def test_spec_pickles():
    spec = parse_elements("Observation.code, subject")
    spec.allowed_keys("Observation")
    copy = pickle.loads(pickle.dumps(spec))
    assert copy.entries == ("Observation.code", "subject")
    assert copy.allowed_keys("Observation") == spec.allowed_keys("Observation")


# --- refusals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, entry, reason",
    [
        ("Patient.name.family", "Patient.name.family", "nested path"),
        ("name.family", "name.family", "nested path"),
        ("Foo.bar", "Foo.bar", "not an R4 resource type"),
        ("Patient.valueQuantity", "Patient.valueQuantity", "Patient has no root element"),
        ("Observation.nonsense", "Observation.nonsense", "Observation has no root element"),
        ("Observation.valueQuantity", "Observation.valueQuantity", "name the choice element 'value'"),
        ("nonsense", "nonsense", "not a root element of any R4 resource type"),
        ("Patient.", "Patient.", "not of the form"),
    ],
)
def test_refusals_name_the_entry(value, entry, reason):
    with pytest.raises(ElementsRefused, match=reason) as info:
        parse_elements(value)
    assert repr(entry) in str(info.value)
    assert str(info.value).startswith("_elements: ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", ["", "Patient.name,,gender", "Patient.name,", [], ["Patient.name", " "]])
def test_empty_entries_are_refused(value):
    with pytest.raises(ElementsRefused, match="empty entry|no elements"):
        parse_elements(value)


def test_bare_element_must_exist_on_one_of_the_exported_types():
    with pytest.raises(ElementsRefused, match="'status' is not a root element of any of Patient"):
        parse_elements("status", types=["Patient"])
    assert parse_elements("status", types=["Patient", "Observation"]).bare == {"status"}


def test_several_values_and_spaces():
    spec = parse_elements(["Patient.name, gender", "Observation.code"])
    assert spec.entries == ("Patient.name", "gender", "Observation.code")
    assert spec.typed == {"Patient": {"name"}, "Observation": {"code"}}


# --- the Beam step ---------------------------------------------------------------------


def test_subset_elements_step(pipeline):
    untouched_raw = b'{"resourceType":"Observation",  "id":"o2","status":"final","code":{}}'
    batch = ResourceBatch(Origin("mem.ndjson", 0), [
        _resource(_observation(), 0),
        _resource(orjson.loads(untouched_raw), 1, raw=untouched_raw),
        _resource(_patient(), 2),
        _resource(_observation(id="o3", meta=[]), 3),
    ])
    out = pipeline | beam.Create([batch]) | SubsetElements(parse_elements("Observation.subject"))
    resources = out.batches | beam.FlatMap(lambda b: b.resources)

    def check(resources):
        by_index = {r.index: r for r in resources}
        assert sorted(by_index) == [0, 1, 2]
        assert orjson.loads(by_index[0].raw) == by_index[0].body
        assert "valueQuantity" not in by_index[0].body and _tags(by_index[0].body) == [SUBSETTED_TAG]
        assert by_index[1].raw == untouched_raw
        assert by_index[2].body == {k: v for k, v in _patient().items() if k in {"resourceType", "id", "active"}} | {
            "meta": {"tag": [SUBSETTED_TAG]}}

    assert_that(resources, check)
    reasons = out.errors | beam.Map(lambda e: (e.index, e.reason, e.resource_type))
    assert_that(reasons, equal_to([(3, "_elements: meta is not a JSON object", "Observation")]), label="Errors")
    pipeline.run()


# --- real data ---------------------------------------------------------------------------


@pytest.mark.skipif(not SYNTHEA_OBSERVATIONS.exists(), reason=f"shared data is absent ({SHARED_DATA})")
def test_synthea_observations_subset_to_code_and_value():
    spec = parse_elements("Observation.code,Observation.value")
    allowed = spec.allowed_keys("Observation")
    with gzip.open(SYNTHEA_OBSERVATIONS) as lines:
        bodies = [orjson.loads(line) for line in lines]
    assert len(bodies) == 16_315
    changed = 0
    for body in bodies:
        result = spec.subset("Observation", body)
        if result is None:
            assert body.keys() <= allowed
            continue
        changed += 1
        raw, out = result
        assert orjson.loads(raw) == out
        assert set(out) - {"meta"} == {k for k in body if k in allowed}
        assert [t for t in _tags(out) if t == SUBSETTED_TAG] == [SUBSETTED_TAG]
        assert {"status", "code"} <= set(out)
    assert changed == len(bodies)  # every Synthea Observation has a subject, dropped here
