"""Keeps Beam's import-time apitools notice out of the launcher's output."""

import logging


class _DropApitoolsNotice(logging.Filter):
    """Beam 2.77 warns at import that BigQuery's apitools is absent; we never use BigQuery."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


def drop_apitools_notice() -> None:
    """Keeps Beam's import-time apitools notice off the root logger (once per process); each entry
    point calls it before Beam is imported."""
    root = logging.getLogger()
    if not any(isinstance(f, _DropApitoolsNotice) for f in root.filters):
        root.addFilter(_DropApitoolsNotice())
