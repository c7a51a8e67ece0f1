"""The resources of `benchmarks/realistic_data.py`: one builder per FHIR R4 type, shaped as Synthea writes them.

Each builder returns a resource at about its type's smallest realistic size; `GROW`
names the element each type repeats (Claim and ExplanationOfBenefit items,
DiagnosticReport results, Patient extensions, ...) to reach the size drawn for it.
References point at generated resources (except, as in Synthea's export, CareTeam members'
`urn:uuid:` ones), and every Patient-compartment type names its patient where R4's
compartment definition looks (`subject`, `patient`).
"""

from __future__ import annotations

import base64
import random
import uuid
from typing import NamedTuple

from launcher.tools import sample_data as sd

# launcher.tools.sample_data's helpers and codes (private there): the two generators spell codes, dates and meta alike.
_cc, _meta, _out, _ts, _name, _address, _phone = sd._cc, sd._meta, sd._out, sd._ts, sd._name, sd._address, sd._phone
_HL7, _LOINC, _SNOMED, _UCUM, _RXNORM = sd._HL7, sd._LOINC, sd._SNOMED, sd._UCUM, sd._RXNORM
_OBS, _CONDITIONS, _MEDS, _DOSING, _ENC_TYPES = sd._OBS, sd._CONDITIONS, sd._MEDS, sd._DOSING, sd._ENC_TYPES
_CITIES, _DAY, _T1930, _T2015, _T2020, _T2025 = sd._CITIES, sd._DAY, sd._T1930, sd._T2015, sd._T2020, sd._T2025
T2010 = 1262304000  # 2010-01-01T00:00:00Z

_SYNTHEA_EXT = "http://synthetichealth.github.io/synthea/"
_USD = "USD"
_PROCEDURES = (("430193006", "Medication Reconciliation (procedure)"), ("710824005", "Assessment of health and "
               "social care needs (procedure)"), ("171207006", "Depression screening (procedure)"),
               ("428191000124101", "Documentation of current medications (procedure)"),
               ("76601001", "Intramuscular injection"), ("252160004", "Standard pregnancy test"))
_VACCINES = (("140", "Influenza, seasonal, injectable, preservative free"), ("113", "Td (adult) preservative free"),
             ("133", "Pneumococcal conjugate PCV 13"), ("08", "Hep B, adolescent or pediatric"))
_PANELS = (("58410-2", "Complete blood count (hemogram) panel - Blood by Automated count"),
           ("51990-0", "Basic metabolic panel - Blood"), ("57698-3", "Lipid panel with direct LDL - Serum or Plasma"))
_PLANS = (("698360004", "Diabetes self management plan"), ("384758001", "Self-care interventions (procedure)"),
          ("736376001", "Infectious disease care plan (record artifact)"))
_ACTIVITIES = (("160670007", "Diabetic diet"), ("229065009", "Exercise therapy"), ("409063005", "Counseling"),
               ("405783006", "Psychological assessment"), ("226234005", "Healthy diet"))
_ALLERGIES = (("232347008", "Dander (animal) allergy"), ("300916003", "Latex allergy"),
              ("91935009", "Allergy to peanuts"), ("419474003", "Allergy to mould"))
_ADJUDICATION = ("submitted", "copay", "benefit")
_PPRF = _cc(_HL7 + "v3-ParticipationType", "PPRF", "primary performer", "primary performer")
_ID_TYPES = (("MR", "Medical Record Number"), ("SS", "Social Security Number"), ("DL", "Driver's License"),
             ("PPN", "Passport Number"))
_NOTE = ("Patient presents with the reported complaints. Vitals reviewed, history updated, plan discussed and "
         "agreed with the patient; follow up as scheduled. ").encode() * 8


class Visit(NamedTuple):
    """One encounter, as the resources recorded during it refer to it."""

    id: str
    ref: dict
    t: int  # epoch seconds of its start
    period: dict
    prac: dict  # Practitioner reference with display
    org: dict  # Organization reference with display
    code: tuple[str, str]  # its SNOMED type


