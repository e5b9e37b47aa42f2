"""Why a task may not be placed now: its holds, decided by pure rules over what was observed.

A held task stays in the queue (``created``) with ``Task.on_hold`` set and ``Task.wait_reason``
saying why, in words a person can act on; placement (``fleet/placement.py``) skips it, so the
ssh placement of the assignment controller and a pull agent's dequeue honour a hold alike, and
no attempt is spent on it. The assignment controller (``controllers/assignment.py``) reads the
facts (the issue's labels, its author's trust and who approved it, its open dependencies),
asks the rules here, and keeps the first hold that applies (:func:`first_hold`). Kinds, in the
order they are asked:

* ``label``: a person paused the task with the hold label (``fleet/hold``);
* ``approval``: the issue's author is not trusted, or the work always needs approval
  (``[approval]`` roles and labels), and no trusted user other than the author has added the
  approval label (``fleet/approved``) — one removed since does not count;
* ``cycle``: the issue's open dependencies lead back to it (``dependency cycle: #1 → #2 → #1``);
* ``dependency``: an issue it depends on is still open (``waiting for #12: open``);
* ``budget``: its repository's daily spending cap is reached (``daily budget of $50.00 for
  org/repo spent; resumes at 00:00 UTC``), decided in ``fleet/budgets.py``.

A hold is only a kind and a reason, so a further rule (a spending cap, say) adds its own kind
and joins the list without changing the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from reconciler.forgejo.types import LabelEvent
from reconciler.models import RECONCILER_ACTOR, Task, TaskEvent, TaskState
from reconciler.settings import ApprovalSettings, LabelsSettings


class HoldKind(StrEnum):
    """The kinds of hold these rules decide (other modules may add their own)."""

    LABEL = "label"
    APPROVAL = "approval"
    CYCLE = "cycle"
    DEPENDENCY = "dependency"
    BUDGET = "budget"


@dataclass(frozen=True)
class Hold:
    """Why a task may not be placed now: a kind, and the reason shown to people."""

    kind: str
    reason: str


@dataclass(frozen=True, order=True)
class IssueRef:
    """An issue by repository and number."""

    repo: str
    number: int

    def shown_from(self, repo: str) -> str:
        """``#12`` within ``repo``, ``org/other#12`` from elsewhere."""
        return f"#{self.number}" if self.repo == repo else f"{self.repo}#{self.number}"


def first_hold(*holds: Hold | None) -> Hold | None:
    """The first hold that applies, in the order given (the rules' precedence)."""
    return next((hold for hold in holds if hold is not None), None)


def label_hold(labels: Sequence[str], vocabulary: LabelsSettings) -> Hold | None:
    """A person paused the task with the hold label."""
    if vocabulary.hold not in labels:
        return None
    return Hold(HoldKind.LABEL, f"on hold ({vocabulary.hold})")


def approver(
    events: Iterable[LabelEvent], *, label: str, author: str, trusted: Callable[[str], bool]
) -> str | None:
    """Who approved the issue: the trusted user, not its author, whose addition of ``label``
    still stands (no removal of the label came after it), or None."""
    approved_by: str | None = None
    for event in events:
        if event.label != label:
            continue
        if not event.added:
            approved_by = None
        elif event.actor.casefold() != author.casefold() and trusted(event.actor):
            approved_by = event.actor
    return approved_by


def always_needs_approval(
    role: str | None, labels: Sequence[str], approval: ApprovalSettings
) -> str | None:
    """Why this work needs approval whoever opened it (``[approval]`` roles and labels), in
    words for the wait reason, or None."""
    if role is not None and role in approval.roles:
        return f"tasks for role {role} always need one"
    marked = next((name for name in approval.labels if name in labels), None)
    if marked is not None:
        return f"issues labelled {marked} always need one"
    return None


def approval_hold(
    *,
    author: str,
    author_trusted: bool,
    approved_by: str | None,
    vocabulary: LabelsSettings,
    always: str | None = None,
) -> Hold | None:
    """An untrusted author's issue, or work that ``always`` needs approval, waits for a
    maintainer's approval label."""
    if (author_trusted and always is None) or approved_by is not None:
        return None
    if not author_trusted:
        why = f"the issue's author {author or 'unknown'} is not trusted"
        who = "a maintainer"
    else:
        why = str(always)
        who = "a maintainer other than the author"
    return Hold(
        HoldKind.APPROVAL,
        f"waiting for a maintainer's approval: {why}; {who} adds {vocabulary.approved}",
    )


def find_cycle(
    start: IssueRef, edges: Mapping[IssueRef, Sequence[IssueRef]]
) -> tuple[IssueRef, ...] | None:
    """A path of open dependencies from ``start`` back to it (``start`` first and last), or
    None. ``edges`` maps an issue to the open issues it depends on, as far as they were read;
    the shortest such path is found (breadth first), so the report is the tightest loop."""
    paths: list[tuple[IssueRef, ...]] = [(start,)]
    seen = {start}
    while paths:
        following: list[tuple[IssueRef, ...]] = []
        for path in paths:
            for nxt in sorted(edges.get(path[-1], ())):
                if nxt == start:
                    return (*path, start)
                if nxt not in seen:
                    seen.add(nxt)
                    following.append((*path, nxt))
        paths = following
    return None


def dependency_hold(
    repo: str, open_dependencies: Sequence[IssueRef], cycle: Sequence[IssueRef] | None
) -> Hold | None:
    """The task waits while any issue it depends on is open; a cycle is said as such."""
    if cycle:
        loop = " → ".join(ref.shown_from(repo) for ref in cycle)
        return Hold(HoldKind.CYCLE, f"dependency cycle: {loop}; remove one of these dependencies")
    if not open_dependencies:
        return None
    shown = ", ".join(ref.shown_from(repo) for ref in sorted(open_dependencies))
    return Hold(HoldKind.DEPENDENCY, f"waiting for {shown}: open")


def plan_hold(task: Task, hold: Hold | None, *, now: datetime) -> tuple[Task, list[TaskEvent]]:
    """Keep the task's hold as observed: held tasks are not placed and say why they wait."""
    events: list[TaskEvent] = []

    def note(kind: str, reason: str) -> None:
        events.append(
            TaskEvent(task_id=task.id, at=now, actor=RECONCILER_ACTOR, kind=kind, reason=reason)
        )

    if hold is None:
        if task.on_hold:
            note("released", f"no longer held (was: {task.wait_reason or 'on hold'})")
            task = task.changed(now=now, on_hold=False)
        return task, events
    if not task.on_hold:
        task = task.changed(now=now, on_hold=True)
    if task.state is TaskState.CREATED and task.wait_reason != hold.reason:
        task = task.changed(now=now, wait_reason=hold.reason)
        note("waiting", hold.reason)
    return task, events
