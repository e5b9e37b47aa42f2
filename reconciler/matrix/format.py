"""The text of every message agent-fleet posts to Matrix: pure functions, no I/O, no clock.

The notifier (:mod:`reconciler.matrix.notifier`) calls these to build outbox messages, the
command handlers (:mod:`reconciler.matrix.commands`) for their answers, and the demo preview
renders what they return. Each message is an ``m.notice`` with a plain body and an HTML body.

Text that comes from agents, issues or reviews is untrusted: :func:`clean` strips ``@room``
and Matrix user mentions from it, cuts it to ``limit`` characters (with a link to the issue
for the rest), and the HTML body escapes it. Every message carries an explicit ``m.mentions``,
empty unless the configuration names people to mention, so nothing in quoted text pings anyone.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reconciler.models import Agent, Receipt, Task, TaskEvent, TaskState
from reconciler.text import format_duration

# `@room` and `@user:server` — what a Matrix client would turn into a notification.
_ROOM_MENTION = re.compile(r"@(room|everyone|here)\b", re.IGNORECASE)
_USER_MENTION = re.compile(r"@([A-Za-z0-9._=/+-]+):[A-Za-z0-9.-]+(?::\d+)?")

STATE_EMOJI: dict[TaskState, str] = {
    TaskState.CREATED: "⏳",
    TaskState.ASSIGNED: "📋",
    TaskState.RUNNING: "⚙️",
    TaskState.REVIEW_PENDING: "👀",
    TaskState.COMPLETED: "✅",
    TaskState.FAILED: "❌",
    TaskState.AGENT_LOST: "📡",
    TaskState.CANCELLED: "🚫",
}

STATE_WORDS: dict[TaskState, str] = {
    TaskState.CREATED: "waiting for an agent",
    TaskState.ASSIGNED: "assigned",
    TaskState.RUNNING: "running",
    TaskState.REVIEW_PENDING: "in review",
    TaskState.COMPLETED: "done",
    TaskState.FAILED: "failed",
    TaskState.AGENT_LOST: "agent lost",
    TaskState.CANCELLED: "cancelled",
}


@dataclass(frozen=True)
class Notice:
    """One message's text: the plain body, the HTML body, and the users it mentions."""

    plain: str
    html: str
    mentions: tuple[str, ...] = field(default=())

    def content(self) -> dict[str, Any]:
        """The ``m.room.message`` content of this notice (no relation)."""
        return {
            "msgtype": "m.notice",
            "body": self.plain,
            "format": "org.matrix.custom.html",
            "formatted_body": self.html,
            "m.mentions": {"user_ids": list(self.mentions)} if self.mentions else {},
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Notice:
        return cls(
            plain=str(payload["plain"]),
            html=str(payload["html"]),
            mentions=tuple(str(m) for m in payload.get("mentions", ())),
        )

    def to_payload(self) -> dict[str, Any]:
        return {"plain": self.plain, "html": self.html, "mentions": list(self.mentions)}


def clean(text: str, *, limit: int, link: str | None = None) -> str:
    """Untrusted text made safe to quote: no ``@room``, no user mentions, at most ``limit``
    characters (then an ellipsis and, when given, where to read the rest)."""
    text = _ROOM_MENTION.sub(lambda m: m.group(1), text)
    text = _USER_MENTION.sub(lambda m: m.group(1), text)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: max(limit - 1, 0)].rstrip() + "…"
        if link:
            text += f" (more: {link})"
    return text


def issue_url(forgejo_url: str, task: Task) -> str:
    return f"{forgejo_url.rstrip('/')}/{task.repo}/issues/{task.issue_number}"


def pull_url(forgejo_url: str, task: Task, number: int) -> str:
    return f"{forgejo_url.rstrip('/')}/{task.repo}/pulls/{number}"


def _link(url: str, text: str) -> str:
    return f'<a href="{html.escape(url, quote=True)}">{html.escape(text)}</a>'


def _mention_html(users: Sequence[str]) -> str:
    return " ".join(_link(f"https://matrix.to/#/{user}", user) for user in users)