class PatientData:
    """What one patient's resources share: the generator, the patient's references, their visits so far."""

    def __init__(self, rng: random.Random, pid: str, display: str, birth: int):
        self.rng, self.pid, self.birth = rng, pid, birth
        self.ref = {"reference": f"Patient/{pid}"}
        self.named = {"reference": f"Patient/{pid}", "display": display}
        self.visits: list[Visit] = []
        self.now: Visit | None = None  # the visit whose resource is being built
        self.observations: list[dict] = []  # Observation references with display, for DiagnosticReport.result
        self.conditions: list[dict] = []

    def uid(self) -> str:
        return uid(self.rng)

    def meta(self, t: int) -> dict | None:
        return _meta(self.rng, t + self.rng.randrange(30 * _DAY))

    def visit(self) -> Visit:
        self.now = self.rng.choice(self.visits)
        return self.now


def uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def dt(t: int) -> str:
    """A FHIR dateTime as Synthea writes it (local time, UTC-4)."""
    return _ts(t - 14400) + "-04:00"


def _money(rng: random.Random, high: float) -> dict:
    return {"value": round(rng.uniform(5.0, high), 2), "currency": _USD}


# ---------------------------------------------------------------- one builder per type, then what each repeats

def patient(p: PatientData, gender: str, given: str, family: str) -> dict:
    rng, birth = p.rng, p.birth
    city, state, zip3 = rng.choice(_CITIES)
    ids = [{"system": "https://github.com/synthetichealth/synthea", "value": p.pid}]
    for code, text in _ID_TYPES[: rng.randint(2, 4)]:
        ids.append({"type": _cc(_HL7 + "v2-0203", code, text, text), "system": "urn:oid:2.16.840.1.113883.4.3.25",
                    "value": f"S{rng.randrange(10**8):08d}"})
    return _out({
        "resourceType": "Patient", "id": p.pid, "meta": _meta(rng, rng.randrange(_T2015, _T2025)),
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Generated by <a href='
                 '"https://github.com/synthetichealth/synthea">Synthea</a>. Person seed: '
                 f"{rng.getrandbits(62)}  Population seed: 1588766244164</div>"},
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                       "valueString": f"{rng.choice(('Ester', 'Ana', 'Mary'))} {rng.choice(('Lopez', 'Kim', 'Roe'))}"},
                      {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                       "valueAddress": {"city": city, "state": state, "country": "US"}},
                      {"url": _SYNTHEA_EXT + "disability-adjusted-life-years", "valueDecimal": rng.random()}],
        "identifier": ids, "name": [{"use": "official", "family": family, "given": [given], "prefix": ["Mx."]}],
        "telecom": [{"system": "phone", "value": _phone(rng), "use": "home"}],
        "gender": gender, "birthDate": _ts(birth)[:10],
        "address": [{"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/geolocation", "extension": [
            {"url": "latitude", "valueDecimal": rng.uniform(25, 48)},
            {"url": "longitude", "valueDecimal": rng.uniform(-122, -71)}]}],
            **_address(rng)}],
        "maritalStatus": _cc(_HL7 + "v3-MaritalStatus", "S", "Never Married", "Never Married"),
        "multipleBirthBoolean": False, "communication": [{"language": _cc("urn:ietf:bcp:47", "en-US", "English")}]})


def encounter(p: PatientData, v: Visit) -> dict:
    cls = "AMB" if v.code[0] != "50849002" else "EMER"
    return _out({
        "resourceType": "Encounter", "id": v.id, "meta": p.meta(v.t), "status": "finished",
        "class": {"system": _HL7 + "v3-ActCode", "code": cls}, "type": [_cc(_SNOMED, *v.code, v.code[1])],
        "subject": p.named, "participant": [{"type": [_PPRF], "period": v.period, "individual": v.prac}],
        "period": v.period, "serviceProvider": v.org})


