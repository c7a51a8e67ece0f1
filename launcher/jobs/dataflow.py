"""Cancelling the Dataflow job of an export, through Dataflow's REST API (`projects.locations.jobs.update`).

The Flex Template submission records Dataflow's job id, project and region in
the job store (`RunnerJobQueries`). When the export is cancelled, the job is
asked to move to `JOB_STATE_CANCELLED` with the machine's Google credentials
(Application Default Credentials). `DATAFLOW_ENDPOINT` points at another
endpoint (a local emulator in the tests), reached without credentials. The
store's `cancelled` stands whatever Dataflow answers: a failure is returned,
to be logged and audited, and the job's writers stop at their fence anyway.
"""

from __future__ import annotations

import os
from typing import Optional
from urllib.parse import quote

import httpx

ENDPOINT_ENV = "DATAFLOW_ENDPOINT"
DEFAULT_ENDPOINT = "https://dataflow.googleapis.com"
_SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_TIMEOUT_S = 30.0


def runner_job(result, options) -> Optional[dict]:
    """What to record for a submitted pipeline: Dataflow's job id, project and region (None elsewhere)."""
    if type(result).__name__ != "DataflowPipelineResult":  # by name: Beam's Dataflow module needs the gcp extra
        return None
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    cloud = options.view_as(GoogleCloudOptions)
    return {"runner": "dataflow", "project": cloud.project, "region": cloud.region, "job_id": result.job_id()}


def cancel_runner_job(runner_job: dict) -> Optional[str]:
    """Asks Dataflow to cancel `runner_job`; returns None when it accepted, else why not (one line)."""
    if runner_job.get("runner") != "dataflow":
        return None
    endpoint = os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    url = (f"{endpoint.rstrip('/')}/v1b3/projects/{quote(runner_job['project'], safe='')}/locations/"
           f"{quote(runner_job['region'], safe='')}/jobs/{quote(runner_job['job_id'], safe='')}")
    try:
        headers = {} if os.environ.get(ENDPOINT_ENV) else {"Authorization": f"Bearer {_access_token()}"}
        response = httpx.put(url, json={"requestedState": "JOB_STATE_CANCELLED"}, headers=headers,
                             timeout=_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001: credentials or network; the cancel itself stands
        return f"Dataflow could not be asked to cancel job {runner_job['job_id']}: {type(exc).__name__}"
    if response.status_code >= 400:
        return f"Dataflow refused to cancel job {runner_job['job_id']}: HTTP {response.status_code}"
    return None


def _access_token() -> str:
    import google.auth
    import google.auth.transport.requests

    credentials, _ = google.auth.default(scopes=_SCOPES)
    credentials.refresh(google.auth.transport.requests.Request())
    return credentials.token
