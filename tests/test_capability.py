"""The CapabilityStatement a client plans from (IG v3, "Server Capability Documentation"), over real HTTP:
per type the `_typeFilter` search parameters, checked against what the search compiler accepts, the
interactions served, `software`, and `operation-not-supported` where a served type cannot be exported."""

from __future__ import annotations

import importlib.metadata
from urllib.parse import quote

import httpx
import pytest

from launcher.kickoff.parser import KickoffRefused, parse_get
from launcher.server.metadata_api import REST_ONLY, capability_statement
from tests.server_process import serve
from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.search.registry import search_parameters

EXPORT = "http://x/fhir/$export"
BULK = "http://hl7.org/fhir/uv/bulkdata"
NOT_SUPPORTED = BULK + "/Extension/operation-not-supported"
SERVED = {"Group": ("read", "search-type"), "Organization": ("read",), "Practitioner": ("read",)}
VALUES = {"token": "x", "string": "x", "date": "2020", "reference": "x", "uri": "http://x", "number": "1",
          "quantity": "1"}


@pytest.fixture(scope="module")
def statement(tmp_path_factory, sample_dir) -> dict:
    root = tmp_path_factory.mktemp("capability")
    with serve(sample_dir, root / "out", root / "state") as server:
        response = httpx.get(server.fhir + "/metadata", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/fhir+json")
    return response.json()


def _by_type(statement: dict) -> dict[str, dict]:
    return {r["type"]: r for r in statement["rest"][0]["resource"]}


def test_software_names_the_package_and_its_version(statement):
    assert statement["software"] == {"name": "fhir-bulk-export-beam",
                                     "version": importlib.metadata.version("fhir-bulk-export-beam")}


def test_every_type_lists_its_typefilter_parameters_and_lastupdated(statement):
    by_type = _by_type(statement)
    assert set(by_type) == set(RESOURCE_TYPES)
    for name, resource in by_type.items():
        params = {p["name"]: p["type"] for p in resource["searchParam"]}
        assert params["_lastUpdated"] == "date", name  # what smart-fetch looks for before sending _since
        served = SERVED.get(name, ())  # the types the sample source holds that REST reads serve
        assert resource["interaction"] == [{"code": code} for code in served], name
        if not served:
            assert "extension" not in resource, name
    patient = {p["name"] for p in by_type["Patient"]["searchParam"]}
    assert {"birthdate", "gender", "identifier", "name", "general-practitioner"} <= patient


def _type_filter_url(resource_type: str, params: list[tuple[str, str]]) -> str:
    query = "&".join(f"{name}={VALUES[kind]}" for name, kind in params)
    return f"{EXPORT}?_type={resource_type}&_typeFilter={quote(f'{resource_type}?{query}', safe='')}"


def test_each_listed_parameter_is_accepted_in_a_typefilter(statement):
    rest_only = [(name, p["name"]) for name, resource in _by_type(statement).items()
                 for p in resource["searchParam"] if p.get("documentation") == REST_ONLY]
    assert rest_only == [("Group", "name")]  # R5's Group name search, served by GET [base]/Group only
    for name, resource in _by_type(statement).items():
        params = [(p["name"], p["type"]) for p in resource["searchParam"] if p.get("documentation") != REST_ONLY]
        request = parse_get(_type_filter_url(name, params))  # strict: one refused parameter fails the kick-off
        assert len(request.type_filters) == 1, name


def test_each_parameter_not_listed_is_refused_under_strict_handling(statement):
    refused = 0
    for name, resource in _by_type(statement).items():
        listed = {p["name"] for p in resource["searchParam"]}
        for param, definition in [*search_parameters(name).items(), ("no-such-param", None)]:
            if param in listed:
                continue
            kind = definition.type if definition and definition.type in VALUES else "token"
            with pytest.raises(KickoffRefused) as exc:
                parse_get(_type_filter_url(name, [(param, kind)]))
            assert exc.value.parameter == "_typeFilter" and repr(param) in exc.value.reason
            refused += 1
    assert refused > len(RESOURCE_TYPES)  # composite and special parameters are among them


def test_a_served_type_an_export_level_cannot_export_says_so():
    served = {"Group": ("read", "search-type"), "Practitioner": ("read",), "Observation": ("read",)}
    by_type = _by_type(capability_statement("http://x/fhir", interactions=served))

    def unsupported(name: str) -> list[str]:
        return [e["valueCanonical"].rsplit("/", 1)[1] for e in by_type[name].get("extension", [])
                if e["url"] == NOT_SUPPORTED]

    assert by_type["Group"]["interaction"] == [{"code": "read"}, {"code": "search-type"}]
    assert unsupported("Group") == ["patient-export"]  # a Group-level export can name Group in _type
    # A type outside the compartment is exported at Patient and Group level as supporting resources.
    assert unsupported("Practitioner") == []
    assert unsupported("Observation") == [] and unsupported("Patient") == []
