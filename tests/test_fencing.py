"""Fenced writers: a stale attempt never opens a part nor renames into a job's final files.

Found by a tester: attempt 1 was frozen (SIGSTOP), the job was resumed and completed as
attempt 2, then attempt 1 was let go and renamed its parts over attempt 2's final files.
Every writing step now asks the job store, through the job sink, whether its attempt
still owns the job, before it opens a part and before any rename.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import apache_beam as beam
import pytest

from launcher.jobs.store_sink import StoreJobSink
from launcher.stores import Lease, SqliteJobStore, now_ms
from pipelines.export import _Completion
from tests.helpers import _record, _render
from transforms.records import Origin, PartFile, Resource, ResourceBatch
from transforms.steps.fence import StaleAttempt
from transforms.storage.layout import MANIFEST_NAME
from transforms.write import manifest as manifest_module
from transforms.write.parts import WriteParts


@pytest.fixture
def resumed(tmp_path) -> SqliteJobStore:
    """A job whose attempt 1 was given up and which now runs as attempt 2."""
    store = SqliteJobStore(str(tmp_path / "state"))
    store.create(_record("job-1"), lease=Lease("launcher-1", now_ms() - 1))
    store.mark_in_progress("job-1")
    assert [r.job_id for r in store.reap_expired()] == ["job-1"]  # attempt 1's launcher went silent
    record = store.claim_resume("acme", "job-1", None, Lease("launcher-2", now_ms() + 60_000))
    assert record.attempt == 2
    return store


def _sink(tmp_path, attempt: int) -> StoreJobSink:
    return StoreJobSink(str(tmp_path / "state"), "job-1", attempt)


def test_the_fence_is_held_by_the_current_attempt_only(resumed, tmp_path):
    assert _sink(tmp_path, 2).owns() and not _sink(tmp_path, 1).owns()


def test_a_stale_attempt_opens_no_part(resumed, tmp_path, pipeline):
    temp = tmp_path / "parts"
    batch = ResourceBatch(Origin("mem", 0), [Resource("Patient", b'{"resourceType":"Patient","id":"p"}', None, 0)])
    _ = pipeline | beam.Create([batch]) | WriteParts(str(temp), fence=_sink(tmp_path, 1))
    with pytest.raises(Exception, match="no longer owns the job"):
        pipeline.run().wait_until_finish()
    assert not temp.exists() or not any(temp.iterdir())


def test_a_stale_attempt_never_renames_over_the_newer_attempts_files(resumed, tmp_path):
    """Attempt 2 completes; attempt 1, let go afterwards, runs its manifest step: nothing of attempt 2 changes."""
    job_dir = tmp_path / "out" / "acme" / "job-1"

    def parts_of(attempt: int, lines: int) -> tuple[str, list[PartFile]]:
        temp = job_dir / f".parts-tmp-{attempt}"
        temp.mkdir(parents=True)
        data = b"".join(b'{"resourceType":"Patient","id":"a%d-%d"}\n' % (attempt, n) for n in range(lines))
        (temp / "Patient.x.ndjson").write_bytes(data)
        return str(temp), [PartFile("Patient", str(temp / "Patient.x.ndjson"), lines, len(data))]

    def step(attempt: int, temp: str):
        sink = _sink(tmp_path, attempt)
        return manifest_module._AssembleFn(str(job_dir), temp, _render, _Completion(sink), fence=sink)

    stale_temp, stale_parts = parts_of(1, 3)
    temp, parts = parts_of(2, 5)
    assert len(list(step(2, temp).process(None, parts, []))) == 1
    before = {p: p.read_bytes() for p in job_dir.rglob("*") if p.is_file()}
    with pytest.raises(StaleAttempt):
        list(step(1, stale_temp).process(None, stale_parts, []))
    assert {p: p.read_bytes() for p in job_dir.rglob("*") if p.is_file()} == before
    manifest = json.loads((job_dir / MANIFEST_NAME).read_bytes())
    assert [e["count"] for e in manifest["output"]] == [5]
    assert len(Path(manifest["output"][0]["url"]).read_bytes().splitlines()) == 5


def test_a_bundle_that_loses_the_job_while_writing_removes_its_parts_and_stops(tmp_path):
    """Attempt 1 opened its parts while it owned the job; the job is then resumed as attempt 2 (as on a
    remote worker that stalled). Within a second its next batch finds out, removes every part it wrote
    and its temporary folder, and raises: it neither runs on to the end of its bundle nor leaves files."""
    store = SqliteJobStore(str(tmp_path / "state"))
    store.create(_record("job-1"), lease=Lease("launcher-1", now_ms() - 1))
    store.mark_in_progress("job-1")
    temp = tmp_path / "out" / "acme" / "job-1" / ".attempt-1"
    fn = WriteParts(str(temp), fence=_sink(tmp_path, 1))._fn
    batch = ResourceBatch(Origin("mem", 0), [Resource("Patient", b'{"resourceType":"Patient","id":"p"}', None, 0),
                                              Resource("Condition", b'{"resourceType":"Condition","id":"c"}', None, 1)])
    fn.start_bundle()
    list(fn.process(batch))
    assert len(list(temp.iterdir())) == 2  # both parts open, under attempt 1
    store.reap_expired()
    store.claim_resume("acme", "job-1", None, Lease("launcher-2", now_ms() + 60_000))
    time.sleep(1.1)
    with pytest.raises(StaleAttempt, match="no longer owns the job"):
        list(fn.process(batch))
    assert not temp.exists() and not temp.parent.exists()


def test_a_bundle_that_loses_the_job_after_closing_a_part_removes_it_too(tmp_path):
    """A part the bundle already closed (its line limit reached) is removed with the open ones when the
    attempt finds it lost the job: the cleanup neither crashes nor leaves the closed part on disk."""
    store = SqliteJobStore(str(tmp_path / "state"))
    store.create(_record("job-1"), lease=Lease("launcher-1", now_ms() - 1))
    store.mark_in_progress("job-1")
    temp = tmp_path / "out" / "acme" / "job-1" / ".attempt-1"
    fn = WriteParts(str(temp), max_lines=1, fence=_sink(tmp_path, 1))._fn
    patients = [Resource("Patient", b'{"resourceType":"Patient","id":"p%d"}' % n, None, n) for n in range(2)]
    fn.start_bundle()
    list(fn.process(ResourceBatch(Origin("mem", 0), patients)))
    assert len(fn._closed) == 1 and len(list(temp.iterdir())) == 2  # one part closed, one open
    store.reap_expired()
    store.claim_resume("acme", "job-1", None, Lease("launcher-2", now_ms() + 60_000))
    time.sleep(1.1)
    with pytest.raises(StaleAttempt, match="no longer owns the job"):
        list(fn.process(ResourceBatch(Origin("mem", 1), patients[:1])))
    assert not temp.exists() and not temp.parent.exists()


def test_a_bundle_that_loses_the_job_hands_on_no_run_file_and_removes_those_it_wrote(tmp_path):
    """The duplicate check's run files follow the writers' rule: a bundle whose attempt lost the job before
    its end writes no more run files, removes those it wrote (which may have made the folders a cancel's
    clean-up removed again), and raises, so no file of a cancelled job is left behind (seen on Dask: a
    bundle's 32 run files written after the clean-up)."""
    from transforms.select.duplicates import ReportDuplicates

    store = SqliteJobStore(str(tmp_path / "state"))
    store.create(_record("job-1"), lease=Lease("launcher-1", now_ms() - 1))
    store.mark_in_progress("job-1")
    temp = tmp_path / "out" / "acme" / "job-1" / ".parts-tmp-1"
    duplicates = ReportDuplicates(str(temp / "duplicates"), buckets=1, fence=_sink(tmp_path, 1))
    pipeline = beam.Pipeline()
    _ = pipeline | beam.Create([]) | duplicates
    [spill] = _spill_steps(pipeline)  # the Keys step's, as the export builds it
    patients = [Resource("Patient", b'{"resourceType":"Patient","id":"p%d"}' % n, None, n) for n in range(3000)]
    spill.start_bundle()
    list(spill.process(ResourceBatch(Origin("mem", 0), patients)))  # more than a list: run files written
    assert any(path.suffix == ".run" for path in temp.rglob("*"))
    store.reap_expired()
    store.claim_resume("acme", "job-1", None, Lease("launcher-2", now_ms() + 60_000))
    with pytest.raises(StaleAttempt, match="no longer owns the job"):
        list(spill.finish_bundle())
    assert not temp.exists() and not temp.parent.exists()


def _spill_steps(pipeline: beam.Pipeline) -> list:
    """The `SpillRecords` DoFns of a built pipeline."""
    from apache_beam.pipeline import PipelineVisitor

    from transforms.steps.spill import SpillRecords

    found = []

    class _Find(PipelineVisitor):
        def visit_transform(self, node) -> None:
            if isinstance(getattr(node.transform, "fn", None), SpillRecords):
                found.append(node.transform.fn)

    pipeline.visit(_Find())
    return found
