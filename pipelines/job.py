"""One export job as the pipeline sees it: which job, when, for whom, where, and its settings."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from pipelines.declarations import MISSING, declared, option, option_text
from pipelines.settings import ExportSettings
from transforms.errors import Refused
from transforms.storage.files import join
from transforms.storage.layout import TEMP_DIR_NAME
from transforms.storage.patients_file import FILE_NAME as PATIENTS_FILE
from transforms.storage.pg_source import ReadAt

if TYPE_CHECKING:
    from pipelines.options import ExportOptions

_UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_INSTANT = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"
_NAME = "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


@dataclasses.dataclass(frozen=True)
class ExportJob:
    """Everything a run needs besides the request: which job, when, for whom, and settings.

    Each field but `settings` is declared once as a pipeline option, which `to_argv` and `from_options` carry.
    """

    # A template run without them gets them from its entry point (`launcher.jobs.submit`).
    job_id: str = option(help="the job's id (a UUID)", label="Job id", regex=_UUID, template_optional=True)
    transaction_time: str = option(help="the kickoff instant, frozen", label="Transaction time", regex=_INSTANT,
                                   template_optional=True)
    settings: ExportSettings
    tenant: str = option("default", help="the job's tenant", label="Tenant", regex=f"^{_NAME}$")
    attempt: int = option(1, help="the job's attempt: 1, or more once resumed", label="Attempt", positive=True)
    source_snapshot: str = option(
        "", help="a PostgreSQL source's exported snapshot, which every reader joins (set by the launcher)",
        label="Source snapshot", regex="^[0-9A-Fa-f-]*$")
    patients_file: int = option(
        -1, help="how many patients the launcher wrote to the job's patients file; -1: it wrote none (set by the "
        "launcher)", label="Patients in the patients file", regex="^-?[0-9]+$")
    outside_patients: int = option(
        -1, help="how many ids of the source's other Patients the launcher wrote to the job's patients file; -1: "
        "none written (set by the launcher)", label="Other patients in the patients file", regex="^-?[0-9]+$")

    @property
    def read_at(self) -> ReadAt:
        """What a PostgreSQL source is read at: `transactionTime`, in the launcher's snapshot."""
        return ReadAt(self.transaction_time, self.source_snapshot)

    @property
    def job_dir(self) -> str:
        return join(self.settings.output, self.tenant, self.job_id)

    @property
    def temp_dir(self) -> str:
        """This attempt's own hidden folder for parts, so two attempts' parts never mix."""
        return join(self.job_dir, f"{TEMP_DIR_NAME}-{self.attempt}")

    @property
    def patients_path(self) -> str:
        """Where the launcher leaves the patients a Patient- or Group-level export covers."""
        return join(self.temp_dir, PATIENTS_FILE)

    @classmethod
    def from_options(cls, options: "ExportOptions") -> "ExportJob":
        missing = [o.name for o in (*declared(ExportSettings), *declared(cls))
                   if o.default is MISSING and not getattr(options, o.name)]
        if missing:
            raise Refused(f"missing pipeline options: {', '.join('--' + m for m in missing)}")
        job = {o.name: getattr(options, o.name) for o in declared(cls)}
        return cls(settings=ExportSettings.from_namespace(options), **job)

    def to_argv(self) -> list[str]:
        """The same job as `ExportOptions` flags."""
        values = {o.name: getattr(self, o.name) for o in declared(type(self))} | dataclasses.asdict(self.settings)
        return [f"--{name}={option_text(value)}" for name, value in values.items()]


@dataclasses.dataclass(frozen=True)
class Submission:
    """The pipeline options only the template's entry point (`launcher.jobs.submit`) reads, beside the job's."""

    request: str = option(help="the validated ExportRequest as JSON", label="Export request (JSON)")
    schedule: str = option("", help="a named incremental schedule: _since is the last successful run's "
                           "transactionTime", label="Schedule name", regex=f"^({_NAME})?$")
    lease_s: float = option(900.0, help="a submitted job's lease in seconds: the pipeline renews it as it reports; "
                            "once it lapses the job ends in error", label="Lease seconds", regex="^[0-9]+(\\.[0-9]+)?$")
    audit_dir: str = option("", help="folder of the AuditEvent log; default the SQLite job store's folder, else one "
                            "JSON line each on stderr", label="Audit folder")
    job_store: str = option("", help="job store the final step marks the job complete in (postgresql://...); "
                            "needed off this machine", label="Job store", regex="^(postgres(ql)?://.+)?$")
