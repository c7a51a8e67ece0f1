"""FHIR R4 search semantics of `_typeFilter`, one parameter type at a time, on R4-shaped resources."""

import pytest

from transforms.fhir.search.common import MalformedData
from transforms.select.type_filter import TypeFilterRefused, compile_type_filters

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

WEIGHT = {
    "resourceType": "Observation",
    "id": "weight",
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                              "code": "vital-signs", "display": "Vital Signs"}]}],
    "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body Weight"}], "text": "Body weight"},
    "subject": {"reference": "Patient/p1"},
    "encounter": {"reference": "urn:uuid:e1"},
    "effectiveDateTime": "2020-03-04T10:00:00+01:00",
    "valueQuantity": {"value": 72.5, "unit": "kg", "system": UCUM, "code": "kg"},
    "meta": {"lastUpdated": "2021-05-01T12:00:00Z", "tag": [{"system": "http://example.org/tags", "code": "pilot"}],
             "profile": ["http://hl7.org/fhir/StructureDefinition/bodyweight"]},
}
PANEL = {
    "resourceType": "Observation",
    "id": "panel",
    "status": "amended",
    "code": {"coding": [{"code": "85354-9"}], "text": "Blood pressure panel"},
    "subject": {"reference": "https://ehr.example.org/fhir/Patient/p2"},
    "effectivePeriod": {"start": "2019-12-30", "end": "2020-01-02T08:00:00Z"},
    "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                   "valueQuantity": {"value": 120, "unit": "mm[Hg]"}}],
}
JOSE = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"use": "official", "family": "Gómez", "given": ["José", "Ángel"]}],
    "address": [{"line": ["711 Hand Trail"], "city": "São Paulo", "postalCode": "01000-000", "country": "BR"}],
    "telecom": [{"system": "email", "value": "jose@example.org"}],
    "identifier": [{"system": "http://hospital.example.org", "value": "MRN-1"}],
    "gender": "male",
    "birthDate": "1980",
    "deceasedBoolean": False,
    "active": True,
}
ANNE = {"resourceType": "Patient", "id": "p2", "name": [{"text": "Anne Smith", "family": "Smith"}], "gender": "female"}


def admits(query: str, body: dict, **kwargs) -> bool:
    return compile_type_filters([f"{body['resourceType']}?{query}"], **kwargs).matches(body["resourceType"], body)


def kept(query: str, *bodies: dict) -> list[str]:
    return [b["id"] for b in bodies if admits(query, b)]


# --- token ---------------------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("code=29463-7", ["weight"]),
    (f"code={LOINC}|29463-7", ["weight"]),
    (f"code={LOINC}|85354-9", []),
    ("code=|85354-9", ["panel"]),  # a coding with no system
    ("code=|29463-7", []),
    (f"code={LOINC}|", ["weight"]),
    ("code=29463-7,85354-9", ["weight", "panel"]),
    ("code=29463-7&status=final", ["weight"]),
    ("code=29463-7&status=amended", []),
    ("code:not=29463-7", ["panel"]),
    ("code:text=body", ["weight"]),
    ("code:text=BLOOD PRESS", ["panel"]),
    ("code=29463-", []),
    ("category=vital-signs", ["weight"]),
    ("combo-code=8480-6", ["panel"]),
    ("component-code=8480-6", ["panel"]),
    ("_tag=http://example.org/tags|pilot", ["weight"]),
    ("_id=panel", ["panel"]),
])
def test_token_on_observations(query, expected):
    assert kept(query, WEIGHT, PANEL) == expected


def test_codes_compare_case_sensitively():
    assert kept("gender=male", JOSE, ANNE) == ["p1"]
    assert kept("gender=Male", JOSE, ANNE) == []


def test_token_over_identifier_contact_point_and_boolean():
    assert kept("identifier=http://hospital.example.org|MRN-1", JOSE, ANNE) == ["p1"]
    assert kept("identifier=MRN-1", JOSE, ANNE) == ["p1"]
    assert kept("identifier=http://other.org|MRN-1", JOSE, ANNE) == []
    assert kept("email=jose@example.org", JOSE, ANNE) == ["p1"]
    assert kept("telecom=email|jose@example.org", JOSE, ANNE) == ["p1"]
    assert kept("active=true", JOSE, ANNE) == ["p1"]
    assert kept("active=false", JOSE, ANNE) == []
    assert kept("deceased=false", JOSE) == ["p1"]  # a fhirpathpy expression


