"""Tests for transforms.write.parts.WriteParts and transforms.write.manifest.AssembleManifest, on real files."""
import json
import os
from collections import Counter
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.util import assert_that, equal_to

from transforms.read.resources import ReadResources
from transforms.records import BadRecord, Origin, Resource, ResourceBatch
from transforms.storage.layout import ERROR_DIR, MANIFEST_NAME
from transforms.write.error_files import WriteErrorFiles
from transforms.write.manifest import AssembleManifest, Completed
from transforms.write.parts import WriteParts


def _raw(rtype: str, rid: str, pad: int = 0) -> bytes:
    # Spaces and an escaped character: bytes a re-serialiser would not reproduce.
    return f'{{ "resourceType" : "{rtype}", "id" : "{rid}", "text": "caf\\u00e9{"." * pad}" }}'.encode()


def _batches(raws: list[bytes], per_batch: int) -> list[ResourceBatch]:
    resources = [Resource(json.loads(r)["resourceType"], r, json.loads(r), i) for i, r in enumerate(raws)]
    return [ResourceBatch(Origin("mem", 0), resources[i:i + per_batch])
            for i in range(0, len(resources), per_batch)]


def _check_parts(max_lines=None, max_bytes=None):
    """A matcher: every PartFile describes its file exactly and respects the limits."""
    def check(actual):
        assert actual, "no parts"
        for part in actual:
            data = Path(part.temp_path).read_bytes()
            assert data.endswith(b"\n") and part.count == data.count(b"\n"), part
            assert part.size == len(data), part
            assert Path(part.temp_path).name.startswith(part.type + "."), part
            assert max_lines is None or part.count <= max_lines, part
            assert max_bytes is None or part.size <= max_bytes or part.count == 1, part
    return check


def _lines_by_type(folder: Path) -> dict[str, Counter]:
    found: dict[str, Counter] = {}
    for path in folder.glob("*.ndjson"):
        found.setdefault(path.name.split(".")[0].split("-")[0], Counter()).update(
            path.read_bytes().splitlines())
    return found


def test_write_parts_rolls_at_max_lines_and_keeps_raw_bytes(pipeline, tmp_path):
    raws = [_raw("Patient", f"p{i}") for i in range(10)] + [_raw("Observation", f"o{i}") for i in range(4)]
    temp = tmp_path / "tmp"
    parts = pipeline | beam.Create(_batches(raws, per_batch=4)) | WriteParts(str(temp), max_lines=3)
    assert_that(parts, _check_parts(max_lines=3))
    counts = parts | beam.Map(lambda p: (p.type, p.count)) | beam.CombinePerKey(sum)
    assert_that(counts, equal_to([("Patient", 10), ("Observation", 4)]), label="Counts")
    pipeline.run()
    assert _lines_by_type(temp) == {"Patient": Counter(raws[:10]), "Observation": Counter(raws[10:])}
    assert len(list(temp.glob("Patient.*.ndjson"))) >= 4


def test_write_parts_respects_max_bytes_and_isolates_an_oversized_line(pipeline, tmp_path):
    small = [_raw("Patient", f"p{i}") for i in range(9)]
    big = _raw("Patient", "big", pad=400)
    raws = small[:4] + [big] + small[4:]
    max_bytes = 2 * (len(small[0]) + 1) + 5  # two small lines fit, three do not
    assert len(big) > max_bytes
    temp = tmp_path / "tmp"
    parts = pipeline | beam.Create(_batches(raws, per_batch=10)) | WriteParts(str(temp), max_bytes=max_bytes)
    assert_that(parts, _check_parts(max_bytes=max_bytes))
    pipeline.run()
    files = {p: p.read_bytes().splitlines() for p in temp.glob("*.ndjson")}
    assert Counter(line for lines in files.values() for line in lines) == Counter(raws)
    assert [lines for lines in files.values() if big in lines] == [[big]]
    assert all(len(lines) <= 2 for lines in files.values())


