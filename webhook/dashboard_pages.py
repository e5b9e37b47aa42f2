"""The fleet page's HTML: server-rendered, self-contained, every piece of data escaped.

``webhook/dashboard.py`` gathers the data (the same calls that answer ``GET /api/v1/agents``,
``/api/v1/tasks`` and ``/api/v1/tasks/{id}``) and calls these pure functions: :func:`document`
wraps a body in the page's one style sheet and one small script (both carrying the response's
CSP nonce), :func:`overview` and :func:`task_page` render the parts the script replaces on each
update, :func:`login_page` the form people sign in with. Text from issues, agents and Forgejo
is untrusted: it only ever reaches the page through :func:`_e` (``html.escape``). No token or
secret is ever passed in, so none can be rendered.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from reconciler.console.history import CHECK_MARK, event_detail, event_what
from reconciler.console.views import task_why
from reconciler.fleet.activity import Activity
from reconciler.fleet.api import AgentSummary
from reconciler.models import (
    BUSY_STATES,
    AgentStatus,
    ExecutionMode,
    Task,
    TaskEvent,
    TaskState,
)
from reconciler.text import format_duration
from webhook.dashboard_charts import Column, bar_list, column_chart, money_text


def _e(value: object) -> str:
    return escape(str(value), quote=True)


@dataclass(frozen=True)
class Chrome:
    """What every page shares: where it lives, how often it updates, the CSP nonce, and
    whether the viewer signed in (then a sign-out button shows)."""

    base: str
    refresh_seconds: float
    nonce: str
    signed_in: bool


@dataclass(frozen=True)
class Overview:
    """The fleet at one moment: the API's agents and live tasks, and recent activity."""

    agents: Sequence[AgentSummary]
    tasks: Sequence[Task]
    activity: Activity
    now: datetime
    forgejo_url: str


# Task groups in the order people look at them: what waits, what runs, what needs a person.
GROUPS: tuple[tuple[str, str, frozenset[TaskState]], ...] = (
    ("waiting", "Waiting", frozenset({TaskState.CREATED})),
    ("working", "Working", frozenset({TaskState.ASSIGNED, TaskState.RUNNING})),
    ("review", "In review", frozenset({TaskState.REVIEW_PENDING})),
    ("trouble", "Failed or lost", frozenset({TaskState.FAILED, TaskState.AGENT_LOST})),
    ("done", "Completed", frozenset({TaskState.COMPLETED})),
    ("cancelled", "Cancelled", frozenset({TaskState.CANCELLED})),
)

FINISHED_GROUPS = frozenset({"done", "cancelled"})
FINISHED_SHOWN = 25