def test_system_code_never_matches_a_plain_code():
    assert kept("gender=http://hl7.org/fhir/administrative-gender|male", JOSE) == []
    assert kept("gender=|male", JOSE) == ["p1"]


# --- string --------------------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("name=jose", ["p1"]),  # accents and case ignored
    ("name=JOSÉ", ["p1"]),
    ("name=gom", ["p1"]),  # starts with
    ("name=angel", ["p1"]),
    ("name=omez", []),
    ("name:contains=omez", ["p1"]),
    ("name:exact=Gómez", ["p1"]),
    ("name:exact=Gomez", []),
    ("name:exact=gómez", []),
    ("name=anne smi", ["p2"]),  # HumanName.text
    ("family=smith,gomez", ["p1", "p2"]),
    ("given=ángel", ["p1"]),
    ("address=sao", ["p1"]),
    ("address=711 hand", ["p1"]),
    ("address-city=são paulo", ["p1"]),
    ("address-postalcode=01000", ["p1"]),
    ("address-country=br", ["p1"]),
])
def test_string_on_patients(query, expected):
    assert kept(query, JOSE, ANNE) == expected


# --- date ----------------------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    # WEIGHT: 2020-03-04T09:00:00Z, one second. PANEL: [2019-12-30, 2020-01-02T08:00:01Z).
    ("date=2020-03-04", ["weight"]),
    ("date=2020-03-04T09:00:00Z", ["weight"]),
    ("date=2020-03-04T10:00:00+01:00", ["weight"]),
    ("date=2020-03-04T10:00:00Z", []),
    ("date=2020", ["weight"]),  # the panel's period starts in 2019
    ("date=ne2020", ["panel"]),
    ("date=gt2020-01-01", ["weight", "panel"]),  # the period overlaps the days after
    ("date=lt2020-01-01", ["panel"]),
    ("date=ge2020-03-04", ["weight"]),
    ("date=le2019-12-30", []),  # nothing of the panel is before that day
    ("date=le2019-12-31", ["panel"]),
    ("date=sa2020-01-02", ["weight"]),
    ("date=sa2019-12-29", ["weight", "panel"]),
    ("date=eb2020-01-03", ["panel"]),
    ("date=eb2020-01-02", []),
    ("date=gt2021", []),
    ("date=2021,lt2019-12-31", ["panel"]),  # comma OR
    ("date=gt2019&date=lt2021", ["weight", "panel"]),
    ("_lastUpdated=gt2021-05-01T11:00:00Z", ["weight"]),
    ("_lastUpdated=2021-05", ["weight"]),
])
def test_date_prefixes_over_datetime_and_period(query, expected):
    assert kept(query, WEIGHT, PANEL) == expected


def test_data_with_less_precision_than_the_search_value():
    # birthDate `1980` is the whole year: it is not within one day, but overlaps it.
    assert not admits("birthdate=1980-06-01", JOSE)
    assert admits("birthdate=1980", JOSE)
    assert admits("birthdate=ge1980-06-01", JOSE)
    assert admits("birthdate=le1980-06-01", JOSE)
    assert not admits("birthdate=sa1980-06-01", JOSE)


def test_open_period_ends_are_unbounded():
    encounter = {"resourceType": "Encounter", "id": "e", "period": {"start": "2020-05-01T08:00:00Z"}}
    assert admits("date=gt2030", encounter)
    assert not admits("date=lt2020-05-01", encounter)
    assert not admits("date=2020-05", encounter)


def test_timing_events_and_bounds():
    request = {"resourceType": "MedicationRequest", "id": "m",
               "dosageInstruction": [{"timing": {"event": ["2021-02-03T08:00:00Z"]}}]}
    assert admits("date=2021-02-03", request)
    assert not admits("date=2021-02-04", request)


def test_ap_is_within_ten_percent_of_the_distance_to_now():
    now = "2020-01-01T00:00:00Z"
    # Ten years from now: a year's 10% is about 1 year either side.
    assert admits("date=ap2011-01-01", {**WEIGHT, "effectiveDateTime": "2010-03-01"}, now=now)
    assert not admits("date=ap2011-01-01", {**WEIGHT, "effectiveDateTime": "2008-01-01"}, now=now)


def test_a_date_value_that_is_not_a_date_is_malformed_data():
    # Issue 14: the message names the parameter and the rule, never the resource's value.
    with pytest.raises(MalformedData, match=r"Observation\?date: a date value is not a calendar date") as info:
        admits("date=2020", {**WEIGHT, "effectiveDateTime": "2020-13-01"})
    assert "2020-13-01" not in str(info.value)


