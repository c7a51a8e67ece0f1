"""The `includeAssociatedData` step: adds the Provenance resources of what an export holds.

Which ones is `transforms.fhir.associated`'s rule; here it is two keyed joins on
`Type/id`: the exported side shuffles only keys, never bodies, and only the
candidate Provenances travel. A Provenance the export holds already, or that
several targets choose, is written once.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

import apache_beam as beam

from transforms.fhir.associated import recency, target_keys
from transforms.records import Origin, Resource, ResourceBatch
from transforms.select.duplicates import resource_id


class AddProvenance(beam.PTransform):
    """From the exported batches and the source's Provenance batches: the Provenances to add, as batches."""

    def __init__(self, provenance: beam.PCollection, latest_only: bool):
        super().__init__()
        self._provenance = provenance
        self._latest_only = latest_only

    def expand(self, exported: beam.PCollection[ResourceBatch]) -> beam.PCollection[ResourceBatch]:
        keys = exported | "ExportedKeys" >> beam.FlatMap(_exported_keys)
        candidates = self._provenance | "ByTarget" >> beam.FlatMap(_by_target)
        chosen = (
            {"exported": keys, "provenance": candidates}
            | "JoinTargets" >> beam.CoGroupByKey()
            | "Choose" >> beam.FlatMap(_chosen, self._latest_only)
        )
        return (
            {"exported": keys, "chosen": chosen}
            | "OncePerProvenance" >> beam.CoGroupByKey()
            | "NotExportedYet" >> beam.FlatMap(_once).with_output_types(ResourceBatch)
        )


def _key(resource: Resource) -> Optional[str]:
    rid = resource_id(resource)
    return f"{resource.type}/{rid.decode()}" if rid is not None else None


def _exported_keys(batch: ResourceBatch) -> Iterator[tuple[str, None]]:
    for resource in batch.resources:
        key = _key(resource)
        if key is not None:
            yield key, None


def _by_target(batch: ResourceBatch) -> Iterator[tuple[str, tuple]]:
    """Each Provenance under the `Type/id` of every resource its `target` names."""
    for resource in batch.resources:
        body, key = resource.body, _key(resource)
        if key is None or type(body) is not dict:
            continue
        order = (*recency(body), key)
        for target in target_keys(body):
            yield target, (key, order, batch.origin, resource)


def _chosen(joined: tuple, latest_only: bool) -> Iterator[tuple[str, tuple]]:
    """The Provenances a target exported keeps: all of them, or its latest one."""
    _, grouped = joined
    if not any(True for _ in grouped["exported"]):
        return
    provenances = list(grouped["provenance"])
    if latest_only and provenances:
        provenances = [max(provenances, key=lambda p: p[1])]  # `recorded`, then lastUpdated, then id
    for key, _, origin, resource in provenances:
        yield key, (origin, resource)


def _once(joined: tuple) -> Iterator[ResourceBatch]:
    _, grouped = joined
    if any(True for _ in grouped["exported"]):
        return  # the export holds this Provenance already
    chosen: Iterable[tuple[Origin, Resource]] = grouped["chosen"]
    for origin, resource in chosen:
        yield ResourceBatch(origin, [resource])
        return
