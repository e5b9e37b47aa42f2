"""The receipts controller (key: a task): verifies what an agent claims, then completes the task.

``reconcile(("receipts", repo, task_id))`` observes the task, the receipt to check and what
Forgejo shows about it (``reconciler.fleet.verify``), plans with the pure :func:`plan` and applies.
The review controller enqueues the key when a receipt arrives for a PR in review and when the
task's pull request is merged; a receipt without a pull request (a task completed through the
API) names the key itself.

* **A receipt for an open pull request** has its claims checked at once — the PR exists in the
  task's repository, its head is the task's branch, the claimed commits are in it, it changes
  files. A receipt that lies is refused: the task fails with the reasons (worth another
  attempt) and the issue shows them.
* **A merged pull request** completes the task once its receipt — the agent's, or one made from
  the PR when the agent sent none — passes every check, required commit statuses
  (``review.required_statuses``) included; a status still pending is looked at again after
  ``review.status_recheck`` seconds. Failing any check, the task fails with the reasons and is
  not retried: the work is merged, a person decides.
* **A receipt without a pull request** (the task is still running) completes the task when its
  commits are on the branch it names.

Every check is recorded as a ``verification`` event when its result changes. Completion writes
one result comment (marker ``result``, edited in place: status line, summary, PR and commit
links, files, cost, tokens, duration, attempts) and closes the issue if ``review.close_issue``;
the agent's stats take the receipt in. The ``status/`` labels (``status/done``,
``status/failed``) and the task's own status comment follow through the assignment controller,
whose key every change of state enqueues: it is their one writer, for open and closed issues
alike, so two controllers never race on an issue's status label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from reconciler.engine.reconcile import (
    ActContext,
    Action,
    Actuator,
    CloseIssue,
    Enqueue,
    Result,
    SaveTask,
    UpsertComment,
    comment_digest,
)
from reconciler.errors import ForgejoNotFound, NotFoundError
from reconciler.fleet.budgets import Budget, format_usd
from reconciler.fleet.verify import (
    Evidence,
    check_receipt,
    checked_receipts,
    failed,
    gather,
    pending,
    receipt_from_pull,
    recorded_checks,
    short,
    verification_event,
)
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import Commit, Issue, IssueState, PullRequest
from reconciler.keys import RECEIPTS, Key, issue_key
from reconciler.models import (
    RECONCILER_ACTOR,
    Agent,
    AgentId,
    CheckOutcome,
    Receipt,
    ReceiptCheck,
    Task,
    TaskEvent,
    TaskState,
    transition,
)
from reconciler.settings import Settings
from reconciler.store import Store
from reconciler.text import format_duration

log = structlog.get_logger(__name__)

RESULT_MARKER = "result"
"""The hidden marker of the result comment (the assignment controller's is ``task``)."""

"""Seconds before a reconcile that lost a write race to another writer of the task looks again."""

SUMMARY_LIMIT = 1500
LISTED = 10
"""Commits and files listed by name in the result comment; the rest are counted."""


@dataclass(frozen=True)
class Observed:
    """Everything :func:`plan` may look at, read once per reconcile."""

    task: Task | None
    receipt: Receipt | None = None
    """The receipt to check: the agent's, or one made from the merged PR (``generated``)."""
    generated: bool = False
    """The receipt was made from the pull request now and is not stored yet."""
    evidence: Evidence = field(default_factory=Evidence)
    final: bool = False
    """Checking for completion (PR merged, or no PR), not only the claims of a PR in review."""
    issue: Issue | None = None
    recorded: tuple[ReceiptCheck, ...] = ()
    """The checks of this receipt as last recorded in the task's history (empty: never)."""


@dataclass(frozen=True)
class StoreReceipt(Action):
    """Keep a receipt made from a pull request (idempotent: its id is fixed)."""

    receipt: Receipt

    def describe(self) -> str:
        return f"task {self.receipt.task_id}: keep receipt {self.receipt.id} made from PR #{self.receipt.pr_number}"

    def apply(self, ctx: ActContext) -> None:
        ctx.store.put_receipt(self.receipt)


@dataclass(frozen=True)
class RecordEvents(Action):
    """Append events to a task's history without writing the task."""

    events: tuple[TaskEvent, ...]

    def describe(self) -> str:
        kinds = ", ".join(dict.fromkeys(e.kind for e in self.events))
        return f"task {self.events[0].task_id}: record {len(self.events)} event(s) ({kinds})"

    def apply(self, ctx: ActContext) -> None:
        for event in self.events:
            ctx.store.append_event(event)


@dataclass(frozen=True)
class CountReceipt(Action):
    """Add a receipt to its agent's running stats (after the task's change is saved)."""

    agent_id: AgentId
    tokens: int = 0
    cost_usd: float = 0.0
    estimated: bool = False  # cost_usd was estimated from the tokens
    duration_s: float = 0.0
    completed: int = 0
    errors: int = 0

    def describe(self) -> str:
        parts = [f"+{self.completed} completed"] if self.completed else []
        parts += [f"+{self.errors} error"] if self.errors else []
        parts += [
            f"+{self.tokens} tokens",
            f"+${self.cost_usd:.4f}" + (" (estimated)" if self.estimated else ""),
        ]
        return f"agent {self.agent_id}: stats {', '.join(parts)}"

    def apply(self, ctx: ActContext) -> None:
        def change(agent: Agent) -> Agent:
            stats = agent.stats
            counted = stats.model_copy(
                update={
                    "tasks_completed": stats.tasks_completed + self.completed,
                    "errors": stats.errors + self.errors,
                    "tokens": stats.tokens + self.tokens,
                    "cost_usd": stats.cost_usd + self.cost_usd,
                    "estimated_cost_usd": stats.estimated_cost_usd
                    + (self.cost_usd if self.estimated else 0.0),
                    "total_duration_s": stats.total_duration_s
                    + (self.duration_s if self.completed else 0.0),
                }
            )
            return agent.model_copy(update={"stats": counted})

        try:
            ctx.store.update_agent(self.agent_id, change)
        except NotFoundError:
            # A receipt made for a task nobody holds, or an agent since forgotten.
            log.info("receipt.agent_unknown", agent_id=self.agent_id)


# --- plan -------------------------------------------------------------------------------------


def plan(observed: Observed, *, now: datetime, settings: Settings) -> tuple[Action, ...]:
    """Decide what a task's receipt means for it. Pure: no I/O, no clock."""
    task, receipt = observed.task, observed.receipt
    if task is None or receipt is None:
        return ()
    checks = check_receipt(
        receipt,
        task,
        observed.evidence,
        required_statuses=settings.review.required_statuses,
        final=observed.final,
    )
    refused, waiting = failed(checks), pending(checks)
    before = task
    events: list[TaskEvent] = []
    actions: list[Action] = []
    if observed.generated:
        actions.append(StoreReceipt(receipt))
        events.append(
            TaskEvent(
                task_id=task.id, at=now, actor=RECONCILER_ACTOR, kind="receipt",
                reason=f"receipt {receipt.id} made from pull request #{receipt.pr_number}: "
                "the agent sent none",
                data={"receipt_id": receipt.id, "pr_number": receipt.pr_number,
                      "commits": list(receipt.commits), "generated": True},
            )
        )  # fmt: skip
    first_look = not observed.recorded
    if checks != observed.recorded:
        events += [verification_event(task, receipt, check, now=now) for check in checks]

    count: CountReceipt | None = None
    if refused:
        why = "; ".join(f"{c.name}: {c.detail}" for c in refused)
        merged = observed.final and receipt.pr_number is not None
        reason = (
            f"pull request #{receipt.pr_number} was merged, but receipt {receipt.id} did not "
            f"hold up: {why}"
            if merged
            else f"receipt {receipt.id} did not hold up: {why}"
        )
        if task.state in (TaskState.REVIEW_PENDING, TaskState.RUNNING):
            # A refused claim before merge is worth another attempt; after it a person decides.
            task, event = transition(
                task, TaskState.FAILED, now=now, actor=RECONCILER_ACTOR, reason=reason,
                failure_reason=reason, failure_retryable=not merged,
            )  # fmt: skip
            events.append(event)
        if first_look:
            count = _count(receipt, errors=1)
    elif waiting:
        if first_look:
            count = _count(receipt)
    elif observed.final:
        completes = task.state in (TaskState.REVIEW_PENDING, TaskState.RUNNING)
        if completes:
            what = (
                f"pull request #{receipt.pr_number} merged"
                if receipt.pr_number is not None
                else "the work is on its branch"
            )
            task, event = transition(
                task, TaskState.COMPLETED, now=now, actor=RECONCILER_ACTOR,
                reason=f"{what}; receipt {receipt.id} verified",
                wait_reason="", failure_reason="", failure_retryable=False,
            )  # fmt: skip
            events.append(event)
        if completes or first_look:
            # A task already completed (on an agent's word, before verification existed)
            # counts once, when its receipt is first checked.
            count = _count(receipt, completed=1, tokens_too=first_look)
        issue = observed.issue
        if settings.review.close_issue and issue is not None and issue.state is IssueState.OPEN:
            actions.append(CloseIssue(task.repo, task.issue_number))
    elif first_look:
        # The claims of a PR in review hold; completion waits for the merge.
        count = _count(receipt)

    body = result_comment(
        task, receipt, checks, observed.evidence,
        final=observed.final, replaces=bool(before.result_digest),
    )  # fmt: skip
    digest = comment_digest(body) if body else ""
    if body and digest != task.result_digest and observed.issue is not None:
        actions.append(UpsertComment(task.repo, task.issue_number, marker=RESULT_MARKER, body=body))
        task = task.changed(now=task.updated_at, result_digest=digest)

    if task != before:
        if task.state is not before.state:
            task = task.changed(now=task.updated_at, checks=checks)
        actions.append(SaveTask(task, tuple(events), expected=before))
    elif events:
        # Only the history grows: the task itself is left alone, so the other writers of a
        # task in review (the assignment controller, a run, an agent) are not raced.
        actions.append(RecordEvents(tuple(events)))
    if count is not None:
        actions.append(count)
    if task.state is not before.state:
        actions.append(Enqueue(issue_key(task.repo, task.issue_number)))
    return tuple(actions)


def _count(
    receipt: Receipt, *, completed: int = 0, errors: int = 0, tokens_too: bool = True
) -> CountReceipt:
    return CountReceipt(
        receipt.agent_id,
        tokens=receipt.tokens if tokens_too else 0,
        cost_usd=receipt.cost_usd if tokens_too else 0.0,
        estimated=receipt.cost_estimated,
        duration_s=receipt.duration_s,
        completed=completed,
        errors=errors,
    )


def next_check(observed: Observed, *, settings: Settings) -> float | None:
    """Seconds until the receipt is looked at again: while required statuses are pending."""
    if observed.task is None or observed.receipt is None or not observed.final:
        return None
    checks = check_receipt(
        observed.receipt,
        observed.task,
        observed.evidence,
        required_statuses=settings.review.required_statuses,
        final=True,
    )
    if pending(checks) and not failed(checks):
        return settings.review.status_recheck
    return None


# --- the result comment -----------------------------------------------------------------------


def _quoted(text: str) -> str:
    # Agent text on the issue: no hidden markers (they find bot comments), quoted, bounded.
    clean = text.replace("<!--", "&lt;!--").strip()
    if len(clean) > SUMMARY_LIMIT:
        clean = clean[: SUMMARY_LIMIT - 1].rstrip() + "…"
    return "\n".join(f"> {line}" if line else ">" for line in clean.splitlines())


def _commit_line(sha: str, commits: Sequence[Commit]) -> str:
    known = next((c for c in commits if c.sha.lower().startswith(sha.lower())), None)
    if known is None:
        return f"`{short(sha)}`"
    link = (
        f"[`{short(known.sha)}`]({known.html_url})" if known.html_url else f"`{short(known.sha)}`"
    )
    return f"{link} {known.title}".rstrip()


def _task_spend_rows(task: Task, receipt: Receipt) -> list[tuple[str, str]]:
    """What the task spent over all its runs, against its budget — shown when it differs from
    this receipt's figures (earlier runs) or the task has a budget."""
    budget = Budget(usd=task.budget_usd, tokens=task.budget_tokens)
    same = (task.spent_usd, task.spent_tokens) == (receipt.cost_usd, receipt.tokens)
    if same and not budget.limited:
        return []
    spent = f"{format_usd(task.spent_usd)}" + (" (estimated)" if task.spent_estimated else "")
    spent += f", {task.spent_tokens:,} tokens"
    if budget.limited:
        spent += f" of a budget of {budget.describe()}"
    return [("Task spend", spent)]


def result_comment(
    task: Task,
    receipt: Receipt,
    checks: Sequence[ReceiptCheck],
    evidence: Evidence,
    *,
    final: bool,
    replaces: bool = False,
) -> str:
    """The structured comment on the issue. Empty while there is nothing to report: the claims
    of a PR in review hold and it is not merged — unless it ``replaces`` an earlier result (a
    receipt refused before this attempt), which must not stand."""
    refused, waiting = failed(checks), pending(checks)
    pull = evidence.pull
    pr = f"#{receipt.pr_number}" if receipt.pr_number is not None else ""
    pr_link = f"[{pr}]({pull.html_url})" if pull is not None and pull.html_url else pr
    if refused:
        if task.state is TaskState.COMPLETED:
            head = "⚠️ **Completed, but the receipt did not hold up**"
        else:
            head = "❌ **Receipt refused: the task is not completed**"
    elif waiting:
        head = f"⏳ **Merged {pr_link}, waiting for required statuses**"
    elif final:
        where = (
            f"pull request {pr_link} merged" if pr else f"branch `{receipt.branch or task.branch}`"
        )
        head = f"✅ **Done**: {where}, receipt verified"
    elif replaces:
        head = f"🔎 **Receipt checked, pull request {pr_link} in review**"
    else:
        return ""

    out = [head, ""]
    if receipt.summary.strip():
        out += [_quoted(receipt.summary), ""]
    rows: list[tuple[str, str]] = []
    if pull is not None:
        rows.append(("Pull request", f"{pr_link} {pull.title}".strip()))
    elif pr:
        rows.append(("Pull request", f"{pr} (not found)"))
    if receipt.branch or task.branch:
        rows.append(("Branch", f"`{receipt.branch or task.branch}`"))
    listing = evidence.pull_commits if receipt.pr_number is not None else evidence.branch_commits
    if receipt.commits:
        shown = [_commit_line(sha, listing) for sha in receipt.commits[:LISTED]]
        more = len(receipt.commits) - LISTED
        rows.append(
            (
                f"Commits ({len(receipt.commits)})",
                "<br>".join(shown) + (f"<br>… {more} more" if more > 0 else ""),
            )
        )
    if evidence.pull_files:
        files = evidence.pull_files
        shown = [f"`{f.filename}` (+{f.additions} −{f.deletions})" for f in files[:LISTED]]
        more = len(files) - LISTED
        rows.append(
            (
                f"Files changed ({len(files)})",
                ", ".join(shown) + (f", … {more} more" if more > 0 else ""),
            )
        )
    rows += [
        ("Cost", f"${receipt.cost_usd:.4f}" + (" (estimated)" if receipt.cost_estimated else "")),
        ("Tokens", f"{receipt.tokens:,}"),
        *_task_spend_rows(task, receipt),
        ("Duration", format_duration(receipt.duration_s)),
        (
            "Attempts",
            f"{task.attempt}"
            + (
                f" ({task.review_count} review round(s) asking for changes)"
                if task.review_count
                else ""
            ),
        ),
        ("Agent", f"{receipt.agent_id}"),
    ]
    out += ["| | |", "|---|---|"]
    out += ["| " + name + " | " + value.replace("|", "\\|") + " |" for name, value in rows]
    out.append("")
    mark = {CheckOutcome.PASSED: "✓", CheckOutcome.FAILED: "✗", CheckOutcome.PENDING: "…"}
    out.append("**Checks against Forgejo**")
    out.append("")
    out += [f"- {mark[c.outcome]} `{c.name}`: {c.detail}" for c in checks]
    out += ["", f"<sub>agent-fleet · task `{task.id}` · receipt `{receipt.id}`</sub>", ""]
    return "\n".join(out)


# --- the controller ---------------------------------------------------------------------------


class ReceiptsController:
    name = RECEIPTS

    def __init__(
        self,
        gateway: ForgejoGateway,
        store: Store,
        actuator: Actuator,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
    ) -> None:
        self._gateway = gateway
        self._store = store
        self._actuator = actuator
        self._settings = settings
        self._clock = clock

    def observe(self, key: Key) -> Observed:
        task = self._store.find_task(key.id)
        if task is None or task.state not in (
            TaskState.REVIEW_PENDING,
            TaskState.RUNNING,
            TaskState.COMPLETED,
        ):
            return Observed(task)
        if task.state is TaskState.COMPLETED and task.result_digest:
            return Observed(task)  # verified and written back
        receipts = self._store.receipts_for(task.id)
        if task.pr_number is None:
            return self._without_pull(task, receipts)
        return self._with_pull(task, task.pr_number, receipts)

    def _without_pull(self, task: Task, receipts: Sequence[Receipt]) -> Observed:
        """A receipt that names no pull request, handed in under the task's current lease."""
        mine = [
            r
            for r in receipts
            if r.pr_number is None
            and (
                task.state is TaskState.COMPLETED
                or (r.agent_id == task.agent_id and r.lease_generation == task.lease_generation)
            )
        ]
        if not mine:
            return Observed(task)
        receipt = mine[-1]
        recorded = recorded_checks(self._store.events_for(task.id), receipt.id)
        if recorded and task.state is not TaskState.COMPLETED:
            return Observed(task)  # checked, and the task was moved on (or will be, by a retry)
        evidence = gather(self._gateway, task, receipt, pull=None, with_statuses=False)
        return Observed(
            task, receipt, evidence=evidence, final=True, issue=self._issue(task),
            recorded=recorded,
        )  # fmt: skip

    def _with_pull(
        self, task: Task, number: int, receipts: Sequence[Receipt], *, kept: bool = True
    ) -> Observed:
        for_pull = [r for r in receipts if r.pr_number == number]
        current = [r for r in for_pull if r.lease_generation == task.lease_generation]
        unchecked = (
            task.state is TaskState.REVIEW_PENDING
            and bool(current)
            and current[-1].id not in checked_receipts(self._store.events_for(task.id))
        )
        try:
            # What is checked of a merged PR (head, commits, merge) never changes: the copy the
            # review controller just read when it saw the merge does. A receipt not checked
            # yet is checked against the PR as that controller last read it (it enqueued this
            # key after its read), unless something may have changed the PR since; a look
            # that only waits for the merge reads it.
            pull: PullRequest | None = self._gateway.get_pull(
                task.repo, number, merged_kept=True, kept=kept and unchecked
            )
        except ForgejoNotFound:
            pull = None
        settings = self._settings()
        if pull is not None and pull.merged and task.state is not TaskState.COMPLETED:
            generated = not for_pull
            # With no receipt from the agent, the PR's own facts make one.
            receipt = (
                for_pull[-1] if for_pull else receipt_from_pull(task, pull, (), now=self._clock())
            )
            evidence = gather(
                self._gateway, task, receipt, pull=pull,
                with_statuses=bool(settings.review.required_statuses),
            )  # fmt: skip
            if generated:
                receipt = receipt_from_pull(task, pull, evidence.pull_commits, now=self._clock())
            return Observed(
                task, receipt, generated=generated, evidence=evidence, final=True,
                issue=self._issue(task),
                recorded=recorded_checks(self._store.events_for(task.id), receipt.id),
            )  # fmt: skip
        if not unchecked:
            return Observed(task)
        receipt = current[-1]
        # A receipt for a PR in review: its claims are checked now, statuses at the merge.
        evidence = gather(self._gateway, task, receipt, pull=pull, with_statuses=False)
        checks = check_receipt(
            receipt,
            task,
            evidence,
            required_statuses=settings.review.required_statuses,
            final=False,
        )
        if kept and (failed(checks) or pending(checks)):
            # Claims the kept copy does not bear out may be in a push whose delivery is on its
            # way: nothing is refused before the PR is read for it.
            return self._with_pull(task, number, receipts, kept=False)
        # The issue is read only when there is something to say on it (a refusal, or a result
        # of an earlier attempt to replace); claims that hold in review say nothing.
        says = result_comment(
            task, receipt, checks, evidence, final=False, replaces=bool(task.result_digest)
        )
        return Observed(task, receipt, evidence=evidence, issue=self._issue(task) if says else None)

    def _issue(self, task: Task) -> Issue | None:
        try:
            return self._gateway.get_issue(task.repo, task.issue_number, kept=True)
        except ForgejoNotFound:
            return None

    def reconcile(self, key: Key) -> Result:
        observed = self.observe(key)
        now = self._clock()
        settings = self._settings()
        actions = plan(observed, now=now, settings=settings)
        self._actuator.apply(actions)
        return Result(requeue_after=next_check(observed, settings=settings))
