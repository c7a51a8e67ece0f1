"""The manifest step is safe to run again: after a full run, and after a run cut short at each stage.

A runner retries a failed bundle (Dataflow up to 4 times; Dask reruns a lost
worker's task). Whatever the first try did, the second must end in the same
complete job: the same files, the same counts, and a published manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.jobs.store_sink import StoreJobSink
from launcher.stores import SqliteJobStore
from pipelines.export import _Completion
from pipelines.models import ExportStatus
from tests.helpers import _record, _render
from transforms.records import PartFile
from transforms.storage.layout import MANIFEST_NAME
from transforms.write import manifest as manifest_module


class _Boom(RuntimeError):
    """The first try dies here."""


@pytest.fixture
def job(tmp_path):
    """A running job (attempt 1) whose parts are written and waiting in its temporary folder."""
    store = SqliteJobStore(str(tmp_path / "state"))
    store.create(_record("job-1"))
    store.mark_in_progress("job-1")
    job_dir, temp = tmp_path / "out" / "acme" / "job-1", tmp_path / "out" / "acme" / "job-1" / ".parts-tmp-1"
    temp.mkdir(parents=True)
    parts = []
    for name, resource_type, lines in (("Patient.a.ndjson", "Patient", 3), ("Patient.b.ndjson", "Patient", 2),
                                       ("Observation.c.ndjson", "Observation", 4)):
        data = b"".join(b'{"resourceType":"%s","id":"%s-%d"}\n' % (resource_type.encode(), name.encode(), n)
                        for n in range(lines))
        (temp / name).write_bytes(data)
        parts.append(PartFile(resource_type, str(temp / name), lines, len(data)))
    (temp / "errors").mkdir()
    errors = []  # error parts, as `WriteErrorFiles` leaves them
    for name, lines in (("OperationOutcome.d.ndjson", 2), ("OperationOutcome.e.ndjson", 1)):
        data = b'{"resourceType":"OperationOutcome"}\n' * lines
        (temp / "errors" / name).write_bytes(data)
        errors.append(PartFile("OperationOutcome", str(temp / "errors" / name), lines, len(data)))
    fn = manifest_module._AssembleFn(str(job_dir), str(temp), _render,
                                     _Completion(StoreJobSink(str(tmp_path / "state"), "job-1", 1)))
    return store, job_dir, fn, parts, errors


def _finished(store, job_dir: Path) -> dict:
    """What a complete job left: its files with their line counts, and the published manifest."""
    manifest = json.loads((job_dir / MANIFEST_NAME).read_bytes())
    for entry in manifest["output"] + manifest["error"]:
        assert len(Path(entry["url"]).read_bytes().splitlines()) == entry["count"]
    files = sorted(str(p.relative_to(job_dir)) for p in job_dir.rglob("*") if p.is_file())
    assert not any(name.startswith(".") or "/." in name for name in files)  # nothing hidden left
    assert store.status("job-1") is ExportStatus.COMPLETE
    return {"files": files, "manifest": manifest}


def test_running_the_step_twice_changes_nothing(job):
    store, job_dir, fn, parts, errors = job
    assert len(list(fn.process(None, parts, errors))) == 1
    first = _finished(store, job_dir)
    assert len(list(fn.process(None, parts, errors))) == 1  # the retry still succeeds
    assert _finished(store, job_dir) == first
    assert first["files"] == ["Observation-0.ndjson", "Patient-0.ndjson", "Patient-1.ndjson",
                              "error/OperationOutcome-0.ndjson", "error/OperationOutcome-1.ndjson", MANIFEST_NAME]


STAGES = {
    "after renaming the parts": ("_finalize_parts", None),  # as it enters the error parts' renaming
    "after renaming the error parts": (None, "remove_tree"),
    "after removing the temporary folder": ("_write_hidden", None),
    "after the hidden manifest": (None, "_Completion"),
    "after the claim, before publishing": (None, "publish_once"),
}


@pytest.mark.parametrize("stage", STAGES)
def test_a_retry_after_a_partial_run_ends_in_the_same_complete_job(job, tmp_path, monkeypatch, stage):
    store, job_dir, fn, parts, errors = job
    method, function = STAGES[stage]
    if method is not None:  # the first try dies as it enters this step
        original = getattr(manifest_module._AssembleFn, method)
        on_call = 2 if method == "_finalize_parts" else 1
        dies = _dies_once(original, staticmethod_=method == "_write_hidden", on_call=on_call)
        monkeypatch.setattr(manifest_module._AssembleFn, method, dies)
    elif function == "_Completion":
        claim = fn._on_complete
        fn._on_complete = _dies_once(claim)
    else:
        monkeypatch.setattr(manifest_module, function, _dies_once(getattr(manifest_module, function)))
    with pytest.raises(_Boom):
        list(fn.process(None, parts, errors))
    assert not (job_dir / MANIFEST_NAME).exists()  # a cut-short run never shows a manifest
    assert len(list(fn.process(None, parts, errors))) == 1
    finished = _finished(store, job_dir)
    assert [e["count"] for e in finished["manifest"]["output"]] == [4, 3, 2]
    assert sum(e["count"] for e in finished["manifest"]["error"]) == 3


def _dies_once(fn, staticmethod_: bool = False, on_call: int = 1):
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == on_call:
            raise _Boom()
        return fn(*args, **kwargs)

    return staticmethod(wrapper) if staticmethod_ else wrapper