@pytest.mark.parametrize("limit", ["lines", "bytes"])
def test_write_parts_fills_each_part_to_its_limit_whether_batches_fit_whole_or_not(pipeline, tmp_path, limit):
    # Batches of 3 into parts of 10: three whole batches fit, the fourth is split across two parts.
    raws = [_raw("Patient", f"p{i:02d}") for i in range(25)]
    line = len(raws[0]) + 1
    limits = {"max_lines": 10} if limit == "lines" else {"max_bytes": 10 * line}
    temp = tmp_path / "tmp"
    parts = pipeline | beam.Create(_batches(raws, per_batch=3)) | WriteParts(str(temp), **limits)
    assert_that(parts, _check_parts(**limits))
    assert_that(parts | beam.Map(lambda p: p.count), equal_to([10, 10, 5]), label="Counts")
    pipeline.run()
    assert _lines_by_type(temp) == {"Patient": Counter(raws)}


@pytest.mark.parametrize("max_lines, max_bytes", [(0, 10), (10, 0)])
def test_write_parts_rejects_non_positive_limits(tmp_path, max_lines, max_bytes):
    with pytest.raises(ValueError):
        WriteParts(str(tmp_path), max_lines=max_lines, max_bytes=max_bytes)


# --- manifest assembly ---------------------------------------------------------------------

class _Render:
    """Renders the files it receives, and records what the job dir looked like at that moment."""

    def __init__(self, job_dir: Path, temp_dir: Path, log: Path):
        self.job_dir, self.temp_dir, self.log = job_dir, temp_dir, log

    def __call__(self, completed: Completed) -> bytes:
        finals = [f for f in completed.output + completed.error
                  if Path(f.path).is_file() and Path(f.path).read_bytes().count(b"\n") == f.count]
        seen = {"manifest_exists": (self.job_dir / MANIFEST_NAME).exists(),
                "temp_exists": self.temp_dir.exists(),
                "all_final": len(finals) == len(completed.output) + len(completed.error)}
        self.log.write_text(json.dumps(seen))
        files = {kind: [[f.type, os.path.relpath(f.path, self.job_dir), f.count] for f in group]
                 for kind, group in (("output", completed.output), ("error", completed.error))}
        return json.dumps(files, sort_keys=True).encode()


class _OnComplete:
    """Records each completion claim; `claim=False` acts as a job cancelled meanwhile."""

    def __init__(self, log: Path, job_dir: Path, claim: bool = True):
        self.log, self.job_dir, self.claim = log, job_dir, claim

    def __call__(self, manifest: bytes, bad: int) -> bool:
        visible = (self.job_dir / MANIFEST_NAME).exists()
        with self.log.open("a") as f:
            f.write(json.dumps({"manifest": manifest.decode(), "bad": bad, "visible": visible}) + "\n")
        return self.claim


def _one_nonempty(lengths):
    assert len(lengths) == 1 and lengths[0] > 0, lengths


def _source_file(path: Path) -> tuple[list[bytes], list[tuple[int, str]]]:
    rows = [_raw("Patient", f"p{i}") for i in range(7)] + [_raw("Observation", f"o{i}") for i in range(5)]
    rows[3:3] = [b"{not json"]
    rows[9:9] = [b"[1]", b'{"resourceType": "Foo"}']
    path.write_bytes(b"\n".join(rows) + b"\n")
    bad = [(n, line.decode()) for n, line in enumerate(rows, 1) if not line.startswith(b"{ ")]
    return rows, bad


