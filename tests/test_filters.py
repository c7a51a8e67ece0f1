"""Tests for transforms.read.pushdown (`_type` and the window, applied while reading) and transforms.fhir.window."""
import datetime as dt
import json
import random

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from transforms.fhir.instant import InvalidInstant
from transforms.fhir.window import LastUpdatedWindow
from transforms.read.pushdown import ReadSelection
from transforms.read.resources import ReadResources
from transforms.records import Origin

TX = "2020-06-01T00:00:00Z"


def _res(rtype: str, rid: str, last_updated=None, meta=True) -> dict:
    body = {"resourceType": rtype, "id": rid}
    if meta:
        body["meta"] = {} if last_updated is None else {"lastUpdated": last_updated}
    return body


def _source(tmp_path, resources, form: str = "ndjson", name: str = "src"):
    """`resources` as an NDJSON file, or as the entries of a Bundle (read through the whole-document path)."""
    if form == "ndjson":
        path = tmp_path / f"{name}.ndjson"
        path.write_text("".join(json.dumps(r) + "\n" for r in resources))
    else:
        path = tmp_path / f"{name}.json"
        entries = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]
        path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    return path


def _read(pipeline, path, selection: ReadSelection, label: str = "Read"):
    return pipeline | label >> ReadResources(str(path), selection=selection, batch_size=4)


def _ids(batches, label="Ids"):
    return batches | label >> beam.FlatMap(lambda b: [r.body["id"] for r in b.resources])


def _admits(window: LastUpdatedWindow, last_updated) -> bool:
    return window.admits({"resourceType": "Patient", "meta": {"lastUpdated": last_updated}})


# --- _type -------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["ndjson", "bundle"])
def test_the_read_keeps_only_asked_types(pipeline, tmp_path, form):
    kinds = ["Patient", "Observation", "Condition", "Observation", "Observation", "Condition", "Encounter"]
    path = _source(tmp_path, [_res(t, f"{t[0].lower()}{i}") for i, t in enumerate(kinds)], form)
    out = _read(pipeline, path, ReadSelection.of(["Patient", "Condition"]))
    assert_that(_ids(out.batches), equal_to(["p0", "c2", "c5"]))
    assert_that(out.errors, equal_to([]), label="NoErrors")
    pipeline.run()


def test_no_type_list_keeps_every_type(pipeline, tmp_path):
    # Without _type every type is exported: an empty list selects nothing out.
    assert ReadSelection.of([]).types is None
    path = _source(tmp_path, [_res("Patient", "p"), _res("Device", "d")])
    assert_that(_ids(_read(pipeline, path, ReadSelection.of([])).batches), equal_to(["p", "d"]))
    pipeline.run()


def test_bodies_are_dropped_only_when_asked_and_the_bytes_stay(pipeline, tmp_path):
    resources = [_res("Patient", "p1", "2020-01-01T00:00:00Z"), _res("Patient", "p2")]
    path = _source(tmp_path, resources)
    lines = path.read_bytes().splitlines()
    lean = _read(pipeline, path, ReadSelection.of(["Patient"], LastUpdatedWindow(TX), keep_bodies=False), "Lean")
    kept = _read(pipeline, path, ReadSelection.of(["Patient"]), "Kept")
    views = lambda b: [(r.raw, r.body) for r in b.resources]  # noqa: E731
    assert_that(lean.batches | "LeanViews" >> beam.FlatMap(views), equal_to([(line, None) for line in lines]))
    assert_that(kept.batches | "KeptViews" >> beam.FlatMap(views),
                equal_to([(line, r) for line, r in zip(lines, resources)]), label="KeptBodies")
    pipeline.run()


@pytest.mark.parametrize("form", ["ndjson", "bundle"])
def test_batches_account_for_every_source_byte_even_when_all_are_left_out(pipeline, tmp_path, form):
    path = _source(tmp_path, [_res("Observation", f"o{i}") for i in range(10)], form)
    out = _read(pipeline, path, ReadSelection.of(["Patient"]))
    sizes = out.batches | beam.Map(lambda b: (len(b.resources), b.source_bytes))
    if form == "ndjson":  # every line of the file, newlines included
        expected = path.stat().st_size
    else:  # a document is accounted for by its resources' JSON
        entries = json.loads(path.read_text())["entry"]
        expected = sum(len(json.dumps(e["resource"], separators=(",", ":"))) + 1 for e in entries)
    assert_that(sizes | beam.CombineGlobally(lambda v: tuple(map(sum, zip(*v))) if v else (0, 0)),
                equal_to([(0, expected)]))
    pipeline.run()


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


