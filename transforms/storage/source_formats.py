"""Source formats and read sizes: the names `--source-format` takes, and how a file's kind is told.

Beam-free, so the command line can list the formats without importing the readers.
"""

from __future__ import annotations

from typing import Optional

NDJSON, DOCUMENT, AUTO = "ndjson", "bundle", "auto"
AVRO, PARQUET = "avro", "parquet"
COLUMNAR_FORMATS = (AVRO, PARQUET)
SOURCE_FORMATS = (AUTO, NDJSON, DOCUMENT, *COLUMNAR_FORMATS)
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
DOCUMENT_SUFFIXES = (".json",)
GZIP_MAGIC = b"\x1f\x8b"
_COLUMNAR_SUFFIXES = {".avro": AVRO, ".parquet": PARQUET, ".parq": PARQUET}
_COLUMNAR_MAGIC = {b"Obj\x01": AVRO, b"PAR1": PARQUET}

# Bytes of NDJSON per chunk: small enough that the local runner's workers, dealt
# chunks in turn, finish together (16 MiB left one idle for ~0.1 s of a 1 s export).
CHUNK_BYTES = 4 << 20
# Resources per batch: few enough that parsed bodies a later step reads are still in
# the CPU cache when it runs (2,000 made Group, _typeFilter and _elements exports 10-15% slower).
BATCH_SIZE = 500


def columnar_kind(path: str, head: bytes) -> Optional[str]:
    """`avro` or `parquet` by the file's extension, else by its magic bytes; None for neither."""
    for suffix, kind in _COLUMNAR_SUFFIXES.items():
        if path.endswith(suffix):
            return kind
    return _COLUMNAR_MAGIC.get(head[:4])
