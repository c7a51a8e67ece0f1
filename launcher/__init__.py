"""The control plane: kickoff parsing, job stores, lifecycle and the `bulk-export` CLI."""

import logging


class _DropApitoolsNotice(logging.Filter):
    """Beam 2.77 warns at import that BigQuery's apitools is absent; we never use BigQuery."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


logging.getLogger().addFilter(_DropApitoolsNotice())
