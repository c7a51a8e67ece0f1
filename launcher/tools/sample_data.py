"""Deterministic generator of realistic FHIR R4 NDJSON sample data for tests and benchmarks.

``generate(out_dir, patients, seed)`` writes one ``<Type>.ndjson`` file per resource type
(Organization, Practitioner, Patient, Encounter, Observation, Condition,
MedicationRequest, Group); ``iter_resources`` yields the same resources in the same order.
Output depends only on ``(patients, seed)`` (a single ``random.Random(seed)``), is streamed
(memory stays flat), and every reference points at a generated resource.
"""
from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack

import orjson

from transforms.errors import Refused

__all__ = ["RESOURCES_PER_PATIENT", "RESOURCE_TYPES", "generate", "iter_resources"]

# Average resources emitted per patient: 1 Patient + 9.5 Observation + 3 Encounter
# + 1.5 Condition + 1.5 MedicationRequest + ~0.05 Organization + ~0.1 Practitioner
# + ~0.04 Group.  patients = target_resources / RESOURCES_PER_PATIENT.
RESOURCES_PER_PATIENT = 16.69

RESOURCE_TYPES = ("Condition", "Encounter", "Group", "MedicationRequest",
                  "Observation", "Organization", "Patient", "Practitioner")

_T2015 = 1420070400  # 2015-01-01T00:00:00Z
_T2025 = 1735689600  # 2025-01-01T00:00:00Z
_T1930 = -1262304000  # 1930-01-01T00:00:00Z
_T2020 = 1577836800  # 2020-01-01T00:00:00Z
_DAY = 86400

_GIVEN_M = ("James John Robert Michael William David Richard Joseph Thomas Charles Daniel "
            "Matthew Anthony Mark Steven Paul Andrew Joshua Kevin Brian Luis Carlos Wei").split()
_GIVEN_F = ("Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Nancy Lisa "
            "Betty Margaret Sandra Ashley Emily Donna Michelle Maria Sofia Mei Fatima Olga").split()
_FAMILY = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
           "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson "
           "White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright "
           "Scott Nguyen Chen Patel Kim").split()
_STREETS = ("Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Elm St", "Pine Rd", "Washington Blvd",
            "Lake View Ct", "Park Ave", "Hillcrest Way", "Sunset Blvd", "River Rd")
_CITIES = (("Boston", "MA", "021"), ("Worcester", "MA", "016"), ("Springfield", "IL", "627"),
           ("Chicago", "IL", "606"), ("Austin", "TX", "787"), ("Houston", "TX", "770"),
           ("Seattle", "WA", "981"), ("Denver", "CO", "802"), ("Atlanta", "GA", "303"),
           ("Portland", "OR", "972"), ("Phoenix", "AZ", "850"), ("Columbus", "OH", "432"))
_ORG_KINDS = ("General Hospital", "Medical Center", "Family Clinic", "Health Partners",
              "Community Health Center", "Urgent Care")

_LOINC, _SNOMED = "http://loinc.org", "http://snomed.info/sct"
_UCUM = "http://unitsofmeasure.org"
_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_HL7 = "http://terminology.hl7.org/CodeSystem/"
_NPI = "http://hl7.org/fhir/sid/us-npi"
# (loinc, display, ucum unit, low, high, decimals); the first 9 are vital signs, the rest labs
_OBS = (
    ("8867-4", "Heart rate", "/min", 52, 110, 0),
    ("9279-1", "Respiratory rate", "/min", 11, 24, 0),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 95, 165, 0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 55, 100, 0),
    ("8310-5", "Body temperature", "Cel", 36.0, 38.6, 1),
    ("29463-7", "Body weight", "kg", 45.0, 130.0, 1),
    ("8302-2", "Body height", "cm", 150.0, 195.0, 1),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 17.5, 41.0, 1),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 90.0, 100.0, 1),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 65.0, 210.0, 1),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 130.0, 290.0, 1),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.5, 10.5, 1),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.5, 1.9, 2),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 10.5, 17.5, 1),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 3.5, 12.5, 1),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 132.0, 147.0, 1),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.3, 5.3, 1),
)
_CONDITIONS = (
    ("44054006", "Diabetes mellitus type 2 (disorder)"), ("38341003", "Hypertension (disorder)"),
    ("195967001", "Asthma (disorder)"), ("55822004", "Hyperlipidemia (disorder)"),
    ("444814009", "Viral sinusitis (disorder)"), ("10509002", "Acute bronchitis (disorder)"),
    ("271737000", "Anemia (disorder)"), ("35489007", "Depressive disorder (disorder)"),
    ("162864005", "Body mass index 30+ - obesity (finding)"), ("233604007", "Pneumonia (disorder)"),
    ("40055000", "Chronic sinusitis (disorder)"),
    ("195662009", "Acute viral pharyngitis (disorder)"),
)
_MEDS = (
    ("314076", "lisinopril 10 MG Oral Tablet"), ("197361", "amlodipine 5 MG Oral Tablet"),
    ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("259255", "atorvastatin 80 MG Oral Tablet"), ("312961", "simvastatin 20 MG Oral Tablet"),
    ("313782", "acetaminophen 325 MG Oral Tablet"), ("310965", "ibuprofen 200 MG Oral Tablet"),
    ("308182", "amoxicillin 250 MG Oral Capsule"),
    ("316049", "hydrochlorothiazide 25 MG Oral Tablet"),
    ("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
)
_DOSING = ("Take 1 tablet by mouth once daily", "Take 1 tablet by mouth twice daily",
           "Take 1-2 tablets by mouth every 6 hours as needed for pain",
           "Inhale 2 puffs every 4 hours as needed")
_ENC_TYPES = (("185349003", "Encounter for check up (procedure)", "AMB", "ambulatory"),
              ("185345009", "Encounter for symptom (procedure)", "AMB", "ambulatory"),
              ("50849002", "Emergency room admission (procedure)", "EMER", "emergency"),
              ("183452005", "Emergency hospital admission (procedure)", "IMP", "inpatient"))


def _cc(system: str, code: str, display: str | None = None, text: str | None = None) -> dict:
    """A CodeableConcept with one coding."""
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding], "text": text} if text else {"coding": [coding]}


