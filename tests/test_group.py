"""Group membership: member forms, nesting with cycles, inactive and ended members, `_since`."""

from __future__ import annotations

import pytest

from transforms.fhir.group import GroupRefused, resolve_group

TX = "2024-06-01T00:00:00Z"
PATIENTS = {"p1", "p2", "p3", "p4", "p5"}


def member(reference: str, **extra) -> dict:
    return {"entity": {"reference": reference}, **extra}


def group(gid: str, *members: dict, **extra) -> dict:
    return {"resourceType": "Group", "id": gid, "type": "person", "actual": True, "member": list(members), **extra}


def resolve(groups: list[dict], gid: str = "g", since: str | None = None):
    return resolve_group(gid, {g["id"]: g for g in groups}, PATIENTS, TX, since)


def test_member_reference_forms():
    g = group(
        "g",
        member("Patient/p1"),
        member("https://ehr.example.org/fhir/Patient/p2"),
        member("urn:uuid:p3"),
        member("p4"),
    )
    membership = resolve([g])
    assert membership.patients.ids == {"p1", "p2", "p3", "p4"}
    assert membership.issues == []


def test_nested_groups_with_a_cycle_are_resolved_once():
    outer = group("g", member("Patient/p1"), member("Group/inner"))
    inner = group("inner", member("Patient/p2"), member("Group/g"))
    membership = resolve([outer, inner])
    assert membership.patients.ids == {"p1", "p2"}
    assert len(membership.issues) == 1
    issue = membership.issues[0]
    assert (issue.group_id, issue.index) == ("inner", 1)
    assert "cycle" in issue.reason and "g -> inner -> g" in issue.reason


def test_inactive_ended_and_future_members_are_excluded():
    g = group(
        "g",
        member("Patient/p1", inactive=True),
        member("Patient/p2", period={"start": "2020-01-01", "end": "2024-05-31T23:59:59Z"}),
        member("Patient/p3", period={"end": "2024-06-01"}),  # the day of transactionTime: still a member
        member("Patient/p4", period={"start": "2024-07-01"}),  # starts after transactionTime
        member("Patient/p5", inactive=False, period={"start": "2020", "end": "2030"}),
    )
    assert resolve([g]).patients.ids == {"p3", "p5"}


def test_unresolvable_members_are_reported_not_dropped():
    g = group(
        "g",
        member("Patient/unknown"),
        member("Practitioner/x"),
        {"entity": {"identifier": {"value": "123"}}},
        member("Group/missing"),
        member("Patient/p1"),
    )
    membership = resolve([g])
    assert membership.patients.ids == {"p1"}
    assert [i.index for i in membership.issues] == [0, 1, 2, 3]
    assert "Group/missing is not in the source" in membership.issues[3].reason
    # error[] names Groups by id, as resources, but never a patient or other reference a member holds
    assert not any("unknown" in i.reason or "Practitioner" in i.reason for i in membership.issues)


def test_refusals():
    with pytest.raises(GroupRefused, match="not in the source"):
        resolve([group("other")])
    with pytest.raises(GroupRefused, match="actual=false"):
        resolve([group("g", member("Patient/p1"), actual=False)])
    characteristic = {"code": {"text": "diabetic"}, "valueBoolean": True, "exclude": False}
    with pytest.raises(GroupRefused, match="characteristic"):
        resolve([{"resourceType": "Group", "id": "g", "type": "person", "actual": True, "characteristic": [characteristic]}])


def test_since_marks_members_added_after_it_as_whole():
    inner = group("inner", member("Patient/p3"))
    g = group(
        "g",
        member("Patient/p1", period={"start": "2023-01-01"}),  # added after _since: whole
        member("Patient/p2", period={"start": "2019-01-01"}),  # old member
        member("Patient/p2", period={"start": "2023-02-01"}),  # re-added, but was already a member
        member("Group/inner", period={"start": "2023-03-01"}),  # nested members inherit "new"
        member("Patient/p4"),  # no period: an old member
    )
    membership = resolve([g, inner], since="2022-01-01T00:00:00Z")
    assert membership.patients.ids == {"p1", "p2", "p3", "p4"}
    assert membership.patients.whole == {"p1", "p3"}
    assert resolve([g, inner]).patients.whole == frozenset()
