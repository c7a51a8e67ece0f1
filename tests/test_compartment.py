"""Patient compartment rules, derived from the official CompartmentDefinition/patient."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from transforms.fhir.compartment import (
    COMPARTMENT_PATHS,
    PatientSet,
    compartment_patients,
    patient_reference_id,
)
from transforms.fhir.window import LastUpdatedWindow
from transforms.records import Origin, Resource, ResourceBatch
from transforms.select.in_compartment import FilterCompartment


def ref(text: str) -> dict:
    return {"reference": text}


@pytest.mark.parametrize(
    "reference, expected",
    [
        ("Patient/p1", "p1"),
        ("Patient/p1/_history/3", "p1"),
        ("https://fhir.example.org/r4/Patient/p1", "p1"),
        ("urn:uuid:3b1a9cb0-e3d3-4bce-8b20-864c3dc7e8c0", "3b1a9cb0-e3d3-4bce-8b20-864c3dc7e8c0"),
        ("Practitioner/p1", None),
        ("#contained", None),
        ("Patient/", None),
        (None, None),
        (42, None),
    ],
)
def test_patient_reference_forms(reference, expected):
    assert patient_reference_id(reference) == expected


def test_derived_paths_match_the_definition():
    assert COMPARTMENT_PATHS["Observation"] == (("subject",), ("performer",))
    assert COMPARTMENT_PATHS["Encounter"] == (("subject",),)
    assert ("patient",) in COMPARTMENT_PATHS["Claim"]
    assert ("payee", "party") in COMPARTMENT_PATHS["Claim"]
    assert ("patient",) in COMPARTMENT_PATHS["ExplanationOfBenefit"]
    assert set(COMPARTMENT_PATHS["AllergyIntolerance"]) == {("patient",), ("recorder",), ("asserter",)}
    for outside in ("Organization", "Practitioner", "Medication", "Device", "Location"):
        assert outside not in COMPARTMENT_PATHS


def test_observation_by_subject_or_performer():
    by_subject = {"resourceType": "Observation", "subject": ref("Patient/a")}
    by_performer = {"resourceType": "Observation", "subject": ref("Group/g"), "performer": [ref("Patient/b")]}
    assert compartment_patients("Observation", by_subject) == {"a"}
    assert compartment_patients("Observation", by_performer) == {"b"}


def test_encounter_claim_and_allergy_recorder():
    assert compartment_patients("Encounter", {"subject": ref("Patient/a")}) == {"a"}
    assert compartment_patients("Claim", {"patient": ref("Patient/a"), "payee": {"party": ref("Patient/b")}}) == {"a", "b"}
    allergy = {"patient": ref("Patient/a"), "recorder": ref("Patient/c"), "asserter": ref("Practitioner/x")}
    assert compartment_patients("AllergyIntolerance", allergy) == {"a", "c"}


def test_patient_is_in_its_own_compartment_and_linked_ones():
    assert compartment_patients("Patient", {"id": "a"}) == {"a"}
    assert compartment_patients("Patient", {"id": "b", "link": [{"other": ref("Patient/a")}]}) == {"a", "b"}


def test_types_outside_the_definition_belong_to_no_patient():
    device = {"resourceType": "Device", "patient": ref("Patient/a")}
    organization = {"resourceType": "Organization", "id": "o"}
    assert compartment_patients("Device", device) == set()
    assert compartment_patients("Organization", organization) == set()


def _batch(*bodies: dict) -> ResourceBatch:
    resources = [Resource(b["resourceType"], repr(b).encode(), b, i) for i, b in enumerate(bodies)]
    return ResourceBatch(Origin("mem", 0), resources)


def test_filter_keeps_members_once_and_applies_the_window(pipeline):
    tx = "2024-01-01T00:00:00Z"
    bodies = [
        {"resourceType": "Patient", "id": "a"},
        {"resourceType": "Patient", "id": "z"},
        # In a's and b's compartments: kept once.
        {"resourceType": "Observation", "id": "o1", "subject": ref("Patient/a"), "performer": [ref("Patient/b")]},
        {"resourceType": "Observation", "id": "o2", "subject": ref("Patient/z")},
        {"resourceType": "Organization", "id": "org"},
        # Old data of b, a new member: kept despite _since.
        {"resourceType": "Condition", "id": "c1", "subject": ref("Patient/b"), "meta": {"lastUpdated": "2019-01-01T00:00:00Z"}},
        # Old data of a, an old member: left out by _since.
        {"resourceType": "Condition", "id": "c2", "subject": ref("Patient/a"), "meta": {"lastUpdated": "2019-01-01T00:00:00Z"}},
        # After transactionTime: never exported, even for a new member.
        {"resourceType": "Condition", "id": "c3", "subject": ref("Patient/b"), "meta": {"lastUpdated": "2025-01-01T00:00:00Z"}},
    ]
    patients = pipeline | "Set" >> beam.Create([PatientSet.of({"a", "b"}, {"b"})])
    window = LastUpdatedWindow(tx, since="2020-01-01T00:00:00Z", include_missing=True)
    out = (
        pipeline
        | beam.Create([_batch(*bodies)])
        | FilterCompartment(beam.pvalue.AsSingleton(patients), window)
    )
    ids = out.batches | beam.FlatMap(lambda b: [r.body["id"] for r in b.resources])
    assert_that(ids, equal_to(["a", "o1", "c1"]))
    pipeline.run()
