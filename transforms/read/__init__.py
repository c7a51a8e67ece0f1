"""Sources: a `--source` planned into chunks and read into batches of resources (NDJSON, Bundles, Avro, Parquet)."""