def observation(p: PatientData, v: Visit) -> dict:
    rng = p.rng
    i = rng.randrange(len(_OBS))
    code, disp, unit, low, high, dec = _OBS[i]
    value = low + rng.random() * (high - low)
    oid = p.uid()
    p.observations.append({"reference": f"Observation/{oid}", "display": disp})
    category = "vital-signs" if i < 9 else "laboratory"
    return _out({
        "resourceType": "Observation", "id": oid, "meta": p.meta(v.t), "status": "final",
        "category": [_cc(_HL7 + "observation-category", category, category)], "code": _cc(_LOINC, code, disp, disp),
        "subject": p.ref, "encounter": v.ref, "effectiveDateTime": dt(v.t), "issued": _ts(v.t) + ".139Z",
        "valueQuantity": {"value": round(value, dec) if dec else int(value), "unit": unit, "system": _UCUM,
                          "code": unit}})


def condition(p: PatientData, v: Visit) -> dict:
    code, disp = p.rng.choice(_CONDITIONS)
    cid = p.uid()
    p.conditions.append({"reference": f"Condition/{cid}"})
    return _out({
        "resourceType": "Condition", "id": cid, "meta": p.meta(v.t),
        "clinicalStatus": _cc(_HL7 + "condition-clinical", "active"),
        "verificationStatus": _cc(_HL7 + "condition-ver-status", "confirmed"),
        "code": _cc(_SNOMED, code, disp, disp), "subject": p.ref, "encounter": v.ref,
        "onsetDateTime": dt(v.t), "recordedDate": dt(v.t)})


def medication(p: PatientData, v: Visit) -> dict:
    code, disp = p.rng.choice(_MEDS)
    res = {"resourceType": "MedicationRequest", "id": p.uid(), "meta": p.meta(v.t), "status": "active",
           "intent": "order", "medicationCodeableConcept": _cc(_RXNORM, code, disp, disp), "subject": p.ref,
           "encounter": v.ref, "authoredOn": dt(v.t), "requester": v.prac}
    if p.conditions:
        res["reasonReference"] = [p.rng.choice(p.conditions)]
    return _out(res)


def procedure(p: PatientData, v: Visit) -> dict:
    code, disp = p.rng.choice(_PROCEDURES)
    return _out({
        "resourceType": "Procedure", "id": p.uid(), "meta": p.meta(v.t), "status": "completed",
        "code": _cc(_SNOMED, code, disp, disp), "subject": p.ref, "encounter": v.ref,
        "performedPeriod": {"start": dt(v.t), "end": dt(v.t + 900)}})


def immunization(p: PatientData, v: Visit) -> dict:
    code, disp = p.rng.choice(_VACCINES)
    return _out({
        "resourceType": "Immunization", "id": p.uid(), "meta": p.meta(v.t), "status": "completed",
        "vaccineCode": _cc("http://hl7.org/fhir/sid/cvx", code, disp, disp), "patient": p.ref, "encounter": v.ref,
        "occurrenceDateTime": dt(v.t), "primarySource": True})


def report(p: PatientData, v: Visit) -> dict:
    code, disp = p.rng.choice(_PANELS)
    return _out({
        "resourceType": "DiagnosticReport", "id": p.uid(), "meta": p.meta(v.t), "status": "final",
        "category": [_cc(_HL7 + "v2-0074", "LAB", "Laboratory")], "code": _cc(_LOINC, code, disp, disp),
        "subject": p.ref, "encounter": v.ref, "effectiveDateTime": dt(v.t), "issued": _ts(v.t) + ".020Z",
        "result": [_result(p, 0)]})


def care_plan(p: PatientData, v: Visit, team: str) -> dict:
    code, disp = p.rng.choice(_PLANS)
    res = {"resourceType": "CarePlan", "id": p.uid(), "meta": p.meta(v.t),
           "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">Care Plan for {disp}.'
                    "<br/>Activities: <ul><li>" + disp + "</li></ul></div>"},
           "status": "active", "intent": "order", "category": [_cc(_SNOMED, code, disp, disp)], "subject": p.ref,
           "encounter": v.ref, "period": {"start": dt(v.t)}, "careTeam": [{"reference": f"CareTeam/{team}"}],
           "activity": [_activity(p, 0)]}
    if p.conditions:
        res["addresses"] = [p.rng.choice(p.conditions)]
    return _out(res)