# --- number and quantity -------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("value-quantity=72.5", ["weight"]),
    ("value-quantity=73", ["weight"]),  # [72.5, 73.5)
    ("value-quantity=72", []),  # [71.5, 72.5)
    ("value-quantity=72.5|http://unitsofmeasure.org|kg", ["weight"]),
    ("value-quantity=72.5|http://unitsofmeasure.org|g", []),
    ("value-quantity=72.5||kg", ["weight"]),
    ("value-quantity=gt70||kg", ["weight"]),
    ("value-quantity=lt70", []),
    ("value-quantity=ge72.5", ["weight"]),
    ("value-quantity=le72.4", []),
    ("value-quantity=ap70", ["weight"]),
    ("value-quantity=ne72.5", []),
    ("component-value-quantity=gt100||mm[Hg]", ["panel"]),
    ("combo-value-quantity=120", ["panel"]),
])
def test_quantity_prefixes_and_units(query, expected):
    assert kept(query, WEIGHT, PANEL) == expected


def test_number_uses_the_precision_of_the_search_value():
    assessment = {"resourceType": "RiskAssessment", "id": "r", "prediction": [{"probabilityDecimal": 100.4}]}
    assert admits("probability=100", assessment)
    assert not admits("probability=100.0", assessment)
    assert admits("probability=100.4", assessment)
    assert admits("probability=gt100", assessment)
    assert not admits("probability=gt100.4", assessment)
    assert admits("probability=1e2", assessment)  # one significant figure: [50, 150)
    ranged = {"resourceType": "RiskAssessment", "id": "r2",
              "prediction": [{"probabilityRange": {"low": {"value": 10}, "high": {"value": 20}}}]}
    assert admits("probability=gt15", ranged)
    assert admits("probability=sa5", ranged)
    assert not admits("probability=sa15", ranged)


# --- reference -----------------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("subject=Patient/p1", ["weight"]),
    ("subject=p1", ["weight"]),
    ("subject:Patient=p1", ["weight"]),
    ("subject:Group=p1", []),
    ("patient=p2", ["panel"]),
    ("patient=Patient/p2", ["panel"]),
    ("patient=https://ehr.example.org/fhir/Patient/p2", ["panel"]),
    ("patient=https://other.example.org/fhir/Patient/p2", []),
    ("subject=https://ehr.example.org/fhir/Patient/p1", ["weight"]),  # relative in the data
    ("subject=Patient/p1,Patient/p2", ["weight", "panel"]),
    ("encounter=e1", ["weight"]),  # urn:uuid:e1 in the data
    ("encounter=Encounter/e1", ["weight"]),
])
def test_reference_forms(query, expected):
    assert kept(query, WEIGHT, PANEL) == expected


def test_where_resolve_is_patient_keeps_only_patient_references():
    group_subject = {**WEIGHT, "id": "g", "subject": {"reference": "Group/p1"}}
    assert kept("patient=p1", WEIGHT, group_subject) == ["weight"]
    assert kept("subject=p1", WEIGHT, group_subject) == ["weight", "g"]


# --- uri and :missing ----------------------------------------------------------------------

def test_uri_exact_below_above():
    profile = "http://hl7.org/fhir/StructureDefinition/bodyweight"
    assert kept(f"_profile={profile}", WEIGHT, PANEL) == ["weight"]
    assert kept("_profile=http://hl7.org/fhir/StructureDefinition", WEIGHT) == []
    assert kept("_profile:below=http://hl7.org/fhir/StructureDefinition", WEIGHT) == ["weight"]
    assert kept(f"_profile:above={profile}/extra", WEIGHT) == ["weight"]
    assert kept("_profile:above=http://hl7.org/fhir", WEIGHT) == []


@pytest.mark.parametrize("query, expected", [
    ("value-quantity:missing=true", ["panel"]),
    ("value-quantity:missing=false", ["weight"]),
    ("encounter:missing=true", ["panel"]),
    ("category:missing=false", ["weight"]),
    ("date:missing=false", ["weight", "panel"]),
    ("_lastUpdated:missing=true", ["panel"]),
])
def test_missing_both_ways(query, expected):
    assert kept(query, WEIGHT, PANEL) == expected


def test_a_text_choice_is_not_searched_as_a_date():
    given = {"resourceType": "Immunization", "id": "i1", "occurrenceString": "last spring"}
    dated = {"resourceType": "Immunization", "id": "i2", "occurrenceDateTime": "2019-04-02"}
    assert kept("date=2019", given, dated) == ["i2"]
    assert kept("date:missing=true", given, dated) == ["i1"]


