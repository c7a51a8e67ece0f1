"""`_typeFilter`: compiling filters, refusals, the Beam step, and a check on real Synthea data."""

import gzip
import json
import pickle

import apache_beam as beam
import httpx
import orjson
import pytest
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import SHARED_DATA
from tests.server_process import FHIR_HEADERS, poll, serve
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.search.expressions import compile_expression
from transforms.fhir.search.registry import search_parameters
from transforms.records import Origin, Resource, ResourceBatch
from transforms.select.type_filter import FilterTypeFilter, TypeFilterRefused, TypeFilters, compile_type_filters


def _obs(oid: str, code: str, effective: str = "2020-01-01") -> dict:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "effectiveDateTime": effective}


def _batch(*bodies: dict) -> ResourceBatch:
    resources = [Resource(b["resourceType"], orjson.dumps(b), b, i) for i, b in enumerate(bodies)]
    return ResourceBatch(Origin("mem.ndjson", 0), resources)


# --- compiling and combining ---------------------------------------------------------------

def test_filters_of_one_type_are_ored_and_types_without_filters_pass():
    filters = compile_type_filters(["Observation?code=1", "Observation?code=2&date=2021", "Condition?code=9"])
    assert filters.types == {"Observation", "Condition"}
    assert filters.matches("Observation", _obs("a", "1"))
    assert not filters.matches("Observation", _obs("b", "2"))  # AND: the date is 2020
    assert filters.matches("Observation", _obs("c", "2", "2021-06"))
    assert not filters.matches("Observation", _obs("d", "3"))
    assert filters.matches("Patient", {"resourceType": "Patient"})


# This test once asserted the opposite (values split at raw commas, then unquoted, so `%2C` was a
# literal comma): a FHIR REST query is percent-decoded first, and a literal comma is written `\,`.
def test_parameter_values_are_percent_decoded_then_split_at_unescaped_commas():
    filters = compile_type_filters(["Patient?family=O%27Brien%5C%2C%20Jr,Smith", r"Patient?given=A\,B"])
    assert filters.matches("Patient", {"name": [{"family": "O'Brien, Jr"}]})
    assert filters.matches("Patient", {"name": [{"family": "Smith"}]})
    assert filters.matches("Patient", {"name": [{"given": ["a,b"]}]})
    assert not filters.matches("Patient", {"name": [{"family": "O'Brien"}]})
    assert not filters.matches("Patient", {"name": [{"given": ["a"]}]})


@pytest.mark.parametrize("query", ["category=laboratory%2Cvital-signs", "category=laboratory,vital-signs",
                                   "category=laboratory%2cvital-signs"])
def test_an_encoded_comma_separates_values_as_a_raw_one_does(query):
    filters = compile_type_filters([f"Observation?{query}"])
    lab, vital, survey = ({**_obs(c, "1"), "category": [{"coding": [{"code": c}]}]}
                          for c in ("laboratory", "vital-signs", "survey"))
    assert filters.matches("Observation", lab) and filters.matches("Observation", vital)
    assert not filters.matches("Observation", survey)


@pytest.mark.parametrize("value", ["Observation?code=50%", "Observation?code=%zz1", "Observation?code=%C3%28"])
def test_a_value_that_cannot_be_percent_decoded_is_refused_never_matching_nothing(value):
    with pytest.raises(TypeFilterRefused, match="'code'") as refused:
        compile_type_filters([value])
    assert refused.value.unreadable


def test_type_filters_pickle_and_keep_matching():
    filters = compile_type_filters(["Patient?deceased=true", "Observation?patient=p1&date=ge2020"])
    clone = pickle.loads(pickle.dumps(filters))
    assert isinstance(clone, TypeFilters)
    assert clone.matches("Patient", {"resourceType": "Patient", "deceasedDateTime": "2020-01-01"})
    assert not clone.matches("Patient", {"resourceType": "Patient", "deceasedBoolean": False})
    assert clone.matches("Observation", {**_obs("o", "1"), "subject": {"reference": "Patient/p1"}})


def test_every_r4_search_parameter_expression_compiles():
    compiled = 0
    for resource_type in RESOURCE_TYPES:
        for name, param in search_parameters(resource_type).items():
            if param.type != "composite":
                compile_expression(param.expression, resource_type)
                compiled += 1
    assert compiled > 1500


def test_an_empty_list_filters_nothing():
    filters = compile_type_filters([])
    assert filters.types == frozenset()
    assert filters.matches("Observation", _obs("o", "1"))