def care_team(p: PatientData, v: Visit, tid: str) -> dict:
    member = {"role": [_cc(_SNOMED, "116153009", "Patient", "Patient")], "member": p.named}
    return _out({
        "resourceType": "CareTeam", "id": tid, "meta": p.meta(v.t), "status": "active", "subject": p.ref,
        "encounter": v.ref, "period": {"start": dt(v.t)}, "participant": [member, _team_member(p, 0)],
        "reasonCode": [_cc(_SNOMED, *p.rng.choice(_CONDITIONS))], "managingOrganization": [v.org]})


def allergy(p: PatientData, v: Visit) -> dict:
    code, disp = p.rng.choice(_ALLERGIES)
    return _out({
        "resourceType": "AllergyIntolerance", "id": p.uid(), "meta": p.meta(v.t),
        "clinicalStatus": _cc(_HL7 + "allergyintolerance-clinical", "active"),
        "verificationStatus": _cc(_HL7 + "allergyintolerance-verification", "confirmed"),
        "type": "allergy", "category": ["environment"], "criticality": "low",
        "code": _cc(_SNOMED, code, disp, disp), "patient": p.ref, "recordedDate": dt(v.t)})


def imaging(p: PatientData, v: Visit) -> dict:
    return _out({
        "resourceType": "ImagingStudy", "id": p.uid(), "meta": p.meta(v.t),
        "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": f"urn:oid:1.2.840.{p.pid[:8]}"}],
        "status": "available", "subject": p.ref, "encounter": v.ref, "started": dt(v.t), "numberOfSeries": 1,
        "numberOfInstances": 1,
        "procedureCode": [_cc(_SNOMED, "168731009", "Standard chest X-ray", "Standard chest X-ray")],
        "series": [_series(p, 0)]})


def device(p: PatientData, v: Visit) -> dict:
    serial = f"{p.rng.randrange(10**14):014d}"
    return _out({
        "resourceType": "Device", "id": p.uid(), "meta": p.meta(v.t),
        "udiCarrier": [{"deviceIdentifier": serial, "carrierHRF": f"(01){serial}(11)960810(17)210825(21){serial}"}],
        "status": "active", "distinctIdentifier": serial, "manufactureDate": dt(v.t - 400 * _DAY),
        "expirationDate": dt(v.t + 2000 * _DAY), "lotNumber": serial[::-1], "serialNumber": serial,
        "deviceName": [{"name": "Implantable cardiac pacemaker (physical object)", "type": "user-friendly-name"}],
        "type": _cc(_SNOMED, "706004007", "Implantable cardiac pacemaker (physical object)"), "patient": p.ref})


def document(p: PatientData, v: Visit) -> dict:
    return _out({
        "resourceType": "DocumentReference", "id": p.uid(), "meta": p.meta(v.t), "status": "current",
        "type": _cc(_LOINC, "34117-2", "History and physical note", "History and physical note"),
        "subject": p.ref, "date": dt(v.t), "author": [v.prac], "custodian": v.org,
        "context": {"encounter": [v.ref], "period": v.period}, "content": [_attachment(p, 0)]})


def claim(p: PatientData, v: Visit, cid: str, product: dict) -> dict:
    return _out({
        "resourceType": "Claim", "id": cid, "meta": p.meta(v.t), "status": "active",
        "type": _cc(_HL7 + "claim-type", "institutional"), "use": "claim", "patient": p.named,
        "billablePeriod": v.period, "created": v.period["end"], "provider": v.org,
        "priority": _cc(_HL7 + "processpriority", "normal"),
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "Aetna"}}],
        "item": [{"sequence": 1, "productOrService": product, "encounter": [v.ref]}], "total": _money(p.rng, 900)})


