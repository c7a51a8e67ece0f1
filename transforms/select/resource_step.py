"""Per-batch steps: the shape every filter and subsetting transform shares.

A step is a DoFn over `ResourceBatch`es that yields the batches to keep and,
tagged `errors`, a `BadRecord` for each resource it cannot handle. `ResourceStep`
wires it with a dead-letter output: if the DoFn fails unexpectedly on a batch,
each resource of that batch becomes a `BadRecord` naming the step and the
exception type, so an unforeseen bug surfaces in the manifest's `error[]`
instead of failing the whole export or losing resources silently.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, NamedTuple, Optional

import apache_beam as beam

from transforms.records import BadRecord, Resource, ResourceBatch

_LOG = logging.getLogger(__name__)


class StepOutputs(NamedTuple):
    """The kept batches and the records the step could not handle."""

    batches: beam.PCollection
    errors: beam.PCollection


class ResourceStep(beam.PTransform):
    """Applies `fn` (with any side inputs) to batches; returns `StepOutputs(batches, errors)`."""

    def __init__(self, step: str, fn: beam.DoFn, *side_inputs: beam.pvalue.AsSideInput):
        super().__init__()
        self._step = step
        self._fn = fn
        self._side_inputs = side_inputs

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        out = (
            batches
            | "Apply"
            >> beam.ParDo(self._fn, *self._side_inputs)
            .with_output_types(ResourceBatch, errors=BadRecord)
            .with_outputs("errors", main="batches")
            .with_exception_handling(dead_letter_tag="failed", on_failure_callback=_log_failure)
        )
        dead = out.failed | "DeadLetters" >> beam.FlatMap(_dead_letter_records, self._step)
        errors = (out.errors, dead) | "Errors" >> beam.Flatten()
        return StepOutputs(out.batches, errors)


def _log_failure(exc: Exception, batch: ResourceBatch) -> None:
    _LOG.error("step failed on a batch from %s: %r", batch.origin.path, exc)


def _dead_letter_records(failure, step: str) -> Iterator[BadRecord]:
    batch, (exc_type, _, _) = failure
    # The exception text may quote resource content, so only its type is reported.
    reason = f"not exported: {step} failed unexpectedly ({exc_type.__name__})"
    for resource in batch.resources:
        yield BadRecord(batch.origin, resource.index, reason, resource.type, code="exception")


def each_resource(
    batch: ResourceBatch,
    keep: Callable[[Resource], Optional[Resource]],
    bad_data: type[Exception],
    label: str,
) -> Iterator:
    """A step's per-resource loop: yields the batch of what `keep` returns (None drops a
    resource), and a `BadRecord`, tagged `errors`, for each resource on which it raises `bad_data`."""
    kept = []
    for resource in batch.resources:
        try:
            result = keep(resource)
        except bad_data as exc:
            reason = f"{label}: {exc}"
            yield beam.pvalue.TaggedOutput("errors", BadRecord(batch.origin, resource.index, reason, resource.type))
            continue
        if result is not None:
            kept.append(result)
    if kept:
        yield batch.replace(kept)