# --- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, named", [
    ("Observation", "expected Type?query"),
    ("Observation?", "query is empty"),
    ("?code=1", "expected Type?query"),
    ("Observation?code", "'code'"),
    ("Observations?code=1", "'Observations' is not an R4 resource type"),
    ("Observation?colour=red", "'colour'"),
    ("Observation?_include=Observation:subject", "'_include'"),
    ("Observation?code=1&_revinclude=Provenance:target", "'_revinclude'"),
    ("Observation?_sort=date", "'_sort'"),
    ("Observation?_count=10", "'_count'"),
    ("Observation?_elements=code", "'_elements'"),
    ("Observation?_summary=true", "'_summary'"),
    ("Observation?_total=accurate", "'_total'"),
    ("Observation?_contained=true", "'_contained'"),
    ("Observation?_containedType=contained", "'_containedType'"),
    ("Observation?subject.name=peter", "'subject.name': chained"),
    ("Patient?_has:Observation:patient:code=1234-5", "'_has'"),
    ("Observation?code-value-quantity=1234-5$gt5", "'code-value-quantity': composite"),
    ("Location?near=42|-71|10|km", "'near': special"),
    ("Observation?code:below=1234", "'code': modifier :below"),
    ("Observation?code:in=http://example.org/vs", "'code': modifier :in"),
    ("Patient?name:text=x", "'name': modifier :text"),
    ("Observation?date:exact=2020", "'date': modifier :exact"),
    ("Observation?subject:identifier=x|1", "'subject': modifier :identifier"),
    ("Observation?subject:Medication=1", "'subject': :Medication is not a target"),
    ("Observation?subject=Medication/1", "'subject': Medication is not a target"),
    ("Observation?subject=Nope/1", "'subject': 'Nope' in 'Nope/1' is not an R4 resource type"),
    ("Observation?date=2020-13", "'date': '2020-13' is not a date"),
    ("Observation?date=xx2020", "'date': 'xx2020' is not a date"),
    ("Observation?date=gt", "'date': 'gt' has no value"),
    ("Observation?value-quantity=gtabc", "'value-quantity': 'abc' is not a number"),
    ("Observation?value-quantity=5|kg", "'value-quantity'"),
    ("RiskAssessment?probability=NaN", "'probability': 'NaN' is not a number"),
    ("Observation?code:missing=maybe", "'code': :missing takes true or false"),
    ("Observation?code=|", "'code'"),
    ("Patient?_text=cancer", "'_text'"),
])
def test_refusals_name_the_filter_and_parameter(value, named):
    with pytest.raises(TypeFilterRefused) as refused:
        compile_type_filters([value])
    message = str(refused.value)
    assert message.startswith(f"_typeFilter {value!r}")
    assert named in message
    assert isinstance(refused.value, ValueError)


def test_a_filter_on_a_type_outside_type_is_refused():
    with pytest.raises(TypeFilterRefused, match=r"'Condition\?code=1'.*not in _type \(Patient, Observation\)"):
        compile_type_filters(["Observation?code=1", "Condition?code=1"], types=["Patient", "Observation"])


# --- the Beam step -------------------------------------------------------------------------

def test_filter_type_filter_step(pipeline):
    filters = compile_type_filters(["Observation?code=8302-2,29463-7&date=ge2020"])
    bad = _obs("bad", "8302-2", effective="yesterday")
    batches = [
        _batch(_obs("keep1", "8302-2"), _obs("drop-code", "1111-1"), {"resourceType": "Patient", "id": "pat"}),
        _batch(_obs("drop-date", "29463-7", "2019-12-31"), bad, _obs("keep2", "29463-7", "2020-02")),
        _batch(_obs("drop-all", "0000-0")),
    ]
    out = pipeline | beam.Create(batches) | FilterTypeFilter(filters)
    ids = out.batches | beam.FlatMap(lambda b: [r.body["id"] for r in b.resources])
    assert_that(ids, equal_to(["keep1", "pat", "keep2"]))
    assert_that(out.batches | beam.Map(lambda b: len(b.resources)), equal_to([2, 1]), label="Sizes")
    errors = out.errors | beam.Map(lambda e: (e.index, e.resource_type, e.reason))
    reason = "_typeFilter: Observation?date: a date value is not a FHIR date or dateTime"  # no value (issue 14)
    assert_that(errors, equal_to([(1, "Observation", reason)]), label="Errors")
    pipeline.run()


# --- real data -----------------------------------------------------------------------------

SYNTHEA = SHARED_DATA / "synthea-100"


@pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"shared Synthea data is absent ({SHARED_DATA})")
def test_loinc_code_on_synthea_observations():
    with gzip.open(SYNTHEA / "Observation.ndjson.gz", "rt", encoding="utf-8") as lines:
        observations = [json.loads(line) for line in lines if line.strip()]
    expected = {
        o["id"] for o in observations
        if any(c.get("system") == "http://loinc.org" and c.get("code") == "8302-2"
               for c in o.get("code", {}).get("coding", []))
    }
    filters = compile_type_filters(["Observation?code=http://loinc.org|8302-2"], types=["Observation"])
    kept = {o["id"] for o in observations if filters.matches("Observation", o)}
    assert len(observations) == 16315
    assert kept == expected
    assert 0 < len(kept) < len(observations)


# --- over real HTTP ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("type-filter")
    with serve(sample_dir, root / "out", root / "state") as running:
        yield running


def _exported_ids(server, query: str) -> set[str]:
    with httpx.Client(timeout=30) as client:
        kicked = client.get(f"{server.fhir}/$export?_type=Observation&{query}", headers=FHIR_HEADERS)
        assert kicked.status_code == 202, kicked.text
        manifest = poll(client, kicked.headers["Content-Location"]).json()
        assert manifest["error"] == []
        return {json.loads(line)["id"] for e in manifest["output"] for line in client.get(e["url"]).text.splitlines()}


def test_smart_fetch_encoded_comma_gives_the_observations_of_the_once_encoded_form(server, sample_dir):
    observations = [json.loads(line) for line in (sample_dir / "Observation.ndjson").read_text().splitlines()]
    expected = {o["id"] for o in observations
                if {c["code"] for cat in o["category"] for c in cat["coding"]} & {"laboratory", "vital-signs"}}
    smart_fetch = _exported_ids(server, "_typeFilter=Observation%3Fcategory%3Dlaboratory%252Cvital-signs")
    assert smart_fetch == expected and smart_fetch  # it once matched nothing: `%2C` was read as a literal comma
    assert _exported_ids(server, "_typeFilter=Observation%3Fcategory%3Dlaboratory%2Cvital-signs") == expected
    two = "_typeFilter=Observation%3Fcategory%3Dlaboratory&_typeFilter=Observation%3Fcategory%3Dvital-signs"
    assert _exported_ids(server, two) == expected
    assert len(_exported_ids(server, "_typeFilter=Observation%3Fcategory%3Dlaboratory")) < len(expected)
