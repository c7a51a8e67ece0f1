"""The job sink: how the pipeline's last step reports to whoever tracks the job.

The launcher injects an implementation (e.g. one bound to its job store), so
`pipelines/` never imports `launcher/`. It must be picklable: on a distributed
runner it travels to the workers with the DoFns.
"""

from __future__ import annotations

from typing import Protocol

from pipelines.models import Manifest


class JobSink(Protocol):
    """Reports progress and completion of one job."""

    def progress(self, counts: dict[str, int]) -> None:
        """Adds resources written so far, per type."""

    def complete(self, manifest: Manifest, bad_records: int) -> None:
        """Marks the job complete; called only after the manifest is written."""
