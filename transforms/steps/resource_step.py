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
from transforms.steps import coders  # noqa: F401  (registers the ResourceBatch coder with Beam)

_LOG = logging.getLogger(__name__)


class StepOutputs(NamedTuple):
    """The kept batches and the records the step could not handle; `later`: the batches a step
    made with `later=True` left for a later stage (None: none)."""

    batches: beam.PCollection
    errors: beam.PCollection
    later: Optional[beam.PCollection] = None


class ResourceStep(beam.PTransform):
    """Applies `fn` (with any side inputs) to batches; returns `StepOutputs(batches, errors)`, and
    with `later=True` the batches `fn` tags `later` too."""

    def __init__(self, step: str, fn: beam.DoFn, *side_inputs: beam.pvalue.AsSideInput, later: bool = False):
        super().__init__()
        self._step = step
        self._fn = fn
        self._side_inputs = side_inputs
        self._types = {"errors": BadRecord, "later": ResourceBatch} if later else {"errors": BadRecord}

    def expand(self, batches: beam.PCollection[ResourceBatch]) -> StepOutputs:
        out = (
            batches
            | "Apply"
            >> beam.ParDo(self._fn, *self._side_inputs)
            .with_output_types(ResourceBatch, **self._types)
            .with_outputs(*self._types, main="batches")
            .with_exception_handling(dead_letter_tag="failed", on_failure_callback=_log_failure)
        )
        dead = out.failed | "DeadLetters" >> beam.FlatMap(_dead_letter_records, self._step)
        errors = (out.errors, dead) | "Errors" >> beam.Flatten()
        return StepOutputs(out.batches, errors, out.later if "later" in self._types else None)


def _log_failure(exc: Exception, batch: ResourceBatch) -> None:
    # Only the exception's type: its text may quote resource content.
    _LOG.error("step failed on a batch of %d resources from %s: %s", len(batch.resources), batch.origin.path,
               type(exc).__name__)


def _dead_letter_records(failure, step: str) -> Iterator[BadRecord]:
    batch, (exc_type, _, _) = failure
    # The exception text may quote resource content, so only its type is reported.
    reason = f"not exported: {step} failed unexpectedly ({exc_type.__name__})"
    for resource in batch.resources:
        yield BadRecord(batch.origin, resource.index, reason, resource.type, code="exception",
                        resource_id=_resource_id(resource), entry=resource.entry)


def each_resource(
    batch: ResourceBatch,
    keep: Callable[[Resource], Optional[Resource]],
    bad_data: type[Exception],
    label: str,
) -> Iterator:
    """A step's per-resource loop: yields the batch of what `keep` returns (None drops a
    resource), and a `BadRecord`, tagged `errors`, for each resource on which it raises `bad_data`.

    The reason is `label: ` and the exception's `rule` when it has one (a text without the
    value at fault, as `InvalidInstant` carries), else its message, which must then quote no
    source value. An exception's `severity` and `code` attributes, when set, are the issue's."""
    kept = []
    for resource in batch.resources:
        try:
            result = keep(resource)
        except bad_data as exc:
            reason = f"{label}: {getattr(exc, 'rule', None) or exc}"
            record = BadRecord(
                batch.origin, resource.index, reason, resource.type, code=getattr(exc, "code", "invalid"),
                resource_id=_resource_id(resource), severity=getattr(exc, "severity", "error"), entry=resource.entry,
            )
            yield beam.pvalue.TaggedOutput("errors", record)
            continue
        if result is not None:
            kept.append(result)
    if kept:
        yield batch.replace(kept)


def _resource_id(resource: Resource) -> Optional[str]:
    rid = resource.body.get("id") if type(resource.body) is dict else None
    return rid if type(rid) is str else None
