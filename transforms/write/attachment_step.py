"""Attachments served beside the parts: `Attachment.url`s that resolve inside the source, rewritten.

`StageBinaries` writes the content of every Binary of the source (its `data`) to
the attempt's temporary folder, named by its SHA-1, and gives a small side input:
id -> `Stored`. `ServeAttachments`, the last step before the write, then looks at
each resource of a type that can hold an Attachment (`transforms.fhir.attachments`):

- `Binary/<id>` of a Binary in the source, or a path relative to the source root
  that stays inside it (`transforms.storage.source_files.open_below`), is put in the
  job's `attachments/<Type>/` folder (`transforms.storage.attachment_files`) and its
  `url` rewritten to the file's download URL, named as the manifest names parts, with
  `size` and `hash` set to the served file's;
- with `max_inline` above 0, an Attachment without a `url` whose inline `data` is
  larger is moved the same way (`data` removed, `url`, `size`, `hash` set);
- an absolute URL is left as it is; the job's `error[]` says once that such
  attachments are not served here (no URL copied);
- a url naming nothing served (a missing Binary or file, a path that could leave
  the source) is left as it is, and a `warning` names the resource.

Only a resource with a rewritten Attachment is re-serialised; a cheap byte test
(`"url"`, or `"data"` when inline content may move, and the key an Attachment of the type
hangs from, such as `"photo"`) passes every other by unparsed.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, NamedTuple, Optional

import apache_beam as beam
import orjson

from transforms.fhir.attachments import ATTACHMENT_PATHS, BINARY, attachments, decoded_data, target
from transforms.records import BadRecord, Origin, Resource, ResourceBatch
from transforms.steps.fence import Fence, check_fence
from transforms.steps.resource_step import ResourceStep, StepOutputs
from transforms.steps.spill import SpillRecords, read_partition
from transforms.storage.attachment_files import Stored, folder, place_file, place_staged, write_content
from transforms.storage.source_files import AttachmentNotServed, open_below
from transforms.storage.urls import ManifestUrls

_FENCE_EVERY_S = 1.0
# Per type, the JSON keys its Attachments hang from (`"photo"`): a resource naming none holds none.
_MARKERS = {name: tuple({b'"%s"' % path[0].encode() for path in paths}) for name, paths in ATTACHMENT_PATHS.items()}
EXTERNAL_LOCATION = "Attachment.url"
EXTERNAL_NOTE = ("attachments whose url is an absolute URL are left as they are: this server does not serve "
                 "their content, which may need other credentials")


class AttachmentPlaces(NamedTuple):
    """Where attachments come from and go, and how they are named (picklable)."""

    source_root: str  # `transforms.storage.source_files.source_root`; "" (PostgreSQL): no relative paths
    job_dir: str
    staging: str  # the attempt's staged Binaries
    output_root: str
    urls: ManifestUrls
    max_inline: int = 0  # 0: inline data is always kept
    later: str = ""  # the attempt's spilled resources that wait for the Binaries (`ServeAttachments(defer=True)`)


class StageBinaries(beam.PTransform):
    """Binaries' content staged under `staging`; one dict, id -> `Stored`, for a side input."""

    def __init__(self, staging: str):
        super().__init__()
        self._staging = staging

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> beam.PCollection:
        return batches | "Stage" >> beam.ParDo(_StageFn(self._staging)) | "Index" >> beam.combiners.ToDict()


class _StageFn(beam.DoFn):
    def __init__(self, staging: str):
        self._staging = staging

    def process(self, batch: ResourceBatch) -> Iterator[tuple[str, Stored]]:
        for resource in batch.resources:
            if resource.type != BINARY:
                continue
            body = resource.body if resource.body is not None else orjson.loads(resource.raw)
            content = decoded_data(body)
            if content is not None and type(body.get("id")) is str:
                yield body["id"], write_content([content], self._staging)


def _may_name_binary(raw: bytes) -> bool:
    """A byte test: False when no `Attachment.url` of the resource can be `Binary/<id>` (written
    plainly, with `\\/`, or with a `\\u` escape)."""
    return b"Binary" in raw or b"\\u" in raw


class ServeAttachments(beam.PTransform):
    """The attachment step: `StepOutputs` of the batches, rewritten where needed, and the warnings,
    with at most one notice of attachments at absolute URLs.

    With `defer`, `binaries` comes from the stage that feeds this step (the export's one read), so
    only the resources that may name a Binary (a byte test) wait for it: they are spilled to run
    files under `places.later` (only the files' names are shuffled), then read back, served and
    given as `later` in a stage of their own; every other resource is served at once, where it is
    read. The runner never holds resources until the Binaries are staged.
    """

    def __init__(self, places: AttachmentPlaces, binaries: beam.pvalue.AsSideInput, fence: Optional[Fence] = None,
                 defer: bool = False):
        super().__init__()
        self._places, self._fence, self._defer = places, fence, defer
        if defer:
            self._step = ResourceStep("Attachments", _ServeFn(places, fence, defer=True), later=True)
            self._later_step = ResourceStep("Attachments", _ServeFn(places, fence), binaries)
        else:
            self._step = ResourceStep("Attachments", _ServeFn(places, fence), binaries)

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        out = batches | "Serve" >> self._step
        later, errors = None, out.errors
        if self._defer:
            spill = SpillRecords(self._places.later, _spill_records, self._fence, write_every=1,
                                 output_root=self._places.output_root)
            waiting = (out.later | "Spill" >> beam.ParDo(spill) | "RunFiles" >> beam.Reshuffle()
                       | "ReadBack" >> beam.FlatMap(_spilled_batches).with_output_types(ResourceBatch))
            served = waiting | "ServeNamingBinaries" >> self._later_step
            later, errors = served.batches, (out.errors, served.errors) | "AllServed" >> beam.Flatten()
        warnings, notes = errors | "Split" >> beam.Partition(
            lambda record, _: int(record.location == EXTERNAL_LOCATION), 2)
        note = (notes | "OneNote" >> beam.CombineGlobally(_first)
                | "IfAny" >> beam.Filter(lambda record: record is not None))
        return StepOutputs(out.batches, (warnings, note) | "Errors" >> beam.Flatten(), later)