def task_message(
    task: Task,
    state: TaskState,
    *,
    forgejo_url: str,
    limit: int,
    at: datetime,
    reason: str = "",
    receipt: Receipt | None = None,
) -> Notice:
    """The one room message of a task, as it reads in ``state`` (posted, then edited)."""
    url = issue_url(forgejo_url, task)
    ref = f"{task.repo}#{task.issue_number}"
    title = clean(task.title, limit=limit)
    words = STATE_WORDS[state]
    emoji = STATE_EMOJI[state]
    plain = [f"{emoji} {ref} {title} — {words}"]
    rich = [f"{emoji} {_link(url, ref)} {html.escape(title)} — <b>{html.escape(words)}</b>"]
    details: list[tuple[str, str]] = []  # (plain, html)
    if task.agent_id and state is not TaskState.CREATED:
        details.append(
            (f"agent {task.agent_id}", f"agent <code>{html.escape(task.agent_id)}</code>")
        )
    pr = receipt.pr_number if receipt and receipt.pr_number else task.pr_number
    if pr and state in (TaskState.REVIEW_PENDING, TaskState.COMPLETED):
        pr_link = pull_url(forgejo_url, task, pr)
        details.append((f"PR #{pr} {pr_link}", _link(pr_link, f"PR #{pr}")))
    if state is TaskState.COMPLETED:
        if receipt is not None:
            details.append((f"cost ${receipt.cost_usd:.2f}", f"cost ${receipt.cost_usd:.2f}"))
            details.append((f"{receipt.tokens} tokens", f"{receipt.tokens} tokens"))
        took = format_duration((at - task.created_at).total_seconds())
        details.append((f"took {took}", f"took {took}"))
    if state in (TaskState.FAILED, TaskState.AGENT_LOST, TaskState.CANCELLED, TaskState.CREATED):
        why = clean(reason or task.failure_reason or task.wait_reason, limit=limit, link=url)
        if why:
            details.append((why, html.escape(why)))
    if details:
        plain.append(" · ".join(p for p, _ in details))
        rich.append(" · ".join(h for _, h in details))
    return Notice(plain="\n".join(plain), html="<br>".join(rich))


def agent_root(agent: Agent) -> Notice:
    """The root of an agent's thread: who it is, created once."""
    host = agent.hostname or "unknown host"
    plain = f"🤖 {agent.id} · {agent.type} · host {host} · {agent.mode}"
    rich = (
        f"🤖 <b>{html.escape(agent.id)}</b> · {html.escape(agent.type)} · host "
        f"<code>{html.escape(host)}</code> · {html.escape(str(agent.mode))}"
    )
    return Notice(plain=plain, html=rich)


def _event_words(event: TaskEvent, *, limit: int, link: str) -> str | None:
    """What one task event says in its agent's thread, or None for events not worth a line."""
    reason = clean(event.reason, limit=limit, link=link) if event.reason else ""
    suffix = f": {reason}" if reason else ""
    if event.kind == "transition" and event.to_state is not None:
        state = event.to_state
        if state is TaskState.ASSIGNED:
            return "assigned"
        if state is TaskState.RUNNING:
            return "started"
        if state is TaskState.REVIEW_PENDING:
            return f"in review{suffix}"
        if state is TaskState.COMPLETED:
            return "completed"
        if state is TaskState.FAILED:
            return f"failed{suffix}"
        if state is TaskState.AGENT_LOST:
            return f"lost{suffix}"
        if state is TaskState.CANCELLED:
            return f"cancelled{suffix}"
        if state is TaskState.CREATED:
            return f"requeued{suffix}"
        return None
    if event.kind in ("progress", "receipt", "pull_request", "review", "verification"):
        words = {
            "progress": "progress",
            "receipt": "receipt",
            "pull_request": "pull request",
            "review": "review",
            "verification": "receipt check",
        }[event.kind]
        return f"{words}{suffix}"
    if event.kind == "gave_up":
        return f"gave up{suffix}"
    if event.kind in ("question", "decision", "answer"):
        return reason or None  # "asks the maintainers: …", "question 1 (#31) answered by …"
    return None


def thread_reply(event: TaskEvent, task: Task, *, forgejo_url: str, limit: int) -> Notice | None:
    """One line in the agent's thread for ``event`` of ``task``, or None."""
    url = issue_url(forgejo_url, task)
    words = _event_words(event, limit=limit, link=url)
    if words is None:
        return None
    ref = f"{task.repo}#{task.issue_number}"
    emoji = STATE_EMOJI.get(event.to_state, "•") if event.to_state else "•"
    return Notice(
        plain=f"{emoji} {ref} {words}",
        html=f"{emoji} {_link(url, ref)} {html.escape(words)}",
    )


def needs_person(
    headline: str, detail: str, *, link: str | None, mentions: Sequence[str]
) -> Notice:
    """A message of its own for something a person must look at (failed for good, an agent
    offline or back, a host restarted, a task stuck); ``headline`` and ``detail`` are already
    clean."""
    prefix_plain = " ".join(mentions) + ": " if mentions else ""
    prefix_html = _mention_html(mentions) + ": " if mentions else ""
    plain = f"{prefix_plain}⚠️ {headline}" + (f" — {detail}" if detail else "")
    rich = f"{prefix_html}⚠️ <b>{html.escape(headline)}</b>" + (
        f" — {html.escape(detail)}" if detail else ""
    )
    if link:
        plain += f" {link}"
        rich += f" {_link(link, 'issue')}"
    return Notice(plain=plain, html=rich, mentions=tuple(mentions))


def answer(lines: Sequence[str]) -> Notice:
    """A command's answer: lines of text we wrote (anything quoted in them is already clean)."""
    plain = "\n".join(lines)
    rich = "<br>".join(html.escape(line) for line in lines)
    return Notice(plain=plain, html=rich)