_STYLE = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--dim:#667085;--line:#e3e6eb;--ok:#1a7f4b;
--warn:#b76e00;--bad:#c2352b;--info:#2f5fd0;--accent:#5b4bd6}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{display:flex;align-items:center;gap:16px;padding:12px 24px;background:#1d2330;color:#fff}
header h1{font-size:17px;margin:0;font-weight:600}
header a{color:#fff;text-decoration:none}
header .spacer{flex:1}
#live-status{font-size:12px;color:#c9d1e0}
#live-status.stale{color:#ffb4a8}
header form{margin:0}
button{font:inherit;border:1px solid var(--line);background:var(--card);border-radius:6px;
padding:4px 10px;cursor:pointer}
main{padding:18px 24px;max-width:1400px;margin:0 auto}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:18px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px;
min-width:130px}
.card b{display:block;font-size:22px;font-weight:600}
.card span{color:var(--dim);font-size:12px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px;
margin-bottom:18px}
section h2{font-size:15px;margin:0 0 8px}
section h2 small{color:var(--dim);font-weight:400}
.charts{display:flex;flex-wrap:wrap;gap:18px}
.charts figure{margin:0}
.charts figcaption{font-size:12px;color:var(--dim);margin-bottom:2px}
table{border-collapse:collapse;width:100%}
th{text-align:left;font-weight:600;color:var(--dim);font-size:12px;border-bottom:1px solid var(--line);
padding:4px 8px}
td{padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
tr:last-child td{border-bottom:0}
td.why{color:#3b4252}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;white-space:nowrap}
.dim{color:var(--dim)}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
background:#eef0f4;color:#3b4252;white-space:nowrap}
.b-online,.b-completed{background:#e3f4ea;color:var(--ok)}
.b-offline,.b-failed,.b-agent_lost{background:#fbe7e5;color:var(--bad)}
.b-draining,.b-created{background:#fdf1dc;color:var(--warn)}
.b-assigned,.b-running{background:#e6edfb;color:var(--info)}
.b-review_pending{background:#efeafc;color:var(--accent)}
.slots{display:inline-block;width:60px;height:8px;border-radius:4px;background:#eef0f4;
vertical-align:middle;overflow:hidden;margin-right:6px}
.slots i{display:block;height:100%;background:var(--info)}
.w0{width:0}.w1{width:10%}.w2{width:20%}.w3{width:30%}.w4{width:40%}.w5{width:50%}
.w6{width:60%}.w7{width:70%}.w8{width:80%}.w9{width:90%}.w10{width:100%}
.chart .axis{stroke:#98a2b3}.chart .grid{stroke:#e3e6eb;stroke-dasharray:3 3}
.chart .tick,.chart .name{font-size:10.5px;fill:#667085}.chart .name{fill:#1d2330}
.chart .hit{fill:transparent}.chart .s0{fill:#2f8f5b}.chart .s1{fill:#d0574c}
.legend i{display:inline-block;width:9px;height:9px;border-radius:2px;margin:0 4px 0 10px}
.legend .s0{background:#2f8f5b}.legend .s1{background:#d0574c}
.empty{color:var(--dim);font-style:italic}
a{color:var(--info)}
ol.timeline{list-style:none;margin:0;padding:0 0 0 4px}
ol.timeline li{position:relative;padding:4px 0 8px 22px;border-left:2px solid var(--line)}
ol.timeline li::before{content:"";position:absolute;left:-6px;top:9px;width:10px;height:10px;
border-radius:50%;background:#98a2b3}
ol.timeline li.k-transition::before{background:var(--info)}
ol.timeline li.k-verification::before{background:var(--ok)}
ol.timeline li.k-review::before{background:var(--accent)}
ol.timeline li.k-receipt::before,ol.timeline li.k-pull_request::before{background:var(--warn)}
ol.timeline .when{color:var(--dim);font-size:12px;margin-right:8px}
.facts{display:flex;flex-wrap:wrap;gap:6px 18px;margin:6px 0 10px}
.facts div span{color:var(--dim);font-size:12px;margin-right:4px}
.note{padding:8px 12px;border-radius:6px;background:#fdf1dc;margin:8px 0}
.note.bad{background:#fbe7e5}
ul.checks{list-style:none;padding:0;margin:0}
ul.checks li{padding:2px 0}
.login{max-width:380px;margin:60px auto}
.login input{width:100%;font:inherit;padding:6px 8px;border:1px solid var(--line);border-radius:6px;
margin:6px 0 10px}
.error{color:var(--bad)}
"""

# Polls the page's JSON endpoint and swaps the live part in place: no reload, no framework.
_SCRIPT = """
(function () {
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live) { return; }
  var url = live.getAttribute("data-live");
  var every = Number(live.getAttribute("data-every")) || 5000;
  var last = null;
  function show(text, stale) { status.textContent = text; status.className = stale ? "stale" : ""; }
  function tick() {
    fetch(url, {credentials: "same-origin", cache: "no-store",
                headers: {"Accept": "application/json"}})
      .then(function (r) {
        if (r.status === 401) { show("signed out: reload to sign in", true); return "stop"; }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.json();
      })
      .then(function (data) {
        if (data === "stop") { return; }
        if (data.html !== last) { live.innerHTML = data.html; last = data.html; }
        show("live · updated " + data.at, false);
        setTimeout(tick, every);
      })
      .catch(function (err) {
        show("not updating (" + err.message + "); retrying", true);
        setTimeout(tick, every);
      });
  }
  setTimeout(tick, every);
})();
"""


def document(title: str, body: str, chrome: Chrome, *, live_url: str | None, at: str) -> str:
    """A whole page: head with the style sheet, the header bar, ``body`` in ``<main>``; with
    ``live_url``, ``body`` is refreshed from it every ``chrome.refresh_seconds``."""
    nonce = _e(chrome.nonce)
    sign_out = (
        f'<form method="post" action="{_e(chrome.base)}logout"><button type="submit">'
        "Sign out</button></form>"
        if chrome.signed_in
        else ""
    )
    if live_url is not None:
        every = int(chrome.refresh_seconds * 1000)
        main = (
            f'<main id="live" data-live="{_e(live_url)}" data-every="{every}">{body}</main>'
            f'<script nonce="{nonce}">{_SCRIPT}</script>'
        )
        status = f'<span id="live-status">updated {_e(at)}</span>'
    else:
        main, status = f"<main>{body}</main>", ""
    return (
        "<!doctype html>"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="same-origin">'
        f"<title>{_e(title)}</title>"
        f'<style nonce="{nonce}">{_STYLE}</style></head><body>'
        f'<header><h1><a href="{_e(chrome.base)}">agent-fleet</a></h1>'
        f'<span class="spacer"></span>{status}{sign_out}</header>'
        f"{main}</body></html>"
    )


def task_href(base: str, task_id: str) -> str:
    return f"{base}tasks/{urllib.parse.quote(task_id, safe='')}"


def issue_href(forgejo_url: str, repo: str, number: int, *, pull: bool = False) -> str:
    owner, _, name = repo.partition("/")
    path = "pulls" if pull else "issues"
    quoted = f"{urllib.parse.quote(owner, safe='')}/{urllib.parse.quote(name, safe='')}"
    return f"{forgejo_url.rstrip('/')}/{quoted}/{path}/{number}"


def _badge(value: str) -> str:
    return f'<span class="badge b-{_e(value)}">{_e(value.replace("_", " "))}</span>'


def _ago(then: datetime | None, now: datetime) -> str:
    if then is None:
        return "never"
    return f"{format_duration((now - then).total_seconds())} ago"


def _heard(agent: AgentSummary, now: datetime) -> str:
    # ssh hosts send no heartbeats: the registry's health checks decide their status.
    if agent.last_heartbeat_at is None and agent.mode is ExecutionMode.SSH:
        return "health-checked over ssh"
    return _ago(agent.last_heartbeat_at, now)


def _clock(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment is not None else "-"


# --- the overview ----------------------------------------------------------------------------


def overview(data: Overview, *, base: str) -> str:
    """The live part of the fleet page: counts, charts, agents, tasks by state."""
    return "".join((_cards(data), _charts(data), _agents(data, base=base), _tasks(data, base=base)))


def _cards(data: Overview) -> str:
    online = sum(a.status is AgentStatus.ONLINE for a in data.agents)
    counts = {key: sum(t.state in states for t in data.tasks) for key, _, states in GROUPS}
    cards = (
        (f"{online}/{len(data.agents)}", "agents online"),
        (str(counts["waiting"]), "waiting"),
        (str(counts["working"]), "working"),
        (str(counts["review"]), "in review"),
        (str(counts["trouble"]), "failed or lost"),
        (str(data.activity.completed), f"completed, last {len(data.activity.hours)} h"),
        (money_text(data.activity.cost_usd), f"spent, last {len(data.activity.days)} days"),
    )
    inner = "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in cards)
    return f'<div class="cards">{inner}</div>'


def _charts(data: Overview) -> str:
    hours = data.activity.hours
    throughput = column_chart(
        [
            Column(
                label=f"{h.start:%H}h",
                values=(float(h.completed), float(h.failed)),
                title=f"{h.start:%H:00}–{h.start:%H:59} UTC: {h.completed} completed, "
                f"{h.failed} failed",
            )
            for h in hours
        ],
        caption="Tasks finished per hour",
        label_every=2,
    )
    days = data.activity.days
    spend = column_chart(
        [
            Column(
                label=f"{d.day:%a}",
                values=(d.cost_usd,),
                title=f"{d.day:%Y-%m-%d}: {money_text(d.cost_usd)}, {d.tokens:,} tokens",
            )
            for d in days
        ],
        caption="Spend per day",
        money=True,
    )
    per_agent = bar_list([(a.id, a.stats.cost_usd) for a in data.agents], caption="Spend per agent")
    legend = '<span class="legend"><i class="s0"></i>completed<i class="s1"></i>failed</span>'
    return (
        '<section><h2>Activity <small>(UTC)</small></h2><div class="charts">'
        f"<figure><figcaption>Tasks finished per hour, last {len(hours)} h {legend}"
        f"</figcaption>{throughput}</figure>"
        f"<figure><figcaption>Spend per day, last {len(days)} days</figcaption>{spend}</figure>"
        f"<figure><figcaption>Spend per agent, all time</figcaption>{per_agent}</figure>"
        "</div></section>"
    )


def _agents(data: Overview, *, base: str) -> str:
    if not data.agents:
        return '<section><h2>Agents</h2><p class="empty">no agents registered</p></section>'
    rows = []
    for agent in data.agents:
        busy = sum(t.state in BUSY_STATES for t in agent.current_tasks)
        tenths = min(10, round(10 * busy / agent.max_concurrency))
        load = f" · load {agent.load:g}" if agent.load is not None else ""
        current = (
            ", ".join(
                f'<a href="{_e(task_href(base, t.id))}">{_e(t.repo)}#{t.issue_number}</a> '
                f'<span class="dim">{_e(t.state.value.replace("_", " "))}</span>'
                for t in agent.current_tasks
            )
            or '<span class="dim">-</span>'
        )
        why = f'<div class="dim">{_e(agent.status_reason)}</div>' if agent.status_reason else ""
        rows.append(
            "<tr>"
            f'<td><b class="mono">{_e(agent.id)}</b><div class="dim">{_e(agent.type)} · '
            f"{_e(agent.mode.value)} · {_e(agent.hostname or '-')}</div></td>"
            f"<td>{_badge(agent.status.value)}{why}</td>"
            f'<td><span class="slots"><i class="w{tenths}"></i></span>'
            f"{busy}/{agent.max_concurrency}{_e(load)}</td>"
            f"<td>{_e(_heard(agent, data.now))}</td>"
            f"<td>{current}</td>"
            f"<td>{agent.stats.tasks_completed} done · {agent.stats.errors} errors</td>"
            f"<td>{_e(money_text(agent.stats.cost_usd))}"
            + (
                f'<div class="dim">{_e(money_text(agent.stats.estimated_cost_usd))} estimated</div>'
                if agent.stats.estimated_cost_usd
                else ""
            )
            + f'<div class="dim">{agent.stats.tokens:,} tokens</div></td>'
            "</tr>"
        )
    return (
        f"<section><h2>Agents <small>{len(data.agents)}</small></h2><table>"
        "<tr><th>Agent</th><th>Status · why</th><th>Load</th><th>Last heard</th>"
        "<th>Current tasks</th><th>Record</th><th>Spend</th></tr>"
        f"{''.join(rows)}</table></section>"
    )


def _tasks(data: Overview, *, base: str) -> str:
    out = []
    for key, title, states in GROUPS:
        tasks = [t for t in data.tasks if t.state in states]
        if not tasks and key in ("trouble", "cancelled"):
            continue
        if not tasks:
            out.append(
                f'<section id="tasks-{key}"><h2>{_e(title)} <small>0</small></h2>'
                '<p class="empty">none</p></section>'
            )
            continue
        more = ""
        if key in FINISHED_GROUPS:
            # Finished tasks stay live for a week: show the latest, not all of them.
            tasks.sort(key=lambda t: t.updated_at, reverse=True)
            if len(tasks) > FINISHED_SHOWN:
                more = (
                    f'<p class="dim">the {FINISHED_SHOWN} most recent of {len(tasks)}; '
                    "agent-fleet status lists them all</p>"
                )
                tasks = tasks[:FINISHED_SHOWN]
        rows = "".join(_task_row(t, data, base=base) for t in tasks)
        count = sum(t.state in states for t in data.tasks)
        out.append(
            f'<section id="tasks-{key}"><h2>{_e(title)} <small>{count}</small></h2><table>'
            "<tr><th>Task</th><th>Issue</th><th>State</th><th>Priority</th><th>Agent</th>"
            f"<th>Age</th><th>Why / what</th></tr>{rows}</table>{more}</section>"
        )
    return "".join(out)


def _task_row(task: Task, data: Overview, *, base: str) -> str:
    issue = issue_href(data.forgejo_url, task.repo, task.issue_number)
    return (
        "<tr>"
        f'<td><a class="mono" href="{_e(task_href(base, task.id))}">{_e(task.id)}</a></td>'
        f'<td><a href="{_e(issue)}">{_e(task.repo)}#{task.issue_number}</a>'
        f'<div class="title">{_e(task.title)}</div></td>'
        f"<td>{_badge(task.state.value)}</td>"
        f"<td>{_e(task.priority.value)}</td>"
        f"<td>{_e(task.agent_id or '-')}</td>"
        f"<td>{_e(format_duration((data.now - task.created_at).total_seconds()))}</td>"
        f'<td class="why">{_e(task_why(task, now=data.now))}</td>'
        "</tr>"
    )


# --- one task --------------------------------------------------------------------------------


def task_page(
    task: Task, events: Sequence[TaskEvent], *, now: datetime, forgejo_url: str, base: str
) -> str:
    """The live part of a task's page: its facts, why it waits or failed, its receipt checks
    and its timeline, linked to the issue and pull request on Forgejo."""
    issue = issue_href(forgejo_url, task.repo, task.issue_number)
    links = [
        f'<a href="{_e(base)}">← the fleet</a>',
        f'<a href="{_e(issue)}">issue {_e(task.repo)}#{task.issue_number}</a>',
    ]
    if task.pr_number is not None:
        pull = issue_href(forgejo_url, task.repo, task.pr_number, pull=True)
        links.append(f'<a href="{_e(pull)}">pull request #{task.pr_number}</a>')
    facts = [
        ("state", _badge(task.state.value)),
        ("agent", _e(f"{task.agent_id} (lease {task.lease_generation})" if task.agent_id else "-")),
        ("attempt", _e(task.attempt)),
        ("review rounds", _e(task.review_count)),
        ("priority", _e(task.priority.value)),
        ("branch", f'<span class="mono">{_e(task.branch or "-")}</span>'),
        ("created", _e(_clock(task.created_at))),
        ("updated", _e(f"{_clock(task.updated_at)} ({_ago(task.updated_at, now)})")),
    ]
    if task.deadline_at is not None and not task.is_terminal:
        facts.append(("deadline", _e(_clock(task.deadline_at))))
    parts = [
        (
            f'<section><h2><span class="mono">{_e(task.id)}</span> · <span class="title">'
            f"{_e(task.title)}</span></h2>"
        ),
        f"<div>{' · '.join(links)}</div>",
        '<div class="facts">'
        + "".join(f"<div><span>{_e(k)}</span>{v}</div>" for k, v in facts)
        + "</div>",
    ]
    if task.state in (TaskState.CREATED, TaskState.FAILED, TaskState.AGENT_LOST):
        bad = " bad" if task.state is not TaskState.CREATED else ""
        label = "waiting" if task.state is TaskState.CREATED else "why"
        parts.append(
            f'<div class="note{bad}" id="why"><b>{label}:</b> {_e(task_why(task, now=now))}</div>'
        )
    parts.append("</section>")
    if task.checks:
        checks = "".join(
            f"<li>{_e(CHECK_MARK[c.outcome])} <b>{_e(c.name)}</b>: {_e(c.detail)}</li>"
            for c in task.checks
        )
        parts.append(f'<section><h2>Receipt checks</h2><ul class="checks">{checks}</ul></section>')
    if events:
        items = "".join(
            f'<li class="k-{_e(ev.kind)}"><span class="when">{_e(_clock(ev.at))}</span>'
            f'<b>{_e(event_what(ev))}</b> <span class="dim">{_e(ev.actor)}</span>'
            f"<div>{_e(event_detail(ev))}</div></li>"
            for ev in events
        )
        timeline = f'<ol class="timeline">{items}</ol>'
    else:
        timeline = '<p class="empty">no events</p>'
    parts.append(
        f'<section id="timeline"><h2>Timeline <small>{len(events)} events, oldest first'
        f"</small></h2>{timeline}</section>"
    )
    return "".join(parts)


def message_page(title: str, text: str, *, base: str) -> str:
    """A short page body: a heading, a sentence, and a way back."""
    return (
        f"<section><h2>{_e(title)}</h2><p>{_e(text)}</p>"
        f'<p><a href="{_e(base)}">Back to the fleet</a></p></section>'
    )


def login_page(*, action: str, error: str = "", configured: bool = True) -> str:
    """The sign-in form: the operator token, posted to ``action`` (never shown back)."""
    if not configured:
        return (
            '<section class="login"><h2>Sign in</h2><p class="error">No operator token is '
            "configured (api.operator_token), so nobody can sign in; set one, or set "
            "dashboard.read_only_without_token.</p></section>"
        )
    problem = f'<p class="error" id="login-error">{_e(error)}</p>' if error else ""
    return (
        f'<section class="login"><h2>Sign in</h2>{problem}'
        f'<form method="post" action="{_e(action)}">'
        '<label for="token">Operator token (api.operator_token)</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" '
        "required autofocus>"
        '<button type="submit">Sign in</button></form></section>'
    )


__all__ = [
    "GROUPS",
    "Chrome",
    "Overview",
    "document",
    "issue_href",
    "login_page",
    "message_page",
    "overview",
    "task_href",
    "task_page",
]