_VITAL = [_cc(_HL7 + "observation-category", "vital-signs", "Vital Signs")]
_LAB = [_cc(_HL7 + "observation-category", "laboratory", "Laboratory")]
_VERIFIED = _cc(_HL7 + "condition-ver-status", "confirmed", "Confirmed")
_COND_CAT = [_cc(_HL7 + "condition-category", "encounter-diagnosis", "Encounter Diagnosis")]
_PRIMARY = [_cc(_HL7 + "v3-ParticipationType", "PPRF", "primary performer")]
_MRN_TYPE = _cc(_HL7 + "v2-0203", "MR", "Medical Record Number", "MRN")
_ORG_TYPE = [_cc(_HL7 + "organization-type", "prov", "Healthcare Provider")]
_ENGLISH = [{"language": _cc("urn:ietf:bcp:47", "en-US", "English (United States)")}]
_MARITAL = {c: _cc(_HL7 + "v3-MaritalStatus", c) for c in "MS"}
_PREFIX = {"female": "Ms.", "male": "Mr."}


def _ts(t: int) -> str:
    """``YYYY-MM-DDThh:mm:ss`` for epoch seconds ``t`` (UTC)."""
    g = time.gmtime(t)
    return (f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d}"
            f"T{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}")


def _instant(rng: random.Random, t: int) -> str:
    """A FHIR instant for ``t`` in one of several real-world spellings."""
    r = rng.random()
    ms = f".{int(r * 1e6) % 1000:03d}"
    if r < 0.70:
        return _ts(t) + ms + "Z"
    if r < 0.85:
        return _ts(t) + "Z"
    if r < 0.93:
        return _ts(t + 7200) + ms + "+02:00"
    return _ts(t - 18000) + "-05:00"


def _meta(rng: random.Random, t: int) -> dict | None:
    """``meta`` with lastUpdated at ``t`` (capped to 2015..2024); None for ~1% of resources."""
    if rng.random() < 0.01:
        return None
    t = min(max(t, _T2015), _T2025 - 1)
    return {"versionId": str(1 + int(rng.random() ** 4 * 4)), "lastUpdated": _instant(rng, t)}


def _out(res: dict) -> dict:
    """Drops the ``meta`` placeholder when it is None (resource without meta)."""
    if res["meta"] is None:
        del res["meta"]
    return res


def _name(rng: random.Random, gender: str) -> tuple[str, str, str]:
    female = gender == "female" or (gender != "male" and rng.random() < 0.5)
    given = _GIVEN_F if female else _GIVEN_M
    return rng.choice(given), rng.choice(given), rng.choice(_FAMILY)


def _address(rng: random.Random) -> dict:
    city, state, zip3 = rng.choice(_CITIES)
    return {"use": "home", "line": [f"{rng.randrange(1, 9999)} {rng.choice(_STREETS)}"],
            "city": city, "state": state, "postalCode": f"{zip3}{rng.randrange(100):02d}",
            "country": "US"}


def _phone(rng: random.Random) -> str:
    return f"{rng.randrange(200, 999)}-555-{rng.randrange(10**4):04d}"