def benefit(p: PatientData, v: Visit, claim: str) -> dict:
    rng = p.rng
    return _out({
        "resourceType": "ExplanationOfBenefit", "id": p.uid(), "meta": p.meta(v.t),
        "contained": [{"resourceType": "ServiceRequest", "id": "referral", "status": "completed", "intent": "order",
                       "subject": p.ref, "requester": v.prac, "performer": [v.prac]},
                      {"resourceType": "Coverage", "id": "coverage", "status": "active", "type": {"text": "Aetna"},
                       "beneficiary": p.ref, "payor": [{"display": "Aetna"}]}],
        "identifier": [{"system": "https://bluebutton.cms.gov/resources/variables/clm_id", "value": claim},
                       {"system": "https://bluebutton.cms.gov/resources/identifier/claim-group",
                        "value": "99999999999"}],
        "status": "active", "type": _cc(_HL7 + "claim-type", "institutional"), "use": "claim", "patient": p.ref,
        "billablePeriod": v.period, "created": v.period["end"], "insurer": {"display": "Aetna"}, "provider": v.prac,
        "referral": {"reference": "#referral"}, "claim": {"reference": f"Claim/{claim}"}, "outcome": "complete",
        "careTeam": [{"sequence": 1, "provider": v.prac,
                      "role": _cc(_HL7 + "claimcareteamrole", "primary", "Primary Care Practitioner")}],
        "insurance": [{"focal": True, "coverage": {"reference": "#coverage", "display": "Aetna"}}],
        "item": [_benefit_item(p, 0)],
        "total": [{"category": _cc(_HL7 + "adjudication", "submitted", "Submitted Amount"),
                   "amount": _money(rng, 900)},
                  {"category": _cc(_HL7 + "adjudication", "benefit", "Benefit Amount"), "amount": _money(rng, 700)}],
        "payment": {"amount": _money(rng, 700)}})


def _result(p: PatientData, _: int) -> dict:
    if p.observations:
        return p.rng.choice(p.observations)
    return {"reference": f"urn:uuid:{p.uid()}", "display": "Hemoglobin [Mass/volume] in Blood"}


def _activity(p: PatientData, _: int) -> dict:
    return {"detail": {"code": _cc(_SNOMED, *p.rng.choice(_ACTIVITIES)), "status": "in-progress",
                       "location": {"display": "HALLMARK HEALTH SYSTEM"}}}


def _team_member(p: PatientData, i: int) -> dict:
    role = (("223366009", "Healthcare professional (occupation)"), ("224891009", "Healthcare services"))[i % 2]
    return {"role": [_cc(_SNOMED, *role, role[1])], "member": {"reference": f"urn:uuid:{p.uid()}", "display": "Dr. X"}}


def _series(p: PatientData, i: int) -> dict:
    return {"uid": f"1.2.840.99999999.1.{p.rng.randrange(10**8)}", "number": i + 1,
            "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX"},
            "numberOfInstances": 1, "bodySite": {"system": _SNOMED, "code": "51299004", "display": "Clavicle"},
            "instance": [{"uid": f"1.2.840.99999999.1.1.{p.rng.randrange(10**8)}", "number": 1, "title": "Image"}]}


def _attachment(p: PatientData, _: int) -> dict:
    note = base64.b64encode(_NOTE[: p.rng.randrange(600, 1100)]).decode()
    return {"attachment": {"contentType": "text/plain; charset=utf-8", "data": note}}


def _claim_item(p: PatientData, i: int) -> dict:
    code, disp = p.rng.choice(_PROCEDURES)
    return {"sequence": i + 2, "procedureSequence": [1], "productOrService": _cc(_SNOMED, code, disp, disp),
            "net": _money(p.rng, 800)}


def _benefit_item(p: PatientData, i: int) -> dict:
    rng, v = p.rng, p.now
    code, disp = rng.choice(_PROCEDURES)
    return {"sequence": i + 1, "category": _cc("https://bluebutton.cms.gov/resources/variables/line_cms_type_srvc_cd",
                                               "1", "Medical care"),
            "productOrService": _cc(_SNOMED, code, disp, disp), "servicedPeriod": v.period,
            "locationCodeableConcept": _cc(_HL7 + "ex-serviceplace", "19", "Off Campus-Outpatient Hospital"),
            "encounter": [v.ref], "net": _money(rng, 800),
            "adjudication": [{"category": _cc("https://bluebutton.cms.gov/resources/codesystem/adjudication", kind),
                              "amount": _money(rng, 500)} for kind in _ADJUDICATION]}


