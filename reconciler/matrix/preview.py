"""The fleet room as it would look, rendered from the Matrix outbox without a homeserver.

``agent-fleet demo`` (``webhook/demo.py``) ends with this: the same notifier fills the same
outbox as the daemon's Matrix thread would deliver, and :func:`render_room` applies posts,
edits and thread replies in order to print the room's timeline and one agent's thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.matrix import format as fmt
from reconciler.matrix.notifier import TOPIC
from reconciler.store import Store


@dataclass
class _Shown:
    text: str
    edits: int = 0
    replies: list[str] = field(default_factory=list)


def render_room(store: Store, *, thread_of: str | None = None) -> list[str]:
    """The room's timeline (task messages as last edited, messages for people) and the thread
    of agent ``thread_of`` (the first agent with a thread when None), as lines of text."""
    timeline: list[_Shown] = []
    slots: dict[str, _Shown] = {}
    for message in store.pending(topic=TOPIC):
        payload = message.payload
        op, slot = payload["op"], payload.get("slot")
        text = fmt.Notice.from_payload(payload["notice"]).plain
        if op == "reply":
            thread = payload.get("thread")
            if thread in slots:
                slots[thread].replies.append(text)
            continue
        if slot in slots:
            if op in ("upsert", "update"):
                slots[slot].text = text
                slots[slot].edits += 1
            continue
        if op == "update":
            continue
        shown = _Shown(text)
        timeline.append(shown)
        if slot:
            slots[slot] = shown
    lines = ["the room:"]
    for shown in timeline:
        edited = f"  (edited {shown.edits}×)" if shown.edits else ""
        first, *rest = shown.text.splitlines()
        lines.append(f"  {first}{edited}")
        lines += [f"      {line}" for line in rest]
    threads = [
        (slot, shown)
        for slot, shown in slots.items()
        if slot.startswith("agent:")
        and shown.replies
        and (thread_of is None or slot == f"agent:{thread_of}")
    ]
    if threads:
        slot, shown = threads[0]
        lines.append(f"the thread of {slot.removeprefix('agent:')}:")
        lines.append(f"  {shown.text}")
        lines += [f"    ↳ {reply}" for reply in shown.replies]
    return lines