# --- review fixes: edges of the spec -------------------------------------------------------

def test_year_9999_is_a_date_with_an_end():
    # `9999` and `9999-12` are valid FHIR dates (a common "no end" sentinel); their ranges end in 10000.
    open_ended = {"resourceType": "Encounter", "id": "e", "period": {"start": "2020-05-01", "end": "9999-12"}}
    assert admits("date=gt2030", open_ended)
    assert admits("date=le9999", open_ended)
    assert not admits("date=eb9999", open_ended)
    assert admits("birthdate=9999", {**JOSE, "birthDate": "9999"})


def test_canonical_references_of_any_shape_and_version():
    answers = {"resourceType": "QuestionnaireResponse", "id": "qr", "status": "completed",
               "questionnaire": "http://example.org/questionnaires/phq9|2.0"}
    assert admits("questionnaire=http://example.org/questionnaires/phq9", answers)  # any version
    assert admits("questionnaire=http://example.org/questionnaires/phq9|2.0", answers)
    assert not admits("questionnaire=http://example.org/questionnaires/phq9|1.0", answers)
    assert not admits("questionnaire=http://example.org/questionnaires/phq", answers)


def test_a_reference_to_a_resource_inline_matches_its_type_and_id():
    document = {"resourceType": "Bundle", "id": "b", "type": "document",
                "entry": [{"fullUrl": "urn:uuid:c1", "resource": {"resourceType": "Composition", "id": "c1"}}]}
    assert admits("composition=Composition/c1", document)
    assert admits("composition=c1", document)
    assert not admits("composition=c2", document)


def test_a_contained_reference_cannot_be_searched():
    with pytest.raises(TypeFilterRefused, match="'subject': '#p1' names no resource id"):
        admits("subject=%23p1", WEIGHT)


def test_a_range_end_without_a_value_is_open():
    assessment = {"resourceType": "RiskAssessment", "id": "r", "status": "final", "subject": {"reference": "Patient/p"},
                  "prediction": [{"probabilityRange": {"low": {"value": 10}, "high": {"unit": "%"}}}]}
    assert admits("probability=gt15", assessment)
    assert not admits("probability=lt5", assessment)
    nothing = {**assessment, "prediction": [{"probabilityRange": {"low": {"unit": "%"}}}]}
    assert not admits("probability=gt15", nothing)


def test_quantity_system_without_code_needs_that_system():
    assert kept("value-quantity=72.5|http://unitsofmeasure.org|", WEIGHT) == ["weight"]
    assert kept("value-quantity=72.5|http://other.org|", WEIGHT) == []


def test_a_value_the_filter_cannot_read_is_an_error_only_when_nothing_else_decides():
    bad_date = {**WEIGHT, "effectiveDateTime": "yesterday"}
    for filters in (["Observation?date=2020", "Observation?code=29463-7"],
                    ["Observation?code=29463-7", "Observation?date=2020"]):
        assert compile_type_filters(filters).matches("Observation", bad_date)  # any order
    assert not admits("date=2020&code=85354-9", bad_date)  # the code already says no
    with pytest.raises(MalformedData, match="a date value is not a FHIR date or dateTime") as info:
        admits("code=29463-7&date=2020", bad_date)
    assert "yesterday" not in str(info.value)  # issue 14: never the resource's value
    timing = {"resourceType": "MedicationRequest", "id": "m",
              "dosageInstruction": [{"timing": {"event": ["soon"]}}, {"timing": {"event": ["2021-02-03"]}}]}
    assert admits("date=2021-02-03", timing)
    assert not admits("date:missing=true", timing)
    with pytest.raises(MalformedData, match="a date value is not a FHIR date or dateTime") as info:
        admits("date=2022", timing)
    assert "soon" not in str(info.value)


def test_backslash_escapes():
    coded = {**JOSE, "identifier": [{"system": "http://h.org", "value": "a|b"}], "name": [{"family": "back\\slash"}]}
    assert admits(r"identifier=http://h.org|a\|b", coded)
    assert not admits(r"identifier=http://h.org|a", coded)
    assert admits(r"family=back\\slash", coded)
    assert kept(r"family=x\\,Smith", coded, ANNE) == ["p2"]  # `\\` then a separating comma
    with pytest.raises(TypeFilterRefused, match=r"'family'.*backslash that escapes nothing"):
        admits(r"family=back\slash", coded)