# What each type repeats to reach its drawn size: (field, the i-th element to append).
GROW = {
    "Patient": ("extension", lambda p, i: {"url": _SYNTHEA_EXT + "quality-adjusted-life-years",
                                           "valueDecimal": p.rng.uniform(1, 80)}),
    "Encounter": ("reasonCode", lambda p, i: _cc(_SNOMED, *p.rng.choice(_CONDITIONS))),
    "Observation": ("component", lambda p, i: {"code": _cc(_LOINC, "8480-6", "Systolic blood pressure"),
                                               "valueQuantity": {"value": 120, "unit": "mm[Hg]", "system": _UCUM}}),
    "Condition": ("evidence", lambda p, i: {"code": [_cc(_SNOMED, *p.rng.choice(_CONDITIONS))]}),
    "MedicationRequest": ("dosageInstruction", lambda p, i: {"sequence": i + 1, "text": p.rng.choice(_DOSING)}),
    "Procedure": ("reasonCode", lambda p, i: _cc(_SNOMED, *p.rng.choice(_CONDITIONS))),
    "Immunization": ("performer", lambda p, i: {"actor": p.now.prac}),
    "DiagnosticReport": ("result", _result),
    "CarePlan": ("activity", _activity),
    "CareTeam": ("participant", _team_member),
    "AllergyIntolerance": ("reaction", lambda p, i: {"manifestation": [_cc(_SNOMED, "247472004", "Wheal (finding)")],
                                                     "severity": "mild"}),
    "ImagingStudy": ("series", _series),
    "Device": ("deviceName", lambda p, i: {"name": f"Pacemaker {i}", "type": "model-name"}),
    "DocumentReference": ("content", _attachment),
    "Claim": ("item", _claim_item),
    "ExplanationOfBenefit": ("item", _benefit_item),
    "Organization": ("extension", lambda p, i: {"url": _SYNTHEA_EXT + "utilization-labs-extension",
                                                "valueInteger": p.rng.randrange(100)}),
    "Practitioner": ("extension", lambda p, i: {"url": _SYNTHEA_EXT + "utilization-encounters-extension",
                                                "valueInteger": p.rng.randrange(1000)}),
    "Group": ("member", lambda g, i: {"entity": {"reference": f"urn:uuid:{g.members[i % len(g.members)]}"}}),
}
# Per patient, after its Patient and visits (each with its Encounter, Claim and ExplanationOfBenefit): in this
# order, so that MedicationRequests and CarePlans can name Conditions and DiagnosticReports Observations.
CLINICAL = (("Condition", condition), ("Observation", observation), ("Procedure", procedure),
             ("Immunization", immunization), ("DiagnosticReport", report), ("AllergyIntolerance", allergy),
             ("ImagingStudy", imaging), ("Device", device), ("DocumentReference", document))


def new_patient(rng: random.Random) -> tuple[PatientData, dict]:
    """A patient's shared context and its Patient resource."""
    gender = rng.choice(("female", "male"))
    given, _, family = _name(rng, gender)
    birth = _T1930 + int(rng.random() * (_T2020 - _T1930))
    p = PatientData(rng, uid(rng), f"{given} {family}", birth)
    return p, patient(p, gender, given, family)


def new_visits(p: PatientData, n: int, pracs: list[dict], orgs: list[dict]) -> list[Visit]:
    """`n` visits (at least one) between 2010 (or birth) and 2025, in time order; recorded in `p.visits`."""
    rng, lo = p.rng, max(p.birth, T2010)
    for t in sorted(lo + rng.randrange(_T2025 - lo - _DAY) for _ in range(max(1, n))):
        vid = uid(rng)
        code, disp, _, _ = rng.choice(_ENC_TYPES)
        p.visits.append(Visit(vid, {"reference": f"Encounter/{vid}"}, t, {"start": dt(t), "end": dt(t + 900)},
                              rng.choice(pracs), rng.choice(orgs), (code, disp)))
    return p.visits
