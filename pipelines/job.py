"""One export job as the pipeline sees it: which job, when, for whom, where, and its settings."""

from __future__ import annotations

import dataclasses

from apache_beam.io.filesystems import FileSystems

from pipelines.options import ExportOptions, ExportSettings
from transforms.errors import Refused
from transforms.storage.layout import TEMP_DIR_NAME
from transforms.storage.patients_file import FILE_NAME as PATIENTS_FILE
from transforms.storage.pg_source import ReadAt


@dataclasses.dataclass(frozen=True)
class ExportJob:
    """Everything a run needs besides the request: which job, when, for whom, and settings."""

    job_id: str
    transaction_time: str
    settings: ExportSettings
    tenant: str = "default"
    attempt: int = 1  # a resumed job runs again as attempt 2, 3, ...
    source_snapshot: str = ""  # a PostgreSQL source's snapshot, exported by the launcher that holds it

    @property
    def read_at(self) -> ReadAt:
        """What a PostgreSQL source is read at: `transactionTime`, in the launcher's snapshot."""
        return ReadAt(self.transaction_time, self.source_snapshot)

    @property
    def job_dir(self) -> str:
        return FileSystems.join(self.settings.output, self.tenant, self.job_id)

    @property
    def temp_dir(self) -> str:
        """This attempt's own hidden folder for parts, so two attempts' parts never mix."""
        return FileSystems.join(self.job_dir, f"{TEMP_DIR_NAME}-{self.attempt}")

    @property
    def patients_path(self) -> str:
        """Where the launcher leaves the patients a Patient- or Group-level export covers."""
        return FileSystems.join(self.temp_dir, PATIENTS_FILE)

    @classmethod
    def from_options(cls, options: ExportOptions) -> "ExportJob":
        missing = [n for n in ("source", "output", "job_id", "transaction_time") if not getattr(options, n)]
        if missing:
            raise Refused(f"missing pipeline options: {', '.join('--' + m for m in missing)}")
        return cls(
            options.job_id,
            options.transaction_time,
            ExportSettings.from_namespace(options),
            options.tenant,
            options.attempt,
            options.source_snapshot or "",
        )

    def to_argv(self) -> list[str]:
        """The same job as `ExportOptions` flags."""
        values = {
            "job_id": self.job_id,
            "transaction_time": self.transaction_time,
            "tenant": self.tenant,
            "attempt": self.attempt,
            "source_snapshot": self.source_snapshot,
        }
        values.update(dataclasses.asdict(self.settings))
        return [f"--{name}={_flag(value)}" for name, value in values.items()]


def _flag(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