@pytest.mark.parametrize("form", ["ndjson", "bundle"])
def test_invalid_last_updated_goes_to_errors_and_the_read_goes_on(pipeline, tmp_path, form):
    path = _source(tmp_path, [
        _res("Patient", "ok1", "2020-01-01T00:00:00Z"),
        _res("Observation", "bad1", "2020-13-01T00:00:00Z"),
        _res("Patient", "ok2", meta=False),
        _res("Encounter", "bad2", 20200101),
        _res("Patient", "late", "2021-01-01T00:00:00Z"),
        _res("Condition", "bad-but-not-asked", "2020-13-01T00:00:00Z"),
    ], form)
    selection = ReadSelection.of(["Patient", "Observation", "Encounter"], LastUpdatedWindow(TX))
    out = _read(pipeline, path, selection)
    origin = Origin(str(path), 0 if form == "ndjson" else -1)
    errors = out.errors | beam.Map(lambda e: (e.origin, e.index, e.resource_type, e.reason.split(":")[0]))
    assert_that(_ids(out.batches), equal_to(["ok1", "ok2"]))
    assert_that(errors, equal_to([
        (origin, 1, "Observation", "meta.lastUpdated"),
        (origin, 3, "Encounter", "meta.lastUpdated"),
        (origin, 4, "Patient", "meta.lastUpdated"),  # issue 14: after transactionTime, reported
    ]), label="Errors")
    # Issue 14: the reason names the element and the rule, never the value.
    assert_that(out.errors | beam.Map(lambda e: "2020-13-01" in e.reason or "20200101" in e.reason),
                equal_to([False, False, False]), label="ReasonsNeverNameValue")
    assert_that(out.errors | "Rules" >> beam.Map(lambda e: (e.reason, e.severity)), equal_to([
        ("meta.lastUpdated: not a FHIR instant (YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm))", "error"),
        ("meta.lastUpdated: a number, not a FHIR instant (YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm))", "error"),
        ("meta.lastUpdated: updated after transactionTime", "information"),
    ]), label="ReasonsNameRule")
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


def test_chained_windows_have_no_gap_and_no_overlap(pipeline, tmp_path):
    rng = random.Random(42)
    tx1 = _EPOCH_NS_2020 + 3_600 * 10**9
    tx2 = tx1 + 60 * 10**9
    clusters = [tx1 - 10**6, tx1 - 1, tx1, tx1 + 1, tx1 + 10**6, tx2 - 1, tx2, tx2 + 1, _EPOCH_NS_2020]
    truth = {f"r{i}": rng.choice(clusters) for i in range(300)}
    path = _source(tmp_path, [_res("Patient", rid, _render(ns, rng)) for rid, ns in truth.items()])
    t1, t2 = _render(tx1, rng), _render(tx2, rng)
    first = {r for r, ns in truth.items() if ns <= tx1}
    second = {r for r, ns in truth.items() if tx1 < ns <= tx2}
    assert len(first) > 50 and len(second) > 50 and tx1 in truth.values()

    def run(label: str, window: LastUpdatedWindow):
        return _ids(_read(pipeline, path, ReadSelection.of((), window), label).batches, label + "Ids")

    run1, run2, whole = run("Run1", LastUpdatedWindow(t1)), run("Run2", LastUpdatedWindow(t2, since=t1)), \
        run("Whole", LastUpdatedWindow(t2))
    assert_that(run1, equal_to(sorted(first)), label="First")
    assert_that(run2, equal_to(sorted(second)), label="Second")
    assert_that(whole, equal_to(sorted(first | second)), label="Whole")
    # As a multiset, so an id in both runs would fail it: union == whole, intersection empty.
    assert_that((run1, run2) | beam.Flatten(), equal_to(sorted(first | second)), label="Union")
    pipeline.run()