def _spill_records(batch: ResourceBatch) -> dict[int, list]:
    """A batch as one marshallable record (bodies are parsed again when read back)."""
    resources = [(r.type, r.raw, r.index, r.last_updated, r.entry, r.body is not None) for r in batch.resources]
    return {0: [(batch.origin.path, batch.origin.offset, resources)]}


def _spilled_batches(run_file: tuple[int, str]) -> Iterator[ResourceBatch]:
    """The batches `_spill_records` wrote to one run file."""
    for path, offset, resources in read_partition([run_file[1]]):
        yield ResourceBatch(Origin(path, offset), [
            Resource(kind, raw, orjson.loads(raw) if parsed else None, index, last_updated, entry)
            for kind, raw, index, last_updated, entry, parsed in resources])


def _first(records) -> Optional[BadRecord]:
    return next((r for r in records if r is not None), None)


class _ServeFn(beam.DoFn):
    def __init__(self, places: AttachmentPlaces, fence: Optional[Fence], defer: bool = False):
        self._places = places
        self._fence = fence
        self._defer = defer  # resources that may name a Binary are tagged `later`, not served

    def setup(self) -> None:
        self._name = self._places.urls.namer(self._places.output_root)
        self._checked = 0.0

    def start_bundle(self) -> None:
        self._noted = False

    def process(self, batch: ResourceBatch, binaries: Optional[dict[str, Stored]] = None) -> Iterator:
        kept, later = [], []
        for resource in batch.resources:
            markers = _MARKERS.get(resource.type)
            if markers is not None and self._may_hold(resource.raw, markers):
                if self._defer and _may_name_binary(resource.raw):
                    later.append(resource)
                    continue
                resource = yield from self._serve(batch.origin, resource, binaries or {})
            kept.append(resource)
        if later:
            yield beam.pvalue.TaggedOutput("later", ResourceBatch(batch.origin, later, 0))  # its bytes counted once
        yield batch.replace(kept)

    def _may_hold(self, raw: bytes, markers: tuple[bytes, ...]) -> bool:
        """A byte test: False when the resource cannot hold an Attachment this step would change."""
        if b'"url"' not in raw and (self._places.max_inline <= 0 or b'"data"' not in raw):
            return False
        return any(marker in raw for marker in markers)

    def _serve(self, origin: Origin, resource: Resource, binaries: dict[str, Stored]) -> Iterator:
        body = resource.body if resource.body is not None else orjson.loads(resource.raw)
        changed = False
        for attachment in attachments(resource.type, body):
            stored, why = self._stored(resource.type, attachment, binaries)
            if why == EXTERNAL_NOTE:
                if not self._noted:
                    self._noted = True
                    yield beam.pvalue.TaggedOutput("errors", BadRecord(
                        Origin("", 0), -1, why, code="informational", location=EXTERNAL_LOCATION,
                        severity="information", exported=True))
            elif why:
                rid = body.get("id")
                yield beam.pvalue.TaggedOutput("errors", BadRecord(
                    origin, resource.index, f"Attachment.url: {why}; not served, left as it is", resource.type,
                    code="not-found", resource_id=rid if type(rid) is str else None, severity="warning",
                    entry=resource.entry))
            if stored is not None:
                if type(attachment.get("url")) is not str:  # inline data moved to a served file
                    del attachment["data"]
                attachment["url"] = self._name(f"{folder(self._places.job_dir, resource.type)}/{stored.name}")
                attachment["size"], attachment["hash"] = stored.size, stored.hash
                changed = True
        if not changed:
            return resource
        return resource._replace(raw=orjson.dumps(body), body=body if resource.body is not None else None)

    def _stored(self, resource_type: str, attachment: dict[str, Any], binaries: dict[str, Stored]
                ) -> tuple[Optional[Stored], str]:
        """The served file of one Attachment (None: none), and why not (empty: nothing to say)."""
        url, dest = attachment.get("url"), folder(self._places.job_dir, resource_type)
        if type(url) is not str:
            limit = self._places.max_inline
            content = decoded_data(attachment) if limit > 0 else None
            if content is None or len(content) <= limit:
                return None, ""
            self._check_fence()
            return write_content([content], dest), ""
        named = target(url)
        if named.kind == "absolute":
            return None, EXTERNAL_NOTE
        if named.kind == "refused":
            return None, named.value
        if named.kind == "binary":
            stored = binaries.get(named.value)
            if stored is None:
                return None, "names a Binary the source does not hold (or one without data)"
            self._check_fence()
            place_staged(f"{self._places.staging}/{stored.name}", stored, dest)
            return stored, ""
        if not self._places.source_root:
            return None, "a relative path, and the source is not a folder"
        self._check_fence()
        try:
            with open_below(self._places.source_root, named.value) as f:
                return place_file(f, dest), ""
        except AttachmentNotServed as exc:
            return None, f"a path in the source: {exc}"

    def _check_fence(self) -> None:
        now = time.monotonic()
        if now - self._checked >= _FENCE_EVERY_S:
            check_fence(self._fence, "writing an attachment")
            self._checked = now
