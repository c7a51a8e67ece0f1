#!/usr/bin/env python
"""Synthea-sized FHIR R4 NDJSON for benchmarks: a real export's mix of types and bytes per type.

`generate(out_dir, patients, seed)` writes one `<Type>.ndjson` per type, as
`launcher.tools.sample_data.generate` does (deterministic in `(patients, seed)`, streamed);
each type's share of the resources and size distribution follow `SYNTHEA`. The caller
stages the folder (`benchmarks.bench_common.ensure_data` renames it into place when
complete). The resources themselves are built in `benchmarks/realistic_resources.py`.
`python benchmarks/realistic_data.py DIR` prints the figures of `SYNTHEA` for any folder
of `.ndjson` or `.ndjson.gz` files, one per type.
"""

from __future__ import annotations

import gzip
import math
import os
import random
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable as a plain script

from benchmarks import realistic_resources as build  # noqa: E402
from launcher.tools import sample_data as sd  # noqa: E402

# Measured on the shared Synthea export (../shared/data/synthea-100: 100 patients, 38,483 resources, 1,280 bytes
# a line on average; none has meta, which the generated resources add) by
#     .venv/bin/python benchmarks/realistic_data.py ../shared/data/synthea-100
# type: (share of the resources, mean bytes per line, 10th and 90th percentile bytes per line)
SYNTHEA: dict[str, tuple[float, int, int, int]] = {
    "Observation": (0.4240, 732, 672, 783),
    "Claim": (0.1581, 1344, 1046, 1943),
    "Encounter": (0.0961, 1047, 1001, 1117),
    "ExplanationOfBenefit": (0.0961, 4979, 2666, 7774),
    "MedicationRequest": (0.0620, 696, 605, 804),
    "Procedure": (0.0611, 613, 478, 857),
    "Immunization": (0.0334, 491, 439, 516),
    "DiagnosticReport": (0.0233, 1479, 979, 2365),
    "Condition": (0.0166, 722, 667, 762),
    "CarePlan": (0.0072, 1483, 1302, 1880),
    "CareTeam": (0.0072, 1364, 1296, 1416),
    "Organization": (0.0053, 674, 551, 994),
    "Practitioner": (0.0053, 469, 437, 560),
    "Patient": (0.0026, 2618, 2228, 2763),
    "AllergyIntolerance": (0.0010, 652, 643, 659),
    "ImagingStudy": (0.0004, 954, 950, 960),
    "Group": (0.0002, 1166, 456, 2234),
    "Device": (0.0001, 782, 774, 789),
    "DocumentReference": (0.0001, 5436, 765, 14773),
}
RESOURCE_TYPES = tuple(sorted(SYNTHEA))
RESOURCES_PER_PATIENT = 1 / SYNTHEA["Patient"][0]  # about 385: a Synthea patient carries a whole history
PER_PATIENT = {t: share * RESOURCES_PER_PATIENT for t, (share, *_) in SYNTHEA.items()}


class Shared(NamedTuple):
    """What the resources outside any patient are built from: the generator, and a Group's members."""

    rng: random.Random
    members: tuple[str, ...] = ()


def _sized(ctx, res: dict) -> tuple[str, bytes]:
    """`res` as one NDJSON line of about a size drawn from its type's distribution in `SYNTHEA`.

    The size is the 10th percentile plus an exponential draw whose mean brings it to the
    type's mean; the type's repeating element (`build.GROW`) is appended until the line is
    as close to that size as whole elements allow. A line already longer stays as it is.
    """
    rtype = res["resourceType"]
    _, mean, p10, _ = SYNTHEA[rtype]
    target = p10 + (mean - p10) * -math.log(1.0 - ctx.rng.random())
    field, make = build.GROW[rtype]
    line = orjson.dumps(res)
    while len(line) < target:
        items = res.setdefault(field, [])
        items.append(make(ctx, len(items)))
        longer = orjson.dumps(res)
        if len(longer) - target > target - len(line):  # closer to the target without it
            items.pop()
            if not items:
                del res[field]
            break
        line = longer
    return rtype, line + b"\n"


def _count(rng: random.Random, mean: float) -> int:
    """A count whose expectation is `mean`, spread between half and one and a half times it."""
    return int(mean * (0.5 + rng.random()) + rng.random())


def _organization(shared: Shared) -> tuple[dict, dict]:
    """(a reference to it with display, an Organization)."""
    rng, oid = shared.rng, build.uid(shared.rng)
    name = f"{rng.choice(sd._CITIES)[0]} {rng.choice(sd._ORG_KINDS)}".upper()
    res = {"resourceType": "Organization", "id": oid, "meta": _meta(rng),
           "identifier": [{"system": "https://github.com/synthetichealth/synthea", "value": oid}], "active": True,
           "type": [sd._cc(sd._HL7 + "organization-type", "prov", "Healthcare Provider", "Healthcare Provider")],
           "name": name, "telecom": [{"system": "phone", "value": sd._phone(rng)}], "address": [sd._address(rng)]}
    return {"reference": f"Organization/{oid}", "display": name}, sd._out(res)