def test_assemble_manifest_finalizes_parts_errors_then_manifest(pipeline, tmp_path):
    source, job_dir = tmp_path / "src.ndjson", tmp_path / "out" / "job1"
    temp_dir, render_log, done_log = job_dir / ".parts-tmp-1", tmp_path / "render.json", tmp_path / "done.jsonl"
    rows, bad = _source_file(source)
    read = pipeline | ReadResources(str(source), chunk_bytes=40)
    parts = read.batches | WriteParts(str(temp_dir), max_lines=3)
    extra = pipeline | "Extra" >> beam.Create([BadRecord(Origin("b.json", -1), 4, "Bundle entry has no resource")])
    errors = (read.errors, extra) | beam.Flatten()
    error_parts = errors | WriteErrorFiles(str(temp_dir / "errors"), None, read.lines, max_lines=2)
    manifest = (parts, error_parts) | AssembleManifest(
        str(job_dir), str(temp_dir), _Render(job_dir, temp_dir, render_log),
        on_complete=_OnComplete(done_log, job_dir))
    assert_that(manifest | beam.Map(len), _one_nonempty)
    pipeline.run()

    assert json.loads(render_log.read_text()) == {"manifest_exists": False, "temp_exists": False, "all_final": True}
    written = (job_dir / MANIFEST_NAME).read_bytes()
    done = [json.loads(line) for line in done_log.read_text().splitlines()]
    # Completion is claimed before the manifest becomes visible, then it appears.
    assert done == [{"manifest": written.decode(), "bad": len(bad) + 1, "visible": False}]
    files = json.loads(written)

    # Output parts: <Type>-<n>.ndjson, n = 0..k-1 per type, holding the original lines.
    by_type: dict[str, list[str]] = {}
    for rtype, rel, count in files["output"]:
        by_type.setdefault(rtype, []).append(rel)
        assert 0 < count <= 3 and (job_dir / rel).read_bytes().count(b"\n") == count
    for rtype, rels in by_type.items():
        assert sorted(rels) == sorted(f"{rtype}-{n}.ndjson" for n in range(len(rels)))
    good = [r for r in rows if r.startswith(b"{ ")]
    assert _lines_by_type(job_dir) == {t: Counter(r for r in good if json.loads(r)["resourceType"] == t)
                                       for t in ("Patient", "Observation")}

    # Error parts, written where the records were found: one OperationOutcome per bad record,
    # naming file and true line (the source was read in 40-byte chunks: no re-read counted them).
    n_parts = len(files["error"])
    assert [e[:2] for e in files["error"]] == [["OperationOutcome", f"{ERROR_DIR}/OperationOutcome-{n}.ndjson"]
                                              for n in range(n_parts)]
    outcomes = [json.loads(line) for n in range(n_parts)
                for line in (job_dir / ERROR_DIR / f"OperationOutcome-{n}.ndjson").read_bytes().splitlines()]
    assert all(0 < e[2] <= 2 for e in files["error"]) and sum(e[2] for e in files["error"]) == len(bad) + 1
    diagnostics = sorted(o["issue"][0]["diagnostics"] for o in outcomes)
    assert all(o["resourceType"] == "OperationOutcome" and o["issue"][0]["code"] == "invalid" for o in outcomes)
    expected_where = sorted([f"{source} line {n}" for n, _ in bad] + ["b.json Bundle.entry[4]"])
    assert [d.split(": ")[0] for d in diagnostics] == expected_where
    assert all(d.endswith("; not exported") for d in diagnostics)
    assert not any(text in d for d in diagnostics for _, text in bad)  # content is never copied

    # Nothing else is left behind: no temp dir, no hidden half-written files.
    names = sorted(str(p.relative_to(job_dir)) for p in job_dir.rglob("*"))
    expected_names = [rel for _, rel, _ in files["output"] + files["error"]] + [ERROR_DIR, MANIFEST_NAME]
    assert names == sorted(expected_names)


@pytest.mark.parametrize("claim", [True, False], ids=["claimed", "claim-lost"])
def test_assemble_manifest_with_nothing_to_export(pipeline, tmp_path, claim):
    job_dir, done_log = tmp_path / "job", tmp_path / "done.jsonl"
    parts = pipeline | "NoParts" >> beam.Create([]).with_output_types(tuple)
    errors = pipeline | "NoErrors" >> beam.Create([]).with_output_types(tuple)  # no error parts
    manifest = (parts, errors) | AssembleManifest(
        str(job_dir), str(job_dir / ".tmp"), _Render(job_dir, job_dir / ".tmp", tmp_path / "r.json"),
        on_complete=_OnComplete(done_log, job_dir, claim))
    assert_that(manifest | beam.Map(lambda m: m.startswith(b"{")), equal_to([True] if claim else []))
    pipeline.run()
    assert [json.loads(line)["bad"] for line in done_log.read_text().splitlines()] == [0]
    if claim:
        assert json.loads((job_dir / MANIFEST_NAME).read_bytes()) == {"output": [], "error": []}
        assert sorted(p.name for p in job_dir.iterdir()) == [MANIFEST_NAME]
    else:  # a job cancelled meanwhile: no manifest, not even a hidden one
        assert not job_dir.exists() or not list(job_dir.iterdir())
