"""The dashboard: server-rendered HTML pages, no build step.

``/`` lists the tasks (schedule in words, next run, last outcome, success rate,
recent durations; filter ``?q=`` and pages of `PAGE_SIZE`), ``/tasks/{id}`` shows
one task with its run history and output tails, ``/runs/{run_id}`` one run with its
whole output tail. The data is what `task_scheduler.monitoring` gives the CLI and
the API. Every value is HTML-escaped; the page loads its CSS and script from
``/static/`` under a Content-Security-Policy that forbids inline code. Trigger,
pause and resume buttons call the API with the token, asked once and kept in the
browser tab's sessionStorage (``templates/dashboard.js``).
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime, tzinfo
from functools import cache
from importlib import resources
from string import Template
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from task_scheduler import monitoring
from task_scheduler.redact import redact_data
from task_scheduler.web.api import ApiError, Reply, read_store

if TYPE_CHECKING:
    from task_scheduler.web.api import WebApp

__all__ = ["index", "run_page", "static", "task_page"]

PAGE_SIZE = 100
RECENT = 12  # runs in the index's duration bars
HISTORY = 50  # runs on a task's page
TAIL_LINES = 40  # output lines shown per run on a task's page
_STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_HTML = "text/html; charset=utf-8"


@cache
def _template(name: str) -> str:
    return (resources.files("task_scheduler.web") / "templates" / name).read_text(encoding="utf-8")


def h(value: Any) -> str:
    """HTML-escaped text (quotes too: safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def _page(app: WebApp, title: str, body: str, status: int = 200) -> Reply:
    page = Template(_template("page.html")).substitute(
        title=h(title), body=body, node=h(app.scheduler.node_id), zone=h(getattr(app.zone, "key", str(app.zone)))
    )
    return Reply(status, page.encode(), content_type=_HTML)


def static(_: WebApp, values: list[str], __: dict[str, str]) -> Reply:
    name = values[0]
    if name not in _STATIC:
        raise ApiError(404, f"no such file: {name}")
    return Reply(200, _template(name).encode(), {"Cache-Control": "max-age=300"}, _STATIC[name])


# -- formatting ------------------------------------------------------------------------


def _when(value: str | None, zone: tzinfo, now: datetime) -> str:
    """``2024-05-01 12:00:05 (in 3m)`` as HTML; ``-`` for none."""
    if not value:
        return '<span class="muted">-</span>'
    moment = datetime.fromisoformat(value)
    seconds = (moment - now).total_seconds()
    relative = f"in {_span(seconds)}" if seconds >= 0 else f"{_span(-seconds)} ago"
    return f'<time datetime="{h(value)}">{h(moment.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S"))}</time>' \
        f' <span class="sub">{relative}</span>'  # fmt: skip


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h {seconds % 3600 // 60:.0f}m"
    return f"{seconds // 86400:.0f}d {seconds % 86400 // 3600:.0f}h"


def _badge(state: str | None) -> str:
    state = state or "none"
    return f'<span class="badge s-{h(state)}">{h(state.replace("_", " ") if state != "none" else "never run")}</span>'


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s" if value < 100 else _span(value)


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 1048576:.1f} MiB"


def _bars(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return '<span class="muted">-</span>'
    longest = max((r["duration"] or 0.0) for r in runs) or 1.0
    bars = []
    for run in runs:
        state, duration = run["state"], run["duration"]
        tone = "" if state == "succeeded" else " warn" if state in ("missed", "skipped") else " bad"
        tenth = round(10 * (duration or 0.0) / longest)
        bars.append(f'<i class="h{tenth}{tone}" title="{h(state)} {h(_seconds(duration))}"></i>')
    return f'<span class="bars" aria-label="recent durations">{"".join(bars)}</span>'


def _actions(task: dict[str, Any]) -> str:
    task_id = h(task["task_id"])
    buttons = []
    if task["status"] != "finished":
        buttons.append(f'<button type="button" data-action="trigger" data-task="{task_id}">Run now</button>')
    if task["paused"]:
        buttons.append(
            f'<button type="button" class="primary" data-action="resume" data-task="{task_id}">Resume</button>'
        )
    elif task["status"] != "finished":
        buttons.append(f'<button type="button" data-action="pause" data-task="{task_id}">Pause</button>')
    return f'<div class="actions">{"".join(buttons)}</div>'


def _rate(task: dict[str, Any]) -> str:
    rate = task["success_rate"]
    return "-" if rate is None else f'{rate:.1f}% <span class="sub">of {task["run_count"]}</span>'


def _task_link(task_id: str) -> str:
    return f'<a href="/tasks/{quote(task_id, safe="")}">{h(task_id)}</a>'


# -- pages -------------------------------------------------------------------------------


def index(app: WebApp, _: list[str], query: dict[str, str]) -> Reply:
    now = datetime.now(UTC)
    tasks = read_store(monitoring.overview, app.store)
    service = read_store(monitoring.service_status, app.store, app.scheduler.config.store.lease_seconds)
    text = query.get("q", "").strip()
    shown = [t for t in tasks if not text or text.lower() in f"{t['task_id']} {t['name']} {t['schedule']}".lower()]
    try:
        page = max(1, int(query.get("page", "1")))
    except ValueError:
        page = 1
    pages = max(1, -(-len(shown) // PAGE_SIZE))
    page = min(page, pages)
    visible = shown[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    recent = read_store(monitoring.recent_outcomes, app.store, [t["task_id"] for t in visible], RECENT)
    failing = sum(1 for t in tasks if t["last_state"] in ("failed", "timed_out", "interrupted"))
    cards = [
        (len(tasks), "tasks"),
        (sum(1 for t in tasks if t["status"] == "paused"), "paused"),
        (service["running_runs"], "runs in progress"),
        (service["queued_runs"], "queued"),
        (failing, "last run failed"),
    ]
    parts = ['<h1>Tasks</h1><div class="cards">']
    parts += [f'<div class="card"><b>{h(n)}</b><span>{h(label)}</span></div>' for n, label in cards]
    parts.append(
        f'</div><form class="filter" method="get" action="/"><input name="q" value="{h(text)}" '
        'placeholder="filter by id, name or schedule" aria-label="filter"><button>Filter</button></form>'
    )
    rows = []
    for task in visible:
        name = f'<span class="sub">{h(task["name"])}</span>' if task["name"] and task["name"] != task["task_id"] else ""
        problem = f'<span class="sub problem">{h(task["problem"])}</span>' if task["problem"] else ""
        next_run = _badge(task["status"]) if task["status"] in ("paused", "finished") else _when(
            task["next_run_at"], app.zone, now)  # fmt: skip
        last = "running" if task["running"] else task["last_state"]
        rows.append(
            f'<tr data-task="{h(task["task_id"])}">'
            f'<td data-label="Task">{_task_link(task["task_id"])}{name}{problem}</td>'
            f'<td data-label="Schedule">{h(task["schedule"])}</td>'
            f'<td data-label="Next run" class="next">{next_run}</td>'
            f'<td data-label="Last result">{_badge(last)}'
            f'<span class="sub">{_seconds(task["last_duration"])}</span></td>'
            f'<td data-label="Success">{_rate(task)}</td>'
            f'<td data-label="Recent">{_bars(recent.get(task["task_id"], []))}</td>'
            f'<td data-label="Actions">{_actions(task)}</td></tr>'
        )
    if rows:
        parts.append('<table class="tasks"><thead><tr><th>Task</th><th>Schedule</th><th>Next run</th>'
                     '<th>Last result</th><th>Success</th><th>Recent</th><th></th></tr></thead><tbody>')  # fmt: skip
        parts += rows
        parts.append("</tbody></table>")
    else:
        parts.append('<p class="muted">No tasks' + (" match the filter." if text else ".") + "</p>")
    if pages > 1:
        links = []
        if page > 1:
            links.append(f'<a href="/?{urlencode({"q": text, "page": page - 1})}">previous</a>')
        links.append(f"<span>page {page} of {pages}</span>")
        if page < pages:
            links.append(f'<a href="/?{urlencode({"q": text, "page": page + 1})}">next</a>')
        parts.append(f'<nav class="pages">{"".join(links)}</nav>')
    return _page(app, "Tasks", "".join(parts))


def task_page(app: WebApp, values: list[str], _: dict[str, str]) -> Reply:
    now = datetime.now(UTC)
    try:
        task = read_store(monitoring.task_detail, app.store, values[0], HISTORY)
    except ApiError as exc:
        if exc.status != 404:
            raise
        return _page(app, "Not found", f'<h1>No task {h(values[0])}</h1><p><a href="/">All tasks</a></p>', 404)
    facts = [
        ("Status", _badge(task["status"])),
        ("Schedule", h(task["schedule"])),
        ("Next run", _when(None if task["status"] in ("paused", "finished") else task["next_run_at"], app.zone, now)),
        ("Last run", f"{_when(task['last_run_at'], app.zone, now)} {_badge(task['last_state'])}"),
        ("Runs", h(f"{task['run_count']} ({task['success_count']} ok, {task['failure_count']} failed), "
                   f"{task['retry_count']} retried, {task['missed_count']} missed, {task['skipped_count']} skipped, "
                   f"{task['interrupted_count']} interrupted")),
        ("Success rate", _rate(task)),
        ("Average time", _seconds(task["average_duration"])),
        ("Origin", h(task["origin"])),
    ]  # fmt: skip
    if task["problem"]:
        facts.append(("Problem", f'<span class="problem">{h(task["problem"])}</span>'))
    if task["last_error"]:
        facts.append(("Last error", f"<code>{h(task['last_error'])}</code>"))
    title = task["name"] if task["name"] and task["name"] != task["task_id"] else task["task_id"]
    parts = [f"<h1>{h(title)}</h1>", _actions(task), '<h2>Task</h2><dl class="facts">']
    parts += [f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts]
    parts.append("</dl>")
    if task["active_runs"]:
        parts.append("<h2>In progress</h2>" + _runs_table(task["active_runs"], app, now, tail=False))
    parts.append(f"<h2>Last {HISTORY} runs</h2>")
    parts.append(_runs_table(task["recent_runs"], app, now, tail=True) if task["recent_runs"]
                 else '<p class="muted">No finished runs yet.</p>')  # fmt: skip
    if task["spec"] is not None:
        spec = json.dumps(redact_data(task["spec"]), indent=2, sort_keys=True)
        parts.append(f"<h2>Definition</h2><pre>{h(spec)}</pre>")
    return _page(app, task["task_id"], "".join(parts))


def _runs_table(runs: list[dict[str, Any]], app: WebApp, now: datetime, tail: bool) -> str:
    rows = []
    for run in runs:
        run_link = f'<a href="/runs/{quote(run["run_id"], safe="")}">{h(run["run_id"][-12:])}</a>'
        error = f'<span class="sub">{h(run["error"])}</span>' if run["error"] else ""
        cpu = "-" if run["cpu_user"] is None else f"{run['cpu_user']:.2f} + {run['cpu_system'] or 0:.2f} s"
        output = ""
        if tail and run["output"]:
            lines = run["output"].rstrip().splitlines()
            shown = "\n".join(lines[-TAIL_LINES:])
            more = f" (last {TAIL_LINES} of {len(lines)} lines)" if len(lines) > TAIL_LINES else ""
            output = f"<details><summary>output{more}</summary><pre>{h(shown)}</pre></details>"
        rows.append(
            f'<tr><td data-label="Run">{run_link}</td>'
            f'<td data-label="Scheduled">{_when(run["scheduled_for"], app.zone, now)}</td>'
            f'<td data-label="State">{_badge(run["state"])}{error}{output}</td>'
            f'<td data-label="Attempt">{h(run["attempt"])}{" (manual)" if run["manual"] else ""}</td>'
            f'<td data-label="Duration">{_seconds(run["duration"])}</td>'
            f'<td data-label="CPU">{h(cpu)}</td>'
            f'<td data-label="Peak RSS">{_bytes(run["max_rss"])}</td>'
            f'<td data-label="Exit">{h(run["exit_code"] if run["exit_code"] is not None else "-")}</td></tr>'
        )
    return ('<table class="runs"><thead><tr><th>Run</th><th>Scheduled</th><th>State</th><th>Attempt</th>'
            "<th>Duration</th><th>CPU user + sys</th><th>Peak RSS</th><th>Exit</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")  # fmt: skip


def run_page(app: WebApp, values: list[str], _: dict[str, str]) -> Reply:
    now = datetime.now(UTC)
    run = read_store(monitoring.run_detail, app.store, values[0])
    if run is None:
        return _page(app, "Not found", f'<h1>No run {h(values[0])}</h1><p><a href="/">All tasks</a></p>', 404)
    facts = [
        ("Task", _task_link(run["task_id"])),
        ("State", _badge(run["state"])),
        ("Attempt", h(f"{run['attempt']}{' (manual)' if run['manual'] else ''}")),
        ("Scheduled", _when(run["scheduled_for"], app.zone, now)),
        ("Started", _when(run["started_at"], app.zone, now)),
        ("Finished", _when(run["finished_at"], app.zone, now)),
        ("Duration", _seconds(run["duration"])),
        ("Started late by", _seconds(run["queue_delay"])),
        ("Exit code", h(run["exit_code"] if run["exit_code"] is not None else "-")),
        ("CPU user / system", "-" if run["cpu_user"] is None
         else h(f"{run['cpu_user']:.3f} s / {run['cpu_system'] or 0:.3f} s")),
        ("Peak RSS", _bytes(run["max_rss"])),
        ("Node", h(run["node"] or "-")),
        ("Run id", f"<code>{h(run['run_id'])}</code>"),
    ]  # fmt: skip
    if run["error"]:
        facts.append(("Error", f"<code>{h(run['error'])}</code>"))
    parts = [f"<h1>Run of {h(run['task_id'])}</h1>", '<dl class="facts">']
    parts += [f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts]
    parts.append("</dl><h2>Output</h2>")
    parts.append(f"<pre>{h(run['output'])}</pre>" if run["output"] else '<p class="muted">No output.</p>')
    return _page(app, f"Run {run['run_id'][-12:]}", "".join(parts))