def _ref(kind: str, rid: str) -> dict:
    return {"reference": f"{kind}/{rid}"}


def iter_resources(patients: int, seed: int = 42) -> Iterator[dict]:
    """Yields Organizations, Practitioners, each Patient with its clinical data, then Groups.

    Constant nested parts (e.g. category codings) are shared between resources: copy
    a resource before mutating it in place.
    """
    if patients < 0:
        raise Refused("patients must be >= 0")
    rng = random.Random(seed)
    rand, choice, randrange, randint = rng.random, rng.choice, rng.randrange, rng.randint
    n_org, n_prac = max(2, round(patients / 20)), max(2, round(patients / 10))
    org_id, prac_id = "org-{:05d}".format, "prac-{:05d}".format  # ids are 1-based indices
    span = _T2025 - _T2015
    for o in range(1, n_org + 1):
        meta = _meta(rng, _T2015 + int(rand() * span))
        yield _out({
            "resourceType": "Organization", "id": org_id(o), "meta": meta,
            "identifier": [{"system": _NPI, "value": f"1{randrange(10**9):09d}"}],
            "active": True, "type": _ORG_TYPE,
            "name": f"{choice(_CITIES)[0]} {choice(_ORG_KINDS)}",
            "telecom": [{"system": "phone", "value": _phone(rng)}], "address": [_address(rng)]})
    for pr in range(1, n_prac + 1):
        gender = "female" if rand() < 0.5 else "male"
        given, _, family = _name(rng, gender)
        meta = _meta(rng, _T2015 + int(rand() * span))
        yield _out({
            "resourceType": "Practitioner", "id": prac_id(pr), "meta": meta,
            "identifier": [{"system": _NPI, "value": f"{choice('12')}{randrange(10**9):09d}"}],
            "active": True, "name": [{"family": family, "given": [given], "prefix": ["Dr."]}],
            "gender": gender, "address": [_address(rng)]})

    n_enc = n_obs = n_cond = n_med = 0
    for p in range(1, patients + 1):
        pid = f"pat-{p:06d}"
        pref = _ref("Patient", pid)
        r = rand()
        gender = ("female" if r < 0.49 else "male" if r < 0.98
                  else "other" if r < 0.99 else "unknown")
        given, middle, family = _name(rng, gender)
        birth = _T1930 + int(rand() * (_T2020 - _T1930))
        gp, org = prac_id(randrange(n_prac) + 1), org_id(randrange(n_org) + 1)
        meta = _meta(rng, _T2015 + int(rand() * span))
        yield _out({
            "resourceType": "Patient", "id": pid, "meta": meta,
            "identifier": [{"use": "usual", "type": _MRN_TYPE,
                            "system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN{p:08d}"},
                           {"system": "http://hl7.org/fhir/sid/us-ssn",
                            "value": f"999-{randrange(10, 99)}-{randrange(10**4):04d}"}],
            "active": True,
            "name": [{"use": "official", "family": family, "given": [given, middle],
                      "prefix": [_PREFIX.get(gender, "Mx.")]}],
            "telecom": [{"system": "phone", "value": _phone(rng), "use": "home"},
                        {"system": "email",
                         "value": f"{given.lower()}.{family.lower()}{p}@example.com"}],
            "gender": gender, "birthDate": _ts(birth)[:10], "address": [_address(rng)],
            "maritalStatus": _MARITAL["M" if rand() < 0.5 else "S"], "communication": _ENGLISH,
            "generalPractitioner": [_ref("Practitioner", gp)],
            "managingOrganization": _ref("Organization", org)})

        lo = max(birth, _T2015)
        encs = []  # (encounter reference, start, practitioner reference) of this patient
        for _ in range(randint(1, 5)):
            n_enc += 1
            eid, start = f"enc-{n_enc:08d}", lo + int(rand() * (_T2025 - lo - _DAY))
            doc = _ref("Practitioner", gp if rand() < 0.7 else prac_id(randrange(n_prac) + 1))
            code, disp, cls, cdisp = choice(_ENC_TYPES)
            encs.append((_ref("Encounter", eid), start, doc))
            meta = _meta(rng, start + 7200 + randrange(_DAY))
            yield _out({
                "resourceType": "Encounter", "id": eid, "meta": meta, "status": "finished",
                "class": {"system": _HL7 + "v3-ActCode", "code": cls, "display": cdisp},
                "type": [_cc(_SNOMED, code, disp, disp)], "subject": pref,
                "participant": [{"type": _PRIMARY, "individual": doc}],
                "period": {"start": _ts(start) + "Z",
                           "end": _ts(start + randrange(900, 7200)) + "Z"},
                "serviceProvider": _ref("Organization", org)})
        for _ in range(randint(3, 16)):
            n_obs += 1
            eref, start, doc = choice(encs)
            i = randrange(len(_OBS))
            code, disp, unit, low, high, dec = _OBS[i]
            value = low + rand() * (high - low)
            t = start + randrange(3600)
            meta = _meta(rng, t + randrange(7 * _DAY))
            yield _out({
                "resourceType": "Observation", "id": f"obs-{n_obs:09d}", "meta": meta,
                "status": "final" if rand() < 0.95 else "amended",
                "category": _VITAL if i < 9 else _LAB, "code": _cc(_LOINC, code, disp, disp),
                "subject": pref, "encounter": eref,
                "effectiveDateTime": _ts(t) + "Z", "issued": _ts(t + 600) + ".000Z",
                "performer": [doc],
                "valueQuantity": {"value": round(value, dec) if dec else int(value), "unit": unit,
                                  "system": _UCUM, "code": unit}})
        for _ in range(randint(0, 3)):
            n_cond += 1
            eref, start, _doc = choice(encs)
            code, disp = choice(_CONDITIONS)
            active = rand() < 0.6
            meta = _meta(rng, start + randrange(30 * _DAY))
            res = {
                "resourceType": "Condition", "id": f"cond-{n_cond:08d}", "meta": meta,
                "clinicalStatus": _cc(_HL7 + "condition-clinical",
                                      "active" if active else "resolved"),
                "verificationStatus": _VERIFIED, "category": _COND_CAT,
                "code": _cc(_SNOMED, code, disp, disp), "subject": pref, "encounter": eref,
                "onsetDateTime": _ts(start) + "Z", "recordedDate": _ts(start + 1800) + "Z"}
            if not active:
                res["abatementDateTime"] = _ts(start + randrange(7, 60) * _DAY) + "Z"
            yield _out(res)
        for _ in range(randint(0, 3)):
            n_med += 1
            eref, start, doc = choice(encs)
            code, disp = choice(_MEDS)
            r = rand()
            meta = _meta(rng, start + randrange(30 * _DAY))
            yield _out({
                "resourceType": "MedicationRequest", "id": f"medrx-{n_med:08d}", "meta": meta,
                "status": "active" if r < 0.5 else "completed" if r < 0.9 else "stopped",
                "intent": "order", "medicationCodeableConcept": _cc(_RXNORM, code, disp, disp),
                "subject": pref, "encounter": eref, "authoredOn": _ts(start + 2400) + "Z",
                "requester": doc, "dosageInstruction": [{"sequence": 1, "text": choice(_DOSING)}]})

    n_groups = max(1, patients // 25)
    for g in range(n_groups):
        members = []
        for p in range(g + 1, patients + 1, n_groups):  # patient p is in group (p - 1) % n_groups
            m = {"entity": _ref("Patient", f"pat-{p:06d}")}
            if rand() < 0.2:  # ~70% of membership periods ended in the past, the rest are open
                start = _T2015 + int(rand() * (span - 400 * _DAY))
                end = (start + randrange(30, 400) * _DAY if rand() < 0.7
                       else _T2025 + randrange(365, 2000) * _DAY)
                m["period"] = {"start": _ts(start)[:10], "end": _ts(end)[:10]}
            if rand() < 0.1:
                m["inactive"] = True
            members.append(m)
        meta = _meta(rng, _T2015 + int(rand() * span))
        yield _out({
            "resourceType": "Group", "id": f"grp-{g + 1:05d}", "meta": meta,
            "identifier": [{"system": "urn:example:cohort", "value": f"COHORT-{g + 1:05d}"}],
            "active": True, "type": "person", "actual": True, "name": f"Sample cohort {g + 1}",
            "quantity": len(members), "managingEntity": _ref("Organization", org_id(g % n_org + 1)),
            "member": members})


def generate(out_dir: str | os.PathLike, patients: int, seed: int = 42) -> dict[str, int]:
    """Writes one `<Type>.ndjson` file per resource type into out_dir; returns {type: count}."""
    os.makedirs(out_dir, exist_ok=True)
    counts = dict.fromkeys(RESOURCE_TYPES, 0)
    dumps = orjson.dumps
    with ExitStack() as stack:
        files = {t: stack.enter_context(open(os.path.join(out_dir, f"{t}.ndjson"), "wb",
                                             buffering=1 << 20))
                 for t in RESOURCE_TYPES}
        writes = {t: f.write for t, f in files.items()}
        for res in iter_resources(patients, seed):
            rtype = res["resourceType"]
            writes[rtype](dumps(res) + b"\n")
            counts[rtype] += 1
    return counts
