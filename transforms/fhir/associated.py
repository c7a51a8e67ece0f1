"""`includeAssociatedData` (Bulk Data IG v3): which Provenance resources belong with an export.

`RelevantProvenanceResources` asks for every Provenance whose `target` names
an exported resource; `LatestProvenanceResources` for the latest of them per
target, by `recorded`, then `meta.lastUpdated`. Beam-free: the kickoff
validates the values with it, and `transforms.select.add_associated` joins.
"""

from __future__ import annotations

from typing import Iterator

from transforms.fhir.references import split_reference

PROVENANCE = "Provenance"
LATEST, RELEVANT = "LatestProvenanceResources", "RelevantProvenanceResources"
ASSOCIATED_DATA = (LATEST, RELEVANT)


def target_keys(provenance: dict) -> Iterator[str]:
    """The `Type/id` of every resource a Provenance's `target` names, once each."""
    targets = provenance.get("target")
    seen = set()
    for target in targets if type(targets) is list else ():
        reference = target.get("reference") if type(target) is dict else None
        if type(reference) is str:
            named = split_reference(reference)
            key = f"{named.type}/{named.id}"
            if named.type and named.id and key not in seen:
                seen.add(key)
                yield key


def recency(provenance: dict) -> tuple[str, str]:
    """What makes one Provenance later than another: `recorded`, then `meta.lastUpdated` (as text:
    both are FHIR instants, compared here only among a target's own Provenances)."""
    meta = provenance.get("meta")
    updated = meta.get("lastUpdated") if type(meta) is dict else None
    recorded = provenance.get("recorded")
    return (recorded if type(recorded) is str else "", updated if type(updated) is str else "")
