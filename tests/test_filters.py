"""Tests for transforms.types.FilterTypes and transforms.since (the _since/_until window)."""
import datetime as dt
import json
import random

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from transforms.fhir.instant import InvalidInstant
from transforms.records import Origin, Resource, ResourceBatch
from transforms.since import FilterLastUpdated, LastUpdatedWindow
from transforms.types import FilterTypes

TX = "2020-06-01T00:00:00Z"


def _res(rtype: str, rid: str, last_updated=None, index: int = 0, meta=True) -> Resource:
    body = {"resourceType": rtype, "id": rid}
    if meta:
        body["meta"] = {} if last_updated is None else {"lastUpdated": last_updated}
    return Resource(rtype, json.dumps(body).encode(), body, index)


def _batch(*resources: Resource, path: str = "mem.ndjson") -> ResourceBatch:
    return ResourceBatch(Origin(path, 0), [r._replace(index=i) for i, r in enumerate(resources)])


def _ids(batches, label="Ids"):
    return batches | label >> beam.FlatMap(lambda b: [r.body["id"] for r in b.resources])


def _admits(window: LastUpdatedWindow, last_updated) -> bool:
    return window.admits({"resourceType": "Patient", "meta": {"lastUpdated": last_updated}})


# --- _type -------------------------------------------------------------------------

def test_filter_types_keeps_only_asked_types_and_drops_emptied_batches(pipeline):
    batches = [
        _batch(_res("Patient", "p1"), _res("Observation", "o1"), _res("Condition", "c1")),
        _batch(_res("Observation", "o2"), _res("Observation", "o3")),
        _batch(_res("Condition", "c2")),
    ]
    out = pipeline | beam.Create(batches) | FilterTypes(["Patient", "Condition"])
    assert_that(_ids(out.batches), equal_to(["p1", "c1", "c2"]))
    assert_that(out.batches | beam.Map(lambda b: len(b.resources)), equal_to([2, 1]), label="Sizes")
    assert_that(out.errors, equal_to([]), label="NoErrors")
    pipeline.run()


def test_filter_types_refuses_an_empty_type_list():
    # Without _type every type is exported: the pipeline skips the step rather than filter by nothing.
    with pytest.raises(ValueError, match="at least one type"):
        FilterTypes([])


# --- the window, boundaries ------------------------------------------------------------

def test_since_is_exclusive():
    window = LastUpdatedWindow(TX, since="2020-01-01T00:00:00Z")
    assert not _admits(window, "2020-01-01T00:00:00Z")
    assert not _admits(window, "2020-01-01T00:00:00.000Z")
    assert not _admits(window, "2019-12-31T23:59:59.999Z")
    assert _admits(window, "2020-01-01T00:00:00.001Z")
    assert _admits(window, "2020-01-01T00:00:00.0000001Z")


def test_until_is_exclusive():
    window = LastUpdatedWindow(TX, until="2020-01-01T00:00:00Z")
    assert not _admits(window, "2020-01-01T00:00:00Z")
    assert not _admits(window, "2020-01-01T00:00:00.001Z")
    assert _admits(window, "2019-12-31T23:59:59.999Z")


def test_transaction_time_is_inclusive_and_bounds_until():
    window = LastUpdatedWindow("2020-01-01T00:00:00.000Z", until="2021-01-01T00:00:00Z")
    assert _admits(window, "2020-01-01T00:00:00Z")
    assert _admits(window, "2020-01-01T01:00:00+01:00")
    assert not _admits(window, "2020-01-01T00:00:00.001Z")
    assert not _admits(window, "2020-06-01T00:00:00Z")  # before _until but after transactionTime


def test_bounds_compare_as_instants_across_offsets():
    window = LastUpdatedWindow(TX, since="2020-01-01T00:00:00Z")
    assert not _admits(window, "2020-01-01T01:00:00+01:00")  # the same instant as _since
    assert _admits(window, "2020-01-01T01:00:00.001+01:00")
    assert not _admits(window, "2019-12-31T20:00:00-04:00")
    # As strings "2019-12-31T23:30:00-01:00" < "2020-...", but it is 00:30Z, after _since.
    assert _admits(window, "2019-12-31T23:30:00-01:00")


@pytest.mark.parametrize("body", [
    {"resourceType": "Patient"},
    {"resourceType": "Patient", "meta": {}},
    {"resourceType": "Patient", "meta": {"versionId": "1"}},
])
def test_missing_last_updated_is_included_unless_asked_otherwise(body):
    assert LastUpdatedWindow(TX, since="2020-01-01T00:00:00Z").admits(body)
    assert LastUpdatedWindow(TX).admits(body)
    assert LastUpdatedWindow(TX, include_missing=False).admits(body)  # no since/until: kept
    assert not LastUpdatedWindow(TX, since="2020-01-01T00:00:00Z", include_missing=False).admits(body)
    assert not LastUpdatedWindow(TX, until="2020-01-01T00:00:00Z", include_missing=False).admits(body)


