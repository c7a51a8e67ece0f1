"""The server's Prometheus metrics (`GET /metrics`, the text format), made with `prometheus-client`.

Jobs by state are counted from the job store at each scrape, so they are true
across restarts and across servers sharing a store; everything else counts
what this server did since it started.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from launcher.stores import StoredJob
from pipelines.models import ExportStatus

CONTENT_TYPE = CONTENT_TYPE_LATEST
# An export of the sample takes seconds; one of a large source, hours.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 2 * 3600, 6 * 3600, 24 * 3600)


class Metrics:
    """This server's metrics, in a registry of its own (not the process-wide default one)."""

    def __init__(self, jobs: Callable[[], Iterable[StoredJob]]):
        self.registry = registry = CollectorRegistry(auto_describe=True)
        registry.register(_JobsByState(jobs))
        self.job_events = Counter("bulk_export_job_events", "Job lifecycle events this server recorded",
                                  ["event"], registry=registry)
        self.durations = Histogram("bulk_export_duration_seconds", "Time from kick-off to complete, per export",
                                   buckets=DURATION_BUCKETS, registry=registry)
        self.resources = Counter("bulk_export_resources_written", "Resources written by complete exports",
                                 ["type"], registry=registry)
        self.bytes = Counter("bulk_export_bytes_written", "Bytes of output files written by complete exports"
                             " (local output only)", registry=registry)
        self.downloads = Counter("bulk_export_downloads", "Files served from /files", registry=registry)
        self.refusals = Counter("bulk_export_refusals", "Requests answered with a 4xx OperationOutcome",
                                ["status", "reason"], registry=registry)
        self.token_grants = Counter("bulk_export_token_grants", "Access tokens issued", registry=registry)
        self.token_refusals = Counter("bulk_export_token_refusals", "Token requests refused, by RFC 6749 error",
                                      ["reason"], registry=registry)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)

    def completed(self, job: StoredJob, seconds: float, nbytes: int) -> None:
        self.durations.observe(seconds)
        for progress in job.progress:
            self.resources.labels(progress.type).inc(progress.exported)
        self.bytes.inc(nbytes)


class _JobsByState:
    """`bulk_export_jobs{tenant, state}`: the jobs the store holds now, read at each scrape."""

    def __init__(self, jobs: Callable[[], Iterable[StoredJob]]):
        self._jobs = jobs

    def describe(self) -> list:
        return [GaugeMetricFamily("bulk_export_jobs", "Jobs in the job store, by tenant and state",
                                  labels=["tenant", "state"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts: dict[tuple[str, str], int] = {}
        tenants: set[str] = set()
        for job in self._jobs():
            tenants.add(job.tenant)
            counts[job.tenant, job.status.value] = counts.get((job.tenant, job.status.value), 0) + 1
        family = GaugeMetricFamily("bulk_export_jobs", "Jobs in the job store, by tenant and state",
                                   labels=["tenant", "state"])
        for tenant in sorted(tenants):  # every state of a tenant with jobs, zeros included
            for state in ExportStatus:
                family.add_metric([tenant, state.value], counts.get((tenant, state.value), 0))
        yield family
