"""The `deleted[]` step: deleted resources in scope become the `deleted` file's Bundle lines.

The rule and the line are Beam-free (`transforms.fhir.deleted`); this step
turns each batch of scoped deletions into a batch of `Bundle` lines, which
`WriteParts` writes into the job's `deleted` parts like any output.
"""

from __future__ import annotations

import apache_beam as beam

from transforms.fhir.deleted import deletion_line
from transforms.records import Resource, ResourceBatch

BUNDLE = "Bundle"  # the manifest's `deleted[].type`


class DeletionBundles(beam.PTransform):
    """Maps batches of deleted resources to batches of their `DELETE` Bundle lines."""

    def expand(self, deletions: beam.PCollection[ResourceBatch]) -> beam.PCollection[ResourceBatch]:
        return deletions | beam.Map(_bundles).with_output_types(ResourceBatch)


def _bundles(batch: ResourceBatch) -> ResourceBatch:
    return batch.replace([
        Resource(BUNDLE, deletion_line(r.type, r.body["id"], r.last_updated or _meta_time(r.body)), None, r.index)
        for r in batch.resources
    ])


def _meta_time(body: dict):
    meta = body.get("meta")
    value = meta.get("lastUpdated") if type(meta) is dict else None
    return value if type(value) is str else None