def test_invalid_window_bounds_and_values_raise():
    with pytest.raises(InvalidInstant):
        LastUpdatedWindow("2020-06-01")
    with pytest.raises(InvalidInstant):
        LastUpdatedWindow(TX, since="2020-01-01T00:00:00")
    window = LastUpdatedWindow(TX)
    with pytest.raises(InvalidInstant):
        _admits(window, "2020-02-30T00:00:00Z")
    with pytest.raises(InvalidInstant):
        window.admits({"resourceType": "Patient", "meta": "2020-01-01T00:00:00Z"})


def test_invalid_last_updated_goes_to_errors_and_the_batch_survives(pipeline):
    batch = _batch(
        _res("Patient", "ok1", "2020-01-01T00:00:00Z"),
        _res("Observation", "bad1", "2020-13-01T00:00:00Z"),
        _res("Patient", "ok2", meta=False),
        _res("Encounter", "bad2", 20200101),
        _res("Patient", "late", "2021-01-01T00:00:00Z"),
        path="src.ndjson",
    )
    out = pipeline | beam.Create([batch]) | FilterLastUpdated(LastUpdatedWindow(TX))
    errors = out.errors | beam.Map(lambda e: (e.origin, e.index, e.resource_type, e.reason.split(":")[0]))
    assert_that(_ids(out.batches), equal_to(["ok1", "ok2"]))
    assert_that(errors, equal_to([
        (Origin("src.ndjson", 0), 1, "Observation", "meta.lastUpdated"),
        (Origin("src.ndjson", 0), 3, "Encounter", "meta.lastUpdated"),
    ]), label="Errors")
    assert_that(out.errors | beam.Map(lambda e: "2020-13-01" in e.reason or "20200101" in e.reason),
                equal_to([True, True]), label="ReasonsNameValue")
    pipeline.run()


# --- chaining runs: transactionTime -> next _since ---------------------------------------

_EPOCH_NS_2020 = 1_577_836_800 * 10**9


def _render(ns: int, rng: random.Random) -> str:
    """The instant `ns` (nanoseconds since the epoch) as text, in a random offset and precision."""
    offset_min = rng.choice([0, 60, -300, 330, 840, -720])
    local = ns + offset_min * 60 * 10**9
    seconds, frac = divmod(local, 10**9)
    stamp = dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    if digits or rng.random() < 0.5:
        digits = "." + digits.ljust(rng.randrange(max(len(digits), 1), 12), "0")
    sign = "+" if offset_min >= 0 else "-"
    zone = "Z" if offset_min == 0 and rng.random() < 0.5 else \
        f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    return stamp + digits + zone


def test_chained_windows_have_no_gap_and_no_overlap(pipeline):
    rng = random.Random(42)
    tx1 = _EPOCH_NS_2020 + 3_600 * 10**9
    tx2 = tx1 + 60 * 10**9
    clusters = [tx1 - 10**6, tx1 - 1, tx1, tx1 + 1, tx1 + 10**6, tx2 - 1, tx2, tx2 + 1, _EPOCH_NS_2020]
    truth = {f"r{i}": rng.choice(clusters) for i in range(300)}
    batches = [_batch(*(_res("Patient", rid, _render(ns, rng)) for rid, ns in list(truth.items())[k::7]))
               for k in range(7)]
    t1, t2 = _render(tx1, rng), _render(tx2, rng)
    first = {r for r, ns in truth.items() if ns <= tx1}
    second = {r for r, ns in truth.items() if tx1 < ns <= tx2}
    assert len(first) > 50 and len(second) > 50 and tx1 in truth.values()

    source = pipeline | beam.Create(batches)
    run1 = _ids((source | "Run1" >> FilterLastUpdated(LastUpdatedWindow(t1))).batches, "Ids1")
    run2 = _ids((source | "Run2" >> FilterLastUpdated(LastUpdatedWindow(t2, since=t1))).batches, "Ids2")
    whole = _ids((source | "Whole" >> FilterLastUpdated(LastUpdatedWindow(t2))).batches, "IdsW")
    assert_that(run1, equal_to(sorted(first)), label="First")
    assert_that(run2, equal_to(sorted(second)), label="Second")
    assert_that(whole, equal_to(sorted(first | second)), label="Whole")
    # As a multiset, so an id in both runs would fail it: union == whole, intersection empty.
    assert_that((run1, run2) | beam.Flatten(), equal_to(sorted(first | second)), label="Union")
    pipeline.run()
