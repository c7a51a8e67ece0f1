"""Kick-off checks of issue 14: strict handling by default (item 6) and the small refusals (item 14)."""

from __future__ import annotations

import pytest

from launcher.kickoff.parser import parse_get, parse_post
from tests.helpers import EXPORT, refusal
from transforms.fhir.instant import now_instant

# ---- item 6: strict is the default ----------------------------------------------------------


@pytest.mark.parametrize("query", ["foo=bar", "includeAssociatedData=_custom"])
def test_unsupported_parameters_are_refused_by_default_naming_them(query):
    name = query.split("=")[0]
    for refused in (
        refusal(parse_get, f"{EXPORT}?_type=Patient&{query}"),
        refusal(parse_post, {"resourceType": "Parameters", "parameter": [{"name": name, "valueString": "x"}]}, EXPORT),
    ):
        assert refused.parameter == name and "strict" in refused.reason and "lenient" in refused.reason


def test_lenient_handling_ignores_and_names_them():
    request = parse_get(f"{EXPORT}?_type=Patient&foo=bar", strict=False)
    assert request.ignored == ("foo=bar (is not a Bulk Data kickoff parameter)",)


# ---- item 14 --------------------------------------------------------------------------------


def test_an_unencoded_plus_in_output_format_gets_a_hint():
    refused = refusal(parse_get, f"{EXPORT}?_outputFormat=application/fhir+ndjson")
    assert refused.parameter == "_outputFormat" and "not one of" in refused.reason and "%2B" in refused.reason
    assert "%2B" not in refusal(parse_get, f"{EXPORT}?_outputFormat=text/csv").reason


@pytest.mark.parametrize("url", ["/fhir/$export", "ehr.example.org/fhir/$export", "https:///fhir/$export", "$export"])
def test_a_kickoff_url_without_scheme_or_host_is_refused(url):
    for refused in (refusal(parse_get, url), refusal(parse_post, {"resourceType": "Parameters"}, url)):
        assert refused.parameter == "kickoff" and "absolute URL" in refused.reason


def test_a_fragment_is_dropped_from_the_request():
    request = parse_get(f"{EXPORT}?_type=Patient#section")
    assert request.request_url == f"{EXPORT}?_type=Patient" and request.types == ("Patient",)
    assert parse_post({"resourceType": "Parameters"}, f"{EXPORT}#x").request_url == EXPORT


@pytest.mark.parametrize("value, kind", [({"name": "_type", "valueString": "Patient"}, "object"), ("x", "string")])
def test_a_parameter_element_that_is_not_a_list_is_refused_clearly(value, kind):
    refused = refusal(parse_post, {"resourceType": "Parameters", "parameter": value}, EXPORT)
    assert refused.parameter == "parameters"
    assert "must be a JSON array" in refused.reason and f"not a JSON {kind}" in refused.reason


def test_a_since_in_the_future_is_refused():
    year = int(now_instant()[:4]) + 1
    refused = refusal(parse_get, f"{EXPORT}?_since={year}-01-01T00:00:00Z")
    assert refused.parameter == "_since" and "in the future" in refused.reason
    assert parse_get(f"{EXPORT}?_since={year - 2}-01-01T00:00:00Z").since is not None
