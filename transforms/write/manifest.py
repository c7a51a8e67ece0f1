"""Manifest assembly: final part names, error files, then the manifest, last.

This is the pipeline's only fan-in, and it sees file metadata only. It is safe
to run again after any partial run (a runner retries a failed bundle, Dask reruns
a lost worker's task), as Beam's `FileBasedSink.finalize_write` is: renamed parts
stay renamed, error files and the manifest are written whole under hidden names
first, and the completion claim accepts this attempt's own earlier claim. It gives
the temporary parts their final names `<Type>-<n>.ndjson` or `.parquet` (n
counting from 0 per type), the error parts (written where the bad records were
found, `transforms.write.error_files`) theirs, `error/OperationOutcome-<n>.ndjson`,
the deletions' `deleted/Bundle-<n>.ndjson`, and writes the request's own
notices (what lenient handling ignored, one OperationOutcome each) whole as
`error/OperationOutcome-request.ndjson`; it then
removes the temporary folder, and only then writes `manifest.json`. A failed
run never reaches this step, so it never leaves a manifest behind.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.records import PartFile
from transforms.steps.fence import Fence, check_fence
from transforms.storage.files import ObjectExists, create_file, make_folders, move, publish_once, remove_tree
from transforms.storage.last_step import kept_whole
from transforms.storage.layout import (
    DELETED_DIR,
    ERROR_DIR,
    ERROR_TYPE,
    MANIFEST_MIME,
    MANIFEST_NAME,
    NDJSON_MIME,
    NOTICES_NAME,
)


class FinalFile(NamedTuple):
    """A finished output or error file and its exact line count."""

    type: str
    path: str
    count: int


class Completed(NamedTuple):
    """What the export produced, handed to the manifest renderer."""

    output: list[FinalFile]
    error: list[FinalFile]
    deleted: list[FinalFile] = []


class AssembleManifest(beam.PTransform):
    """Takes `(parts, error_parts[, deleted_parts])` and emits the manifest bytes once everything is final.

    `render` turns the `Completed` files into manifest JSON bytes, and
    `on_complete`, if given, is called with those bytes and the number of bad records
    to claim the job's completion before the manifest is made visible; if it returns
    False (the job was cancelled meanwhile) no manifest appears. With a `fence`, an
    attempt that no longer owns the job stops before it renames anything. `notices` are
    the request's own OperationOutcome lines (not bad records: they are not counted as such).
    """

    def __init__(
        self,
        job_dir: str,
        temp_dir: str,
        render: Callable[[Completed], bytes],
        on_complete: Optional[Callable[[bytes, int], Optional[bool]]] = None,
        fence: Optional[Fence] = None,
        notices: Sequence[bytes] = (),
        output_root: str = "",
    ):
        """`output_root`: no folder below it is written through a link (`transforms.storage.files.move`)."""
        super().__init__()
        self._fn = _AssembleFn(job_dir, temp_dir, render, on_complete, fence, tuple(notices), output_root)

    def expand(self, inputs) -> beam.PCollection[bytes]:
        parts, errors, *deleted = inputs
        lists = [beam.pvalue.AsList(p) for p in (parts, errors, *deleted)]
        return parts.pipeline | "Once" >> beam.Create([None]) | "Assemble" >> beam.ParDo(self._fn, *lists)


class _AssembleFn(beam.DoFn):
    def __init__(self, job_dir, temp_dir, render, on_complete, fence=None, notices: tuple[bytes, ...] = (),
                 output_root=""):
        self._fence = fence
        self._notices = notices
        self._output_root = output_root
        self._job_dir = job_dir
        self._temp_dir = temp_dir
        self._render = render
        self._on_complete = on_complete

    def process(self, _, parts: list[PartFile], errors: list[PartFile], deleted: list[PartFile] = ()
                ) -> Iterator[bytes]:
        check_fence(self._fence, "giving parts their final names")  # a stale attempt never touches them
        output = self._finalize_parts(parts)
        error = self._finalize_parts(errors, ERROR_DIR)
        gone = self._finalize_parts(list(deleted), DELETED_DIR)
        notices = self._write_notices()
        remove_tree(self._temp_dir)
        manifest = self._render(Completed(output, error + notices, gone))
        # The manifest waits under a hidden name until the job's completion is
        # claimed, so a job cancelled meanwhile never shows one; an earlier try's is removed.
        self._remove_hidden(MANIFEST_NAME)
        temp = self._write_hidden(self._path(MANIFEST_NAME), manifest, MANIFEST_MIME, self._output_root)
        bad_records = sum(f.count for f in error)
        with kept_whole():  # a launcher dying now never leaves a complete job without its manifest
            if self._on_complete is not None and self._on_complete(manifest, bad_records) is False:
                FileSystems.delete([temp])
                return
            # On GCS the manifest is created only if absent (ifGenerationMatch=0): it is never
            # overwritten. A retried step whose claim was this attempt's own earlier one finds its
            # manifest published already: the job is complete, and so is this step.
            try:
                publish_once(temp, self._path(MANIFEST_NAME), self._output_root)
            except ObjectExists:
                pass
        yield manifest

    def _write_notices(self) -> list[FinalFile]:
        """The request's notices as one error file, written whole (again, by a retried step)."""
        if not self._notices:
            return []
        path = self._path(posixpath.join(ERROR_DIR, NOTICES_NAME))
        make_folders(self._path(ERROR_DIR), self._output_root)
        temp = self._write_hidden(path, b"".join(line + b"\n" for line in self._notices), NDJSON_MIME,
                                  self._output_root)
        try:
            publish_once(temp, path, self._output_root)
        except ObjectExists:  # an earlier try of this step wrote the same lines (on GCS, never overwritten)
            pass
        return [FinalFile(ERROR_TYPE, path, len(self._notices))]

    def _path(self, name: str) -> str:
        return FileSystems.join(self._job_dir, name)

    def _remove_hidden(self, name: str) -> None:
        """Removes what an earlier, cut-short try left under `name`'s hidden names."""
        stale = [m.path for m in FileSystems.match([self._path(f".{name}.*")])[0].metadata_list]
        if stale:
            FileSystems.delete(stale)

    @staticmethod
    def _write_hidden(path: str, data: bytes, mime: str = NDJSON_MIME, root: str = "") -> str:
        """Writes `data` beside `path` under a hidden name (below `root`, see `create_file`); returns that name."""
        folder, name = path.rsplit("/", 1)
        temp = f"{folder}/.{name}.{uuid.uuid4().hex}"
        with create_file(temp, mime, root) as f:
            f.write(data)
        return temp

    def _finalize_parts(self, parts: list[PartFile], folder: str = "") -> list[FinalFile]:
        """Gives `parts` their final names, in `folder` of the job's, numbered from 0 per type; a part
        published while the export ran (allowPartialManifests) keeps the name it was listed under."""
        inside = self._temp_dir.rstrip("/") + "/"
        published = [p for p in parts if not p.temp_path.startswith(inside)]
        parts = [p for p in parts if p.temp_path.startswith(inside)]
        kept = [FinalFile(p.type, p.temp_path, p.count) for p in sorted(published, key=lambda p: p.temp_path)]
        missing = [f.path for f in kept if not FileSystems.exists(f.path)]
        if missing:
            raise OSError(f"published parts are gone: {', '.join(missing)}")
        # Sorting by temp path only makes numbering stable for a given set of parts.
        parts = sorted(parts, key=lambda p: (p.type, p.temp_path))
        numbers: dict[str, int] = {}
        sources, final = [], []
        for part in parts:
            n = numbers.get(part.type, 0)
            numbers[part.type] = n + 1
            sources.append(part.temp_path)
            extension = posixpath.splitext(part.temp_path)[1]  # the part sink's: .ndjson, .parquet
            name = f"{part.type}-{n}{extension}"
            final.append(FinalFile(part.type, self._path(posixpath.join(folder, name) if folder else name), part.count))
        # Retry-safe: a part an earlier try of this step renamed already is left as it is.
        pending = [(source, f.path) for source, f in zip(sources, final) if FileSystems.exists(source)]
        if folder and pending and not FileSystems.exists(self._path(folder)):
            make_folders(self._path(folder), self._output_root)
        lost = [f.path for source, f in zip(sources, final)
                if (source, f.path) not in pending and not FileSystems.exists(f.path)]
        if lost:
            raise OSError(f"parts of this attempt are gone before their final names: {', '.join(lost)}")
        if pending:
            move([s for s, _ in pending], [d for _, d in pending], self._output_root)
        return kept + final
