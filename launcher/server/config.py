"""What one `bulk-export serve` needs: where jobs and files live, its public URL, and its export defaults."""

from __future__ import annotations

import dataclasses
from typing import Optional

from pipelines.settings import ExportSettings
from transforms.errors import Refused

AUTH_MODES = ("none", "smart")
TOKEN_PATH = "/auth/token"
SMART_CONFIGURATION_PATH = "/fhir/.well-known/smart-configuration"
FILES_PATH = "/files"
PUBLISH_PATH = "/publish"  # a publication: <base-url>/publish/<tenant>/<name>/$bulk-publish
FHIR_PATH = "/fhir"
STATUS_PATH = "/fhir/bulk-status"
MIN_ADMIN_TOKEN = 16


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """A server's settings; `settings` are the export defaults every kick-off starts from."""

    settings: ExportSettings
    state_dir: str
    base_url: str  # the public URL, no trailing slash: [base] is base_url + "/fhir"
    job_store: Optional[str] = None  # postgresql://...; None: the SQLite store in state_dir
    tenant: str = "default"
    owner: Optional[str] = None  # --auth none: the owner of every job this server records
    auth: str = "none"  # smart: SMART Backend Services; each client's jobs are its tenant's, owned by its id
    max_active: int = 4
    # The local runner's processes all running exports share (`pipelines.workers.WorkerBudget`); None: the cores.
    worker_budget: Optional[int] = None
    lease_s: float = 30.0
    beam_args: tuple[str, ...] = ()
    cleanup_ttl_s: float = 24 * 3600.0  # what `Expires` advertises
    maintenance_every_s: float = 30.0  # how often lapsed leases are reaped and expired jobs removed
    retry_after_s: int = 2
    max_body_bytes: int = 1 << 20
    manifest_page_files: int = 1000  # files per page of an allowPartialManifests manifest
    read_index_interval_s: float = 10.0  # how often a read may list the source again to refresh its index
    # The operator page's and /metrics' bearer token; None: only loopback clients, and only with --auth none.
    admin_token: Optional[str] = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise Refused(f"--auth must be one of {', '.join(AUTH_MODES)}, not {self.auth!r}")
        if not self.base_url.startswith(("http://", "https://")):
            raise Refused(f"--base-url must be an http(s) URL, not {self.base_url!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.worker_budget is not None and self.worker_budget < 1:
            raise Refused("--worker-budget must be at least 1")
        if self.manifest_page_files < 1:
            raise Refused("--manifest-page-files must be at least 1")
        if self.admin_token is not None and (len(self.admin_token) < MIN_ADMIN_TOKEN or not self.admin_token.isprintable()
                                             or " " in self.admin_token):
            raise Refused(f"--admin-token must be at least {MIN_ADMIN_TOKEN} printable characters without spaces")

    @property
    def store_url(self) -> str:
        return self.job_store or self.state_dir

    @property
    def fhir_base(self) -> str:
        return self.base_url + FHIR_PATH

    @property
    def files_base(self) -> str:
        return self.base_url + FILES_PATH

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    def status_url(self, job_id: str) -> str:
        return f"{self.base_url}{STATUS_PATH}/{job_id}"
