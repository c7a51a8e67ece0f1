"""The operator page's HTML: the job list and one job's page, rendered on the server, without JavaScript.

Every value is escaped (`html.escape`) where it is written. A page shows job
records (ids, tenants, owners, states, per-type counts, errors) and audit
events; never a token, a resource, nor the values of the kick-off's query
(a `_typeFilter` may name a patient): only its parameters' names.
"""

from __future__ import annotations

import html
from typing import Iterable, Optional
from urllib.parse import urlsplit

from launcher.server.logs import query_names
from launcher.stores import StoredJob
from pipelines.models import ExportStatus, Manifest

REFRESH_S = 2  # while a job shown runs
_OUTCOMES = {"0": "success", "4": "minor failure", "8": "serious failure", "12": "major failure"}
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
ul.types { list-style: none; margin: 0; padding: 0; }
.state-complete .state { color: #176f2c; } .state-error .state { color: #b00020; }
.state-in-progress .state, .state-accepted .state { color: #0b57d0; }
.error { color: #b00020; white-space: pre-wrap; }
"""


def e(value: object) -> str:
    """`value` as HTML text or attribute (quotes escaped too)."""
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str, refresh: bool) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>{meta}'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")


def jobs_page(jobs: list[StoredJob], prefix: str, expires: dict[str, str]) -> str:
    """Every job, newest first: state, progress per type, counts, errors and expiry, each linked to its page."""
    states: dict[str, int] = {}
    for job in jobs:
        states[job.status.value] = states.get(job.status.value, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in states.items()) or "none"
    rows = "".join(_job_row(job, prefix, expires.get(job.job_id)) for job in jobs)
    head = "".join(f"<th>{name}</th>" for name in ("Job", "Tenant", "Owner", "Level", "State", "Progress",
                                                    "Resources", "Created", "Ended", "Expires", "Error"))
    body = (f"<h1>Bulk export jobs</h1><p class=\"summary\">{len(jobs)} jobs: {e(summary)}.</p>"
            f'<table id="jobs"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
    if not jobs:
        body += '<p class="empty">No jobs yet.</p>'
    running = any(not job.status.is_terminal for job in jobs)
    return page("bulk-export: jobs", body, running)


def _job_row(job: StoredJob, prefix: str, expires: Optional[str]) -> str:
    cells = [
        f'<a href="{e(prefix)}/jobs/{e(job.job_id)}">{e(job.job_id)}</a>',
        e(job.tenant), e(job.owner or ""), e(job.level.value),
        e(job.status.value),
        _progress(job),
        f"{_total(job):,}",
        e(job.created_at), e(job.completed_at or ""), e(expires or ""),
        f'<span class="error">{e(_short(job.error_message))}</span>' if job.error_message else "",
    ]
    names = ("id", "tenant", "owner", "level", "state", "progress", "resources", "created", "ended", "expires",
             "error")
    tds = "".join(f'<td class="{name}">{cell}</td>' for name, cell in zip(names, cells))
    return f'<tr id="job-{e(job.job_id)}" class="job state-{e(job.status.value)}">{tds}</tr>'


def job_page(job: StoredJob, prefix: str, expires: Optional[str], manifest: Optional[Manifest],
             events: Iterable[dict]) -> str:
    """One job: what it exports, how far it is per type, its files and its audit trail."""
    parameters = query_names(urlsplit(job.request_url).query)
    facts = [("State", f'<span class="state">{e(job.status.value)}</span>'), ("Tenant", e(job.tenant)),
             ("Owner", e(job.owner or "")), ("Level", e(job.level.value)),
             ("Types", e(", ".join(job.request.types) or "every type")),
             ("Kick-off parameters", e(", ".join(parameters) or "none")),
             ("Transaction time", e(job.transaction_time)), ("Created", e(job.created_at)),
             ("Started", e(job.started_at or "")), ("Ended", e(job.completed_at or "")),
             ("Expires", e(expires or "")), ("Attempt", e(job.attempt)), ("Read", _read(job)),
             ("Resources", f"{_total(job):,}"), ("Bad records", f"{job.bad_records:,}")]
    if job.error_message:
        facts.append(("Error", f'<span class="error">{e(job.error_message)}</span>'))
    summary = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts)
    types = "".join(f'<tr data-type="{e(p.type)}"><td>{e(p.type)}</td><td class="count">{p.exported:,}</td></tr>'
                    for p in job.progress)
    body = (f'<p><a href="{e(prefix)}/">All jobs</a></p><h1>Job {e(job.job_id)}</h1>'
            f'<table id="summary" class="job state-{e(job.status.value)}">{summary}</table>'
            f'<h2>Progress per type</h2><table id="types"><thead><tr><th>Type</th><th>Written</th></tr></thead>'
            f"<tbody>{types}</tbody></table>{_files(job, prefix, manifest)}{_trail(events)}")
    return page(f"bulk-export: job {job.job_id}", body, not job.status.is_terminal)


def _files(job: StoredJob, prefix: str, manifest: Optional[Manifest]) -> str:
    if manifest is None:
        return "<h2>Files</h2><p>The manifest is ready once the job is complete.</p>"
    errors = "".join(f'<li><a class="error-file" href="{e(f.url)}">{e(f.type or f.url)}</a> ({f.count or 0:,} issues)</li>'
                     for f in manifest.error)
    return (f'<h2>Files</h2><p><a id="manifest" href="{e(prefix)}/jobs/{e(job.job_id)}/manifest.json">Manifest</a>:'
            f" {len(manifest.output):,} output files, {len(manifest.error):,} error files,"
            f" {len(manifest.deleted):,} deleted files.</p>"
            + (f'<ul id="error-files">{errors}</ul>' if errors else "<p>No error files.</p>"))


def _trail(events: Iterable[dict]) -> str:
    rows = ""
    for event in events:
        details = {d.get("type"): d.get("valueString") for entity in event.get("entity", ())
                   for d in entity.get("detail", ())}
        who = (event.get("agent") or [{}])[0].get("who", {})
        agent = who.get("display") or who.get("identifier", {}).get("value", "")
        rows += (f'<tr class="audit-event"><td>{e(event.get("recorded"))}</td><td class="event">'
                 f'{e(details.get("lifecycle-event", ""))}</td><td>{e(_OUTCOMES.get(event.get("outcome"), ""))}</td>'
                 f'<td>{e(agent)}</td><td>{e(event.get("outcomeDesc", ""))}</td></tr>')
    return ('<h2>Audit trail</h2><table id="audit"><thead><tr><th>Recorded</th><th>Event</th><th>Outcome</th>'
            f"<th>Agent</th><th>Description</th></tr></thead><tbody>{rows}</tbody></table>")


def _progress(job: StoredJob) -> str:
    counts = "".join(f'<li data-type="{e(p.type)}">{e(p.type)} <span class="count">{p.exported:,}</span></li>'
                     for p in job.progress)
    return f'{_read(job)}<ul class="types">{counts}</ul>'


def _read(job: StoredJob) -> str:
    if job.status is ExportStatus.COMPLETE:
        return "100% read"
    return f"{job.fraction:.0%} read" if job.fraction is not None else ""


def _total(job: StoredJob) -> int:
    return sum(p.exported for p in job.progress)


def _short(message: Optional[str], limit: int = 160) -> str:
    text = message or ""
    return text if len(text) <= limit else text[: limit - 1] + "…"
