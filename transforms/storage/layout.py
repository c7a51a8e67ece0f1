"""What a job's folder holds, by name: the manifest, the error folder, and each attempt's temporary parts.

`<output>/<tenant>/<job_id>/` holds `<Type>-<n>.ndjson` (or `.parquet`) parts,
`error/OperationOutcome-<n>.ndjson` (bad records), `error/OperationOutcome-request.ndjson` (what
lenient handling ignored of the request), `deleted/Bundle-<n>.ndjson` (an incremental
export's deletions), `attachments/<Type>/<sha1>` (attachment content served for resources of
`<Type>`; listed in no manifest entry) and `manifest.json`, written last. While
an attempt runs, its parts wait in the hidden `.parts-tmp-<attempt>/`.
Beam-free, so the control plane can name these files without importing Beam.
"""

import os

MANIFEST_NAME = "manifest.json"
MANIFEST_MIME = "application/json"
ERROR_TYPE = "OperationOutcome"
# Error parts live in a subfolder so they never collide with exported OperationOutcomes.
ERROR_DIR = "error"
NOTICES_NAME = f"{ERROR_TYPE}-request.ndjson"  # in ERROR_DIR
DELETED_DIR = "deleted"
# Attachment content: in a job folder, served beside the parts; in a source folder, never read as resources.
ATTACHMENTS_DIR = "attachments"
TEMP_DIR_NAME = ".parts-tmp"
NDJSON_MIME = "application/fhir+ndjson"
PARQUET_MIME = "application/vnd.apache.parquet"


def gzip_cache_path(path: str) -> str:
    """Where the server keeps a served file's gzip copy: beside it, hidden (`.<name>.gz`), so it goes with
    its folder and no listing or URL ever names it."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.gz")
