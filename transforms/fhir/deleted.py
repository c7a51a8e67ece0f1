"""Deleted resources and the manifest's `deleted[]` (Bulk Data IG v3, "deleted").

With `_since`, an export lists each resource deleted after `_since` (and at or
before `transactionTime`) that it would have exported, as one line of a
`deleted` NDJSON file: a `Bundle` of type `transaction` with one entry whose
`request` is `DELETE <Type>/<id>`. Without `_since` a deleted resource is
simply not exported. Beam-free: the read and `transforms.select.deletions` use it.

A deletion is judged by the deleted version's body where the source keeps it
(so the compartment of a Patient- or Group-level export can place it), else by
its type and id alone, which place only a deleted Patient itself.
"""

from __future__ import annotations

from typing import Optional, Union

import orjson

from transforms.fhir.r4 import RESOURCE_TYPES
from transforms.fhir.references import FHIR_ID

NOT_A_TYPE = "deleted record: resourceType is not an R4 resource type; not listed in deleted[]"
NO_ID = "deleted record: has no valid id; not listed in deleted[]"


def deleted_body(resource_type: object, rid: object, raw: Optional[bytes]) -> Union[dict, str]:
    """The body a deletion is judged by, or (a `str`) why it cannot be listed.

    The deleted version's JSON when `raw` holds it and it agrees with the record's
    type and id; otherwise just `{"resourceType", "id"}`. A deletion needs a known
    type and a valid id: they are the `DELETE` request's URL.
    """
    if resource_type not in RESOURCE_TYPES:
        return NOT_A_TYPE
    if type(rid) is not str or not FHIR_ID.match(rid):
        return NO_ID
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if type(body) is dict and body.get("resourceType") == resource_type and body.get("id") == rid:
            return body
    return {"resourceType": resource_type, "id": rid}


def deletion_line(resource_type: str, rid: str, deleted_at: Optional[str]) -> bytes:
    """One `deleted` file line: a transaction Bundle deleting `<resource_type>/<rid>`.

    `meta.lastUpdated` is when the resource was deleted, where the source says.
    """
    bundle: dict = {"resourceType": "Bundle"}
    if deleted_at:
        bundle["meta"] = {"lastUpdated": deleted_at}
    bundle["type"] = "transaction"
    bundle["entry"] = [{"request": {"method": "DELETE", "url": f"{resource_type}/{rid}"}}]
    return orjson.dumps(bundle)
