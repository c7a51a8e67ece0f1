"""Tests for transforms.steps.resource_step.ResourceStep: dead-lettered batches become bad records."""

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from transforms.records import BadRecord, Origin, Resource, ResourceBatch
from transforms.steps.resource_step import ResourceStep


def _batch(path: str, *ids: str) -> ResourceBatch:
    return ResourceBatch(
        Origin(path, 0), [Resource("Patient", b"{}", {"id": rid}, i) for i, rid in enumerate(ids)]
    )


class _FailsOnSecretFile(beam.DoFn):
    """Keeps every batch, reports one bad resource, and crashes on one file."""

    def process(self, batch):
        if batch.origin.path == "secret.ndjson":
            raise KeyError("a value that must not reach the manifest")
        if batch.origin.path == "odd.ndjson":
            yield beam.pvalue.TaggedOutput("errors", BadRecord(batch.origin, 0, "odd", "Patient"))
        yield batch


def test_a_failing_batch_is_dead_lettered_resource_by_resource(pipeline):
    batches = [_batch("a.ndjson", "a1", "a2"), _batch("secret.ndjson", "s1", "s2", "s3"), _batch("odd.ndjson", "o1")]
    out = pipeline | beam.Create(batches) | ResourceStep("my step", _FailsOnSecretFile())
    kept = out.batches | "Kept" >> beam.FlatMap(lambda b: [r.body["id"] for r in b.resources])
    errors = out.errors | "Why" >> beam.Map(lambda r: (r.origin.path, r.index, r.reason, r.resource_type, r.code))
    assert_that(kept, equal_to(["a1", "a2", "o1"]))
    failed = "not exported: my step failed unexpectedly (KeyError)"
    assert_that(
        errors,
        equal_to(
            [("secret.ndjson", i, failed, "Patient", "exception") for i in range(3)]
            + [("odd.ndjson", 0, "odd", "Patient", "invalid")]
        ),
        label="Errors",
    )
    pipeline.run()
