"""The review controller (key: a pull request, or a task branch): a task's pull request, from
opened through review to merged or closed.

``reconcile(("review", repo, "<number>"))`` observes the pull request, the task it belongs to
and the PR's reviews; an open PR whose head is the task's branch in the task's own repository
also reports that branch's tip (its head is the tip as of the read). ``("review", repo,
"branch:task/<id>-<slug>")`` — a push, or a task branch created or deleted — reads only the
tip (``get_branch``), and nothing once the task is finished, or in review with its pull request
known: a push to that PR's head comes with a ``pull_request`` delivery for the PR's key, which
reads the tip. A branch key does not look for the task's pull request: that PR has review
keys of its own — its ``pull_request`` and review webhooks name it, and for webhooks that were
lost the resync does (``reconciler/engine/resync.py``: the incremental resync lists every issue
and PR changed since the last one, the full one every open PR that moved and the PR of every
task in review). The one exception is a task in review that recorded no pull request, rebuilt
from its status label after the local state was lost: the full resync names it by its branch,
and its branch key looks the PR up (``find_pull_by_head``). The plan is the pure :func:`plan`;
then the actions are applied:

* a pull request belongs to a task when its head is the task's branch ``task/<id>-<slug>`` in
  the task's own repository, or its body says ``Closes #N`` (``Fixes``, ``Resolves``) for the
  task's issue; a task takes the first such PR it meets as its own (``pr_number``), and a PR
  found by its body lends the task its head branch;
* a new tip on the task's branch is activity: ``last_activity_at`` moves;
* an open PR moves a running task to ``review_pending`` once its agent has had
  ``review.receipt_grace`` seconds after its last push to hand in a receipt (the receipt moves
  it at once; an ssh run this process still runs moves it itself). The PR's key is requeued for
  the end of the grace (:func:`next_check`); a push meanwhile moves ``last_activity_at`` through
  the branch key, and the requeued PR key then waits on for the rest;
* a review requesting changes, by someone who may push to the repository, on the PR's current
  head, sends the task back to the queue for a new attempt whose prompt carries the review
  (``review_feedback``), to be given to the same agent (``previous_agent``); ``review_count``
  counts the rounds, and past ``retries.max_review_rounds`` the task fails, not to be retried.
  Every review is recorded once in the task's history (``reviews_seen``);
* a merged PR, or a receipt not yet checked, hands the task to the receipts controller, which
  verifies the receipt and completes the task;
* a PR closed without merge fails the task — or requeues it with
  ``retries.requeue_closed_unmerged``.

The ``status/`` label and the task's status comment follow through the assignment controller:
every change of state enqueues the issue's key. The controller writes nothing to Forgejo.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from reconciler.engine.executor import Executor
from reconciler.engine.reconcile import Action, Actuator, Enqueue, Result, SaveTask
from reconciler.errors import ForgejoNotFound
from reconciler.fleet.verify import checked_receipts, short
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import IssueState, PullRequest, Review, ReviewState
from reconciler.keys import BRANCH_PREFIX, REVIEW, Key, issue_key, task_key
from reconciler.models import (
    RECONCILER_ACTOR,
    Task,
    TaskEvent,
    TaskState,
    requeue,
    task_id_for,
    task_id_from_branch,
    transition,
)
from reconciler.run.prompt import is_trusted_author
from reconciler.settings import Settings
from reconciler.store import Store
from reconciler.text import format_duration, one_line

log = structlog.get_logger(__name__)


# "Closes #12", "fixes: #12", "Resolved #12" — a reference to an issue of the same repository.
_CLOSING = re.compile(
    r"(?<![\w/#-])(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\s*:?\s+#(\d+)\b", re.IGNORECASE
)

EXCERPT = 300
"""Characters of a review's text kept in the task's history (the prompt gets all of it)."""


def closing_references(body: str) -> tuple[int, ...]:
    """The issue numbers a pull request body closes (``Closes #N``, ``Fixes``, ``Resolves``)."""
    return tuple(dict.fromkeys(int(n) for n in _CLOSING.findall(body)))


class Link:
    """How the task of a review key was found."""

    BRANCH = "branch"
    BODY = "body"
    RECEIPT = "receipt"
    """The task's receipt names a pull request that does not exist."""


@dataclass(frozen=True)
class Observed:
    """Everything :func:`plan` may look at, read once per reconcile."""

    repo: str
    pull: PullRequest | None
    task: Task | None
    link: str = ""
    branch_tip: str | None = None
    """The commit at the tip of the task's branch; None when unknown or the branch is gone."""
    reviews: tuple[Review, ...] = ()
    """The PR's reviews, read while the task is in review."""
    trusted_reviewers: frozenset[str] = frozenset()
    """Authors of new change requests who may push to the repository."""
    run_in_progress: bool = False
    """This process runs the task on an ssh host right now (the run reports for itself)."""
    reported_commits: frozenset[str] = frozenset()
    """Commits the receipts of the task's current attempt name: pushes its run reported."""
    unchecked_receipt: bool = False
    """The task holds a receipt for its PR, under its lease, not yet verified."""


def is_the_tasks_pull(pull: PullRequest, task: Task) -> bool:
    """Whether ``pull`` (already found to link to ``task``) is the task's pull request.

    The one the task recorded, if any. Else an open one; a merged one while the task awaits
    it (in review, or running when its agent sent no receipt); a closed one only while the
    task is in review — a task requeued after its PR was closed starts afresh.
    """
    if task.pr_number is not None:
        return task.pr_number == pull.number
    if pull.merged:
        return task.state in (TaskState.REVIEW_PENDING, TaskState.RUNNING)
    if pull.state is IssueState.OPEN:
        return True
    return task.state is TaskState.REVIEW_PENDING


def receipt_grace_left(
    observed: Observed, task: Task, *, now: datetime, settings: Settings
) -> float | None:
    """Seconds until a running task with an open pull request goes to review without a
    receipt (0: now); None when that is not for this controller to do."""
    pull = observed.pull
    if (
        pull is None
        or task.state is not TaskState.RUNNING
        or pull.state is not IssueState.OPEN
        or pull.merged
        or observed.run_in_progress
        or not is_the_tasks_pull(pull, task)
        # Changes were requested at this head: the new attempt has not pushed anything yet.
        or (task.sent_back_head and pull.head_sha == task.sent_back_head)
    ):
        return None
    since = task.last_activity_at or task.updated_at
    return max(settings.review.receipt_grace - (now - since).total_seconds(), 0.0)


def _excerpt(text: str) -> str:
    return one_line(text, limit=EXCERPT)


def review_feedback(review: Review) -> str:
    """What a change request puts in the next attempt's prompt."""
    body = review.body.strip() or "(no text: see the review's comments on the pull request)"
    return f"{review.author} requested changes:\n\n{body}"


def plan(observed: Observed, *, now: datetime, settings: Settings) -> tuple[Action, ...]:
    """Decide what must change for one pull request or task branch. Pure: no I/O, no clock."""
    task, pull = observed.task, observed.pull
    if task is None or task.state in (TaskState.COMPLETED, TaskState.CANCELLED):
        return ()
    before = task
    events: list[TaskEvent] = []
    follow_up: list[Key] = []

    tip = observed.branch_tip
    # A run records its own activity when it ends (a run of this process, or an agent with
    # its receipt); writing the same push again would only race the task's other writers.
    reported = observed.run_in_progress or tip in observed.reported_commits
    if tip and tip != task.branch_head and not reported:
        task = task.changed(now=now, branch_head=tip, last_activity_at=now)
        events.append(
            TaskEvent(
                task_id=task.id, at=now, actor=RECONCILER_ACTOR, kind="push",
                reason=f"`{task.branch}` is at {short(tip)}",
                data={"head": tip},
            )
        )  # fmt: skip

    if pull is None:
        if observed.link == Link.RECEIPT and task.state is TaskState.REVIEW_PENDING:
            # The receipt names a PR that does not exist: the receipts controller refuses it.
            follow_up.append(task_key(task.repo, task.id))
        return _finish(observed.task, task, events, follow_up)
    if not is_the_tasks_pull(pull, task):
        return _finish(observed.task, task, events, follow_up)

    if task.pr_number is None:
        changes: dict[str, object] = {"pr_number": pull.number}
        how = f"its head is `{pull.head_branch}`"
        if observed.link == Link.BODY:
            how = f"its body closes #{task.issue_number}"
            same_repo = pull.head_repo is not None and pull.head_repo.lower() == task.repo.lower()
            if same_repo and pull.head_branch != task.branch:
                # The work lives on the PR's branch: later attempts push there, and the
                # receipt's branch is checked against it.
                changes["branch"] = pull.head_branch
        task = task.changed(now=now, **changes)
        events.append(
            TaskEvent(
                task_id=task.id, at=now, actor=RECONCILER_ACTOR, kind="pull_request",
                reason=f"pull request #{pull.number} belongs to the task: {how}",
                data={"pr_number": pull.number, "state": pull.state.value, "merged": pull.merged},
            )
        )  # fmt: skip

    if pull.merged:
        if task.state is TaskState.REVIEW_PENDING:
            # The reviews that led to the merge belong in the history too.
            task = _reviews(observed, task, pull, events, now=now, settings=settings)
        if task.state in (TaskState.REVIEW_PENDING, TaskState.RUNNING):
            follow_up.append(task_key(task.repo, task.id))
    elif pull.state is IssueState.CLOSED:
        task = _closed_unmerged(task, pull, events, now=now, settings=settings)
    elif task.state is TaskState.REVIEW_PENDING:
        task = _reviews(observed, task, pull, events, now=now, settings=settings)
        if task.state is TaskState.REVIEW_PENDING and observed.unchecked_receipt:
            follow_up.append(task_key(task.repo, task.id))
    elif receipt_grace_left(observed, task, now=now, settings=settings) == 0.0:
        grace = settings.review.receipt_grace
        task, event = transition(
            task, TaskState.REVIEW_PENDING, now=now, actor=RECONCILER_ACTOR,
            reason=f"pull request #{pull.number} is open and {task.agent_id or 'the agent'} "
            f"sent no receipt within {format_duration(grace)} of its last push",
        )  # fmt: skip
        events.append(event)

    if task.state is not before.state:
        follow_up.append(issue_key(task.repo, task.issue_number))
    return _finish(before, task, events, follow_up)


def _finish(
    before: Task | None, task: Task, events: list[TaskEvent], follow_up: list[Key]
) -> tuple[Action, ...]:
    actions: list[Action] = []
    if events or task != before:
        actions.append(SaveTask(task, tuple(events), expected=before))
    actions += [Enqueue(key) for key in dict.fromkeys(follow_up)]
    return tuple(actions)


def _closed_unmerged(
    task: Task, pull: PullRequest, events: list[TaskEvent], *, now: datetime, settings: Settings
) -> Task:
    if task.state is TaskState.FAILED:
        return task
    closed = f"pull request #{pull.number} was closed without being merged"
    if task.state is TaskState.CREATED and settings.retries.requeue_closed_unmerged:
        # Waiting for its next attempt already (sent back by a review): it starts afresh.
        events.append(
            TaskEvent(
                task_id=task.id, at=now, actor=RECONCILER_ACTOR, kind="pull_request",
                reason=f"{closed}; the next attempt opens a new one",
                data={"pr_number": pull.number},
            )
        )  # fmt: skip
        return task.changed(now=now, pr_number=None)
    if settings.retries.requeue_closed_unmerged:
        moved, event = requeue(
            task, now=now, actor=RECONCILER_ACTOR,
            reason=f"{closed}; requeued (retries.requeue_closed_unmerged)",
        )  # fmt: skip
        # A new attempt opens a new pull request; this one is done with.
        moved = moved.changed(now=now, pr_number=None, previous_agent=task.agent_id)
    else:
        moved, event = transition(
            task, TaskState.FAILED, now=now, actor=RECONCILER_ACTOR, reason=closed,
            failure_reason=closed, failure_retryable=False,
        )  # fmt: skip
    events.append(event)
    return moved


def _reviews(
    observed: Observed,
    task: Task,
    pull: PullRequest,
    events: list[TaskEvent],
    *,
    now: datetime,
    settings: Settings,
) -> Task:
    """Record each new review once; a round of change requests sends the task back."""
    fresh = [
        r
        for r in observed.reviews
        if r.id not in task.reviews_seen
        and not r.dismissed
        and r.state in (ReviewState.APPROVED, ReviewState.REQUEST_CHANGES, ReviewState.COMMENT)
    ]
    if not fresh:
        return task
    asks: list[Review] = []
    for review in fresh:
        text = f": {_excerpt(review.body)}" if review.body.strip() else ""
        if review.state is ReviewState.APPROVED:
            note = f"{review.author} approved pull request #{pull.number}{text}"
        elif review.state is ReviewState.COMMENT:
            note = f"{review.author} commented on pull request #{pull.number}{text}"
        elif pull.merged:
            note = f"{review.author} requested changes, but pull request #{pull.number} was merged"
        elif review.commit_id and pull.head_sha and review.commit_id != pull.head_sha:
            note = (
                f"{review.author} requested changes on {short(review.commit_id)}; newer commits "
                "followed, so they are taken as the answer"
            )
        elif review.author not in observed.trusted_reviewers:
            note = (
                f"{review.author} requested changes but may not push to {task.repo}: not acted on"
            )
        else:
            note = f"{review.author} requested changes{text}"
            asks.append(review)
        events.append(
            TaskEvent(
                task_id=task.id, at=now, actor=f"forgejo:{review.author}", kind="review",
                reason=note,
                data={"review_id": review.id, "state": review.state.value,
                      "pr_number": pull.number, "commit": review.commit_id},
            )
        )  # fmt: skip
    task = task.changed(now=now, reviews_seen=task.reviews_seen + tuple(r.id for r in fresh))
    if not asks:
        return task

    rounds = task.review_count + 1
    limit = settings.retries.max_review_rounds
    who = ", ".join(dict.fromkeys(r.author for r in asks))
    actor = f"forgejo:{asks[-1].author}"
    if rounds > limit:
        why = (
            f"changes were requested in {rounds} review rounds (last by {who}); the limit is "
            f"{limit} (retries.max_review_rounds)"
        )
        moved, event = transition(
            task, TaskState.FAILED, now=now, actor=actor, reason=why,
            failure_reason=why, failure_retryable=False, review_count=rounds,
        )  # fmt: skip
        events.append(event)
        return moved
    agent = task.agent_id
    moved, event = requeue(
        task, now=now, actor=actor,
        reason=f"changes requested by {who} (review round {rounds} of {limit}); back to "
        f"{agent or 'the queue'} with the review",
    )  # fmt: skip
    events.append(event)
    return moved.changed(
        now=now,
        review_count=rounds,
        review_feedback=tuple(review_feedback(r) for r in asks),
        previous_agent=agent or task.previous_agent,
        sent_back_head=pull.head_sha,
        failure_reason="",
        failure_retryable=False,
        wait_reason="",
    )


def next_check(
    observed: Observed, task: Task | None, *, now: datetime, settings: Settings
) -> float | None:
    """Seconds until this key needs another look: the end of a running task's receipt grace."""
    if task is None:
        return None
    left = receipt_grace_left(observed, task, now=now, settings=settings)
    return None if left is None else left + 0.5


class ReviewController:
    name = REVIEW

    def __init__(
        self,
        gateway: ForgejoGateway,
        store: Store,
        actuator: Actuator,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        executor: Executor | None = None,
    ) -> None:
        self._gateway = gateway
        self._store = store
        self._actuator = actuator
        self._settings = settings
        self._clock = clock
        self._executor = executor

    # --- observe ---------------------------------------------------------------------------

    def observe(self, key: Key) -> Observed:
        repo = key.repo
        if key.id.startswith(BRANCH_PREFIX):
            branch = key.id[len(BRANCH_PREFIX) :]
            task = self._task_of_branch(repo, branch)
            if task is None:
                return Observed(repo, None, None)
            if task.state in (TaskState.COMPLETED, TaskState.CANCELLED) or (
                task.state is TaskState.REVIEW_PENDING and task.pr_number is not None
            ):
                # Nothing to look at: a finished task ignores its branch, and a push to the
                # head branch of a task's pull request comes with a `pull_request`
                # `synchronized` delivery, whose PR key reads the tip with the PR (the resync
                # names a PR that moved if that delivery is lost).
                return Observed(repo, None, task, link=Link.BRANCH)
            found = self._gateway.get_branch(repo, branch)
            # The task's pull request has review keys of its own (see the module docstring):
            # a branch key reads only the tip. A task in review that recorded no pull request
            # was rebuilt from its status label after the store was lost; the resync names it
            # by its branch, and only here is its pull request looked for.
            head_of = (
                self._gateway.find_pull_by_head(repo, branch)
                if task.pr_number is None and task.state is TaskState.REVIEW_PENDING
                else None
            )
            return self._complete(
                Observed(
                    repo, head_of, task, link=Link.BRANCH,
                    branch_tip=found.commit_sha if found is not None else None,
                )
            )  # fmt: skip
        try:
            number = int(key.id)
        except ValueError:
            raise ValueError(
                f"review key {key} names neither a pull request nor a branch"
            ) from None
        try:
            pull: PullRequest | None = self._gateway.get_pull(repo, number)
        except ForgejoNotFound:
            pull = None
        if pull is None:
            claimed = next(
                (t for t in self._store.list_tasks(repo=repo) if t.pr_number == number), None
            )
            return Observed(repo, None, claimed, link=Link.RECEIPT if claimed else "")
        task, link = self._task_of_pull(repo, pull)
        if task is None:
            return Observed(repo, pull, None)
        tip = None
        if (
            pull.state is IssueState.OPEN
            and _same_repo(pull.head_repo, repo)
            and pull.head_branch == task.branch
        ):
            # An open PR's head is the tip of the task's branch as of this read (Forgejo
            # answers `head.sha` from the head branch itself, services/convert/pull.go): the
            # PR's key reports it, so a `pull_request` delivery needs no branch key, and a
            # branch the task took from a PR found by its body (no push key names a branch
            # outside task/) is followed too.
            tip = pull.head_sha or None
        return self._complete(Observed(repo, pull, task, link=link, branch_tip=tip))

    def _task_of_branch(self, repo: str, branch: str) -> Task | None:
        task_id = task_id_from_branch(branch)
        if task_id is None:
            return None
        task = self._store.find_task(task_id)
        if task is None or not _same_repo(task.repo, repo) or task.branch != branch:
            return None
        return task

    def _task_of_pull(self, repo: str, pull: PullRequest) -> tuple[Task | None, str]:
        if _same_repo(pull.head_repo, repo):
            task = self._task_of_branch(repo, pull.head_branch)
            if task is not None:
                return task, Link.BRANCH
        for number in closing_references(pull.body):
            task = self._store.find_task(task_id_for(repo, number))
            if task is not None and _same_repo(task.repo, repo):
                return task, Link.BODY
        return None, ""

    def _complete(self, observed: Observed) -> Observed:
        """Add what only a task in review needs: reviews, reviewers' trust, receipts."""
        task, pull = observed.task, observed.pull
        assert task is not None
        running = self._executor is not None and self._executor.is_running(task.id)
        receipts = self._store.receipts_for(task.id) if observed.branch_tip else []
        reported = frozenset(
            sha
            for r in receipts
            if r.lease_generation == task.lease_generation
            for sha in r.commits
        )
        observed = replace(observed, run_in_progress=running, reported_commits=reported)
        if (
            pull is None
            or task.state is not TaskState.REVIEW_PENDING
            or (pull.state is not IssueState.OPEN and not pull.merged)
            or not is_the_tasks_pull(pull, task)
        ):
            return observed
        reviews = self._gateway.list_reviews(observed.repo, pull.number)
        askers = {
            r.author
            for r in reviews
            if r.state is ReviewState.REQUEST_CHANGES and r.id not in task.reviews_seen
        }
        trusted = frozenset(a for a in askers if self._may_push(observed.repo, a))
        current = [
            r
            for r in receipts or self._store.receipts_for(task.id)
            if r.pr_number == pull.number and r.lease_generation == task.lease_generation
        ]
        unchecked = bool(current) and current[-1].id not in checked_receipts(
            self._store.events_for(task.id)
        )
        return replace(
            observed,
            reviews=reviews,
            trusted_reviewers=trusted,
            unchecked_receipt=unchecked,
        )

    def _may_push(self, repo: str, login: str) -> bool:
        try:
            permission = self._gateway.get_permission(repo, login)
        except ForgejoNotFound:  # not a collaborator, or a deleted account
            return False
        return is_trusted_author(login, permission)

    # --- reconcile -------------------------------------------------------------------------

    def reconcile(self, key: Key) -> Result:
        observed = self.observe(key)
        now = self._clock()
        settings = self._settings()
        actions = plan(observed, now=now, settings=settings)
        self._actuator.apply(actions)
        saved = next((a.task for a in reversed(actions) if isinstance(a, SaveTask)), observed.task)
        return Result(requeue_after=next_check(observed, saved, now=now, settings=settings))


"""Seconds before a reconcile that lost a write race to another writer of the task looks again."""


def _same_repo(left: str | None, right: str) -> bool:
    return left is not None and left.lower() == right.lower()
