"""Tests for pipelines.plan.read_selection: what each export asks its read to keep."""
import pytest

from launcher.kickoff.parser import parse_get
from pipelines.job import ExportJob
from pipelines.options import ExportSettings
from pipelines.plan import build_plan, read_selection
from pipelines.plan_steps import steps

BASE = "https://fhir.example.org/fhir"
TX = "2024-01-01T00:00:00Z"
SETTINGS = ExportSettings(source="in", output="out")


def _selection(url: str, part_needs_bodies: bool = False):
    request = parse_get(url)
    return request, read_selection(request, TX, SETTINGS, part_needs_bodies)


def test_a_system_export_selects_type_and_time_at_read_and_drops_bodies():
    request, selection = _selection(f"{BASE}/$export?_type=Patient,Observation&_since=2020-01-01T00:00:00Z")
    assert selection.types == {"Patient", "Observation"}
    assert selection.window.admits({"meta": {"lastUpdated": "2021-01-01T00:00:00Z"}})
    assert not selection.window.admits({"meta": {"lastUpdated": "2019-01-01T00:00:00Z"}})
    assert not selection.window.admits({"meta": {"lastUpdated": "2024-01-01T00:00:00.001Z"}})  # after tx
    assert selection.keep_bodies is False
    assert steps(build_plan(request, ExportJob("j", TX, SETTINGS)), None) == []  # nothing is left for a later step


@pytest.mark.parametrize("query", [
    "_type=Observation&_typeFilter=Observation%3Fstatus%3Dfinal",
    "_type=Observation&_elements=Observation.status",
])
def test_later_steps_that_read_resources_keep_bodies(query):
    _, selection = _selection(f"{BASE}/$export?{query}")
    assert selection.keep_bodies is True and selection.window is not None


def test_a_part_format_that_reads_bodies_keeps_them():
    assert _selection(f"{BASE}/$export?_type=Patient", part_needs_bodies=True)[1].keep_bodies is True


@pytest.mark.parametrize("path", ["Patient/$export", "Group/g1/$export"])
def test_patient_and_group_exports_leave_the_window_to_the_compartment(path):
    _, selection = _selection(f"{BASE}/{path}?_type=Patient,Condition&_since=2020-01-01T00:00:00Z")
    assert selection.types == {"Patient", "Condition"}
    assert selection.window is None and selection.keep_bodies is True
