"""Turns what happened to tasks and agents into Matrix messages in the store's outbox.

The one seam between the fleet and Matrix: nothing in the controllers or the agent API knows
Matrix exists. The notifier follows the task event log (``Store.events_after``, its cursor kept
in the store's metadata) and compares the agents' statuses with those it last announced, and
for each change queues outbox messages (topic ``matrix``) with deterministic ids:

* the task's one room message — posted when first assigned, then edited (``upsert``);
* a line in the thread of the task's agent (``reply``), after the agent's root (``post``);
* a message of its own for what needs a person (failed for good, agent offline or back,
  host restarted, task stuck, a question or decision an agent asks the maintainers).

Called by the Matrix thread (:mod:`reconciler.matrix.client`) before each outbox drain, and by
the demo for its preview. A crash between queueing and moving the cursor queues the same ids
again: a pending id is not queued twice, and one already delivered is re-sent under the same
transaction id, which the homeserver de-duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from reconciler.matrix import format as fmt
from reconciler.models import Agent, AgentStatus, Task, TaskEvent, TaskState
from reconciler.settings import Settings
from reconciler.store import Store

TOPIC = "matrix"
CURSOR_META = "matrix:event_cursor"
AGENTS_META = "matrix:agents"
SLOT_META_PREFIX = "matrix:slot:"
RESTART_MARK = "restart:"

# A waiting reason that no agent coming free will fix: a person must act.
_STUCK_PREFIXES = (
    "no agent has",
    "no online agent has",
    "no agent is online",
    "pinned to",
    # Holds only a person lifts (fleet/holds.py): an approval, a dependency loop.
    "waiting for a maintainer's approval",
    "dependency cycle",
)


def task_slot(task_id: str) -> str:
    return f"task:{task_id}"


def agent_slot(agent_id: str) -> str:
    return f"agent:{agent_id}"


def slot_event(store: Store, slot: str) -> str | None:
    """The Matrix event id a slot was delivered as, or None while it has not been."""
    value = store.get_meta(SLOT_META_PREFIX + slot)
    return value if isinstance(value, str) else None


def is_stuck(reason: str) -> bool:
    return reason.startswith(_STUCK_PREFIXES) or "budget" in reason or "review limit" in reason


@dataclass(frozen=True)
class Outgoing:
    """One message the notifier wants delivered: its id and what the deliverer does with it."""

    id: str
    op: str  # post (once per slot) · upsert (post, then edit) · update (edit only) · reply
    notice: fmt.Notice
    slot: str | None = None
    thread: str | None = None  # a slot name (agent thread) …
    thread_event: str | None = None  # … or an event id (a command's thread)

    def payload(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "notice": self.notice.to_payload(),
            "slot": self.slot,
            "thread": self.thread,
            "thread_event": self.thread_event,
        }


class Notifier:
    """Queues the Matrix messages for every task event and agent change not yet announced."""

    def __init__(
        self, store: Store, *, settings: Callable[[], Settings], clock: Callable[[], datetime]
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock

    def start_from_now(self) -> None:
        """On first use, skip the history: announce only what happens from now on."""
        if self._store.get_meta(CURSOR_META) is not None:
            return
        cursor = 0
        while True:
            events, cursor = self._store.events_after(cursor, limit=1000)
            if not events:
                break
        self._store.set_meta(CURSOR_META, cursor)
        self._store.set_meta(AGENTS_META, self._agent_marks(self._store.list_agents()))

    def scan(self) -> int:
        """Queue the messages for what changed since the last scan; return how many."""
        queued = self._scan_agents()
        cursor_value = self._store.get_meta(CURSOR_META)
        cursor = cursor_value if isinstance(cursor_value, int) else 0
        while True:
            events, after = self._store.events_after(cursor, limit=200)
            if not events:
                return queued
            for position, event in events:
                for message in self.messages_for(position, event):
                    self._queue(message)
                    queued += 1
            cursor = after
            self._store.set_meta(CURSOR_META, cursor)

    def behind(self) -> bool:
        """Whether a task event or an agent change has not been turned into messages yet."""
        cursor_value = self._store.get_meta(CURSOR_META)
        cursor = cursor_value if isinstance(cursor_value, int) else 0
        events, _ = self._store.events_after(cursor, limit=1)
        known = self._store.get_meta(AGENTS_META)
        return bool(events) or known != self._agent_marks(self._store.list_agents())

    def _queue(self, message: Outgoing) -> None:
        self._store.enqueue(TOPIC, message.payload(), now=self._clock(), message_id=message.id)

    # --- task events ----------------------------------------------------------------------

    def messages_for(self, position: int, event: TaskEvent) -> list[Outgoing]:
        """The messages one task event gives (pure but for reading the task and receipts)."""
        task = self._store.find_task(event.task_id)
        if task is None:
            return []
        settings = self._settings()
        url = settings.forgejo.url
        limit = settings.matrix.max_text_length
        out: list[Outgoing] = []
        if event.kind == "transition" and event.to_state is not None:
            receipts = (
                self._store.receipts_for(task.id) if event.to_state is TaskState.COMPLETED else []
            )
            notice = fmt.task_message(
                task,
                event.to_state,
                forgejo_url=url,
                limit=limit,
                at=event.at,
                reason=event.reason,
                receipt=receipts[-1] if receipts else None,
            )
            # Posted when first assigned; a requeue before that is not news for the room.
            op = "update" if event.to_state is TaskState.CREATED else "upsert"
            out.append(Outgoing(f"task-{task.id}-{position}", op, notice, slot=task_slot(task.id)))
        agent_id = _agent_of(event, task)
        reply = fmt.thread_reply(event, task, forgejo_url=url, limit=limit)
        if agent_id is not None and reply is not None:
            out.extend(self._root_for(agent_id))
            out.append(Outgoing(f"reply-{position}", "reply", reply, thread=agent_slot(agent_id)))
        person = self._needs_person(event, task)
        if person is not None:
            out.append(Outgoing(f"person-{position}", "post", person))
        return out

    def _needs_person(self, event: TaskEvent, task: Task) -> fmt.Notice | None:
        settings = self._settings()
        limit = settings.matrix.max_text_length
        link = fmt.issue_url(settings.forgejo.url, task)
        ref = f"{task.repo}#{task.issue_number}"
        mentions = settings.matrix.mention_users
        verdict = (
            event.kind == "transition"
            and event.to_state is TaskState.FAILED
            and event.data.get("failure_retryable") is False
        )
        if event.kind == "gave_up" or verdict:
            reason = fmt.clean(event.reason or task.failure_reason, limit=limit, link=link)
            return fmt.needs_person(f"{ref} failed for good", reason, link=link, mentions=mentions)
        if event.kind in ("question", "decision") and _asks_people(event, task):
            reason = fmt.clean(event.reason, limit=limit, link=link)
            what = "a decision" if event.kind == "decision" else "an answer"
            return fmt.needs_person(
                f"{ref} needs {what} from the maintainers", reason, link=link, mentions=mentions
            )
        if event.kind == "waiting" and is_stuck(event.reason):
            reason = fmt.clean(event.reason, limit=limit, link=link)
            return fmt.needs_person(f"{ref} is stuck", reason, link=link, mentions=mentions)
        return None

    def _root_for(self, agent_id: str) -> list[Outgoing]:
        if slot_event(self._store, agent_slot(agent_id)) is not None:
            return []
        agent = self._store.find_agent(agent_id)
        notice = (
            fmt.agent_root(agent)
            if agent is not None
            else fmt.Notice(plain=f"🤖 {agent_id}", html=f"🤖 <b>{agent_id}</b>")
        )
        return [Outgoing(f"root-{agent_id}", "post", notice, slot=agent_slot(agent_id))]

    # --- agents ---------------------------------------------------------------------------

    @staticmethod
    def _agent_marks(agents: Sequence[Agent]) -> dict[str, Any]:
        return {a.id: [a.status.value, a.status_reason] for a in agents}

    def _scan_agents(self) -> int:
        settings = self._settings()
        mentions = settings.matrix.mention_users
        limit = settings.matrix.max_text_length
        known_value = self._store.get_meta(AGENTS_META)
        known = known_value if isinstance(known_value, dict) else {}
        agents = self._store.list_agents()
        marks = self._agent_marks(agents)
        if marks == known:
            return 0
        queued = 0
        for agent in agents:
            before = known.get(agent.id)
            now_status, now_reason = marks[agent.id]
            messages: list[Outgoing] = []
            if before is None:
                messages.extend(self._root_for(agent.id))
            elif isinstance(before, list) and len(before) == 2:
                was_status, was_reason = before
                stamp = f"{agent.id}-{(agent.status_since or agent.registered_at).isoformat()}"
                reason = fmt.clean(agent.status_reason, limit=limit)
                if was_status != now_status:
                    words = {
                        AgentStatus.OFFLINE.value: "is offline",
                        AgentStatus.ONLINE.value: "is back online",
                        AgentStatus.DRAINING.value: "is draining",
                    }[now_status]
                    line = fmt.Notice(
                        plain=f"🤖 {agent.id} {words}" + (f": {reason}" if reason else ""),
                        html=fmt.answer([f"🤖 {agent.id} {words}"]).html
                        + (f": {fmt.answer([reason]).html}" if reason else ""),
                    )
                    messages.extend(self._root_for(agent.id))
                    messages.append(
                        Outgoing(f"agent-{stamp}", "reply", line, thread=agent_slot(agent.id))
                    )
                    if now_status != AgentStatus.DRAINING.value:
                        person = fmt.needs_person(
                            f"agent {agent.id} {words}", reason, link=None, mentions=mentions
                        )
                        messages.append(Outgoing(f"person-agent-{stamp}", "post", person))
                if (
                    now_reason != was_reason
                    and RESTART_MARK in str(now_reason)
                    and RESTART_MARK not in str(was_reason)
                ):
                    person = fmt.needs_person(
                        f"host {agent.id} was restarted", reason, link=None, mentions=mentions
                    )
                    messages.append(Outgoing(f"person-restart-{stamp}", "post", person))
            for message in messages:
                self._queue(message)
                queued += 1
        self._store.set_meta(AGENTS_META, marks)
        return queued


def _asks_people(event: TaskEvent, task: Task) -> bool:
    """The event records a question its agent asked the maintainers (not a role)."""
    number = event.data.get("question")
    asked = next((q for q in task.questions if q.number == number), None)
    return asked is not None and asked.role is None


def _agent_of(event: TaskEvent, task: Task) -> str | None:
    """The agent whose thread an event belongs to: the one it names, else the task's."""
    named = event.data.get("agent_id")
    if isinstance(named, str) and named:
        return named
    if event.actor.startswith("agent:"):
        return event.actor.removeprefix("agent:")
    return task.agent_id or task.previous_agent