def _practitioner(shared: Shared) -> tuple[dict, dict]:
    """(a reference to them with display, a Practitioner)."""
    rng, pid = shared.rng, build.uid(shared.rng)
    gender = rng.choice(("female", "male"))
    given, _, family = sd._name(rng, gender)
    res = {"resourceType": "Practitioner", "id": pid, "meta": _meta(rng),
           "identifier": [{"system": sd._NPI, "value": f"99999{rng.randrange(10**5):05d}"}],
           "name": [{"family": family, "given": [given], "prefix": ["Dr."]}],
           "telecom": [{"system": "email", "value": f"{given}.{family}@example.com", "use": "work"}],
           "address": [sd._address(rng)], "gender": gender}
    return {"reference": f"Practitioner/{pid}", "display": f"Dr. {given} {family}"}, sd._out(res)


def _group(shared: Shared, number: int) -> dict:
    """A Group of `shared.members` (more are added to its size), referenced as Synthea's are: `urn:uuid:`."""
    return sd._out({"resourceType": "Group", "id": build.uid(shared.rng), "meta": _meta(shared.rng),
                    "type": "person", "actual": True, "name": f"Cohort {number}",
                    "member": [{"entity": {"reference": f"urn:uuid:{shared.members[0]}"}}]})


def _meta(rng: random.Random) -> dict | None:
    return sd._meta(rng, rng.randrange(sd._T2015, sd._T2025))


def iter_lines(patients: int, seed: int = 42):
    """Yields `(type, NDJSON line)`: Organizations, Practitioners, each patient's resources, then Groups."""
    if patients < 0:
        raise ValueError("patients must be >= 0")
    rng = random.Random(seed)
    shared = Shared(rng)
    orgs, pracs = [], []
    for kind, make, refs in (("Organization", _organization, orgs), ("Practitioner", _practitioner, pracs)):
        for _ in range(max(1, round(patients * PER_PATIENT[kind]))):
            ref, res = make(shared)
            refs.append(ref)
            yield _sized(shared, res)
    patient_ids = []
    for _ in range(patients):
        p, res = build.new_patient(rng)
        patient_ids.append(p.pid)
        yield _sized(p, res)
        for v in build.new_visits(p, _count(rng, PER_PATIENT["Encounter"]), pracs, orgs):
            p.now = v
            yield _sized(p, build.encounter(p, v))
            claim_id = p.uid()
            yield _sized(p, build.claim(p, v, claim_id, sd._cc(sd._SNOMED, *v.code, v.code[1])))
            yield _sized(p, build.benefit(p, v, claim_id))
        for kind, make in build.CLINICAL:
            for _ in range(_count(rng, PER_PATIENT[kind])):
                yield _sized(p, make(p, p.visit()))
        for _ in range(_count(rng, PER_PATIENT["MedicationRequest"])):  # each with its Claim, as Synthea writes
            res = build.medication(p, p.visit())
            yield _sized(p, res)
            yield _sized(p, build.claim(p, p.now, p.uid(), res["medicationCodeableConcept"]))
        for _ in range(_count(rng, PER_PATIENT["CarePlan"])):  # each with its CareTeam
            team = p.uid()
            yield _sized(p, build.care_plan(p, p.visit(), team))
            yield _sized(p, build.care_team(p, p.now, team))
    groups = round(patients * PER_PATIENT["Group"])
    for g in range(groups):
        members = Shared(rng, tuple(patient_ids[g::groups]))
        yield _sized(members, _group(members, g + 1))


def generate(out_dir: str | os.PathLike, patients: int, seed: int = 42) -> dict[str, int]:
    """Writes one `<Type>.ndjson` file per resource type into out_dir; returns {type: count}."""
    os.makedirs(out_dir, exist_ok=True)
    counts = dict.fromkeys(RESOURCE_TYPES, 0)
    with ExitStack() as stack:
        writes = {t: stack.enter_context(open(os.path.join(out_dir, f"{t}.ndjson"), "wb", buffering=1 << 20)).write
                  for t in RESOURCE_TYPES}
        for rtype, line in iter_lines(patients, seed):
            writes[rtype](line)
            counts[rtype] += 1
    return counts


def measure(folder: str | os.PathLike) -> dict[str, tuple[int, float, int, int]]:
    """{type: (lines, mean bytes per line, 10th and 90th percentile)} of the `<Type>.ndjson[.gz]` files in folder."""
    figures = {}
    for path in sorted(Path(folder).iterdir()):
        if not path.name.endswith((".ndjson", ".ndjson.gz")):
            continue
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            sizes = sorted(len(line.rstrip(b"\n")) for line in f if line.strip())
        if sizes:
            n = len(sizes)
            figures[path.name.split(".")[0]] = (n, sum(sizes) / n, sizes[int(0.1 * n)], sizes[min(n - 1, int(0.9 * n))])
    return figures


def main(argv=None) -> None:
    folder = (sys.argv[1:] if argv is None else argv)[0]
    figures = measure(folder)
    lines, size = sum(f[0] for f in figures.values()), sum(f[0] * f[1] for f in figures.values())
    print(f"{folder}: {lines:,} lines, {size / max(1, lines):,.0f} bytes a line on average")
    for rtype, (n, mean, p10, p90) in sorted(figures.items(), key=lambda item: -item[1][0]):
        print(f'    "{rtype}": ({n / lines:.4f}, {mean:.0f}, {p10}, {p90}),')


if __name__ == "__main__":
    main()
