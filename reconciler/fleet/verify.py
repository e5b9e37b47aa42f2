"""Verifying a receipt against Forgejo: what an agent claims, checked against what Forgejo shows.

The receipts controller (``controllers/receipts.py``) calls :func:`gather` to read the facts a
receipt's claims can be checked against — the one part that does I/O, through the gateway — and
then the pure :func:`check_receipt`, which returns one :class:`~reconciler.models.ReceiptCheck`
per claim, each with its own reason. Nothing an agent says is taken for true:

with a pull request
    ``pull_request``  the PR exists in the task's repository;
    ``repository``    its head and base are branches of that repository (not a fork);
    ``branch``        its head is the task's branch, and the branch the receipt names;
    ``commits``       every commit the receipt claims is one of the PR's commits;
    ``diff``          the PR changes at least one file;
    ``status:<ctx>``  (when the PR is merged) each required status context is ``success`` on
                      the PR's head commit; ``pending`` is not decided yet.

without one (a task completed through the API)
    ``branch``        the branch the receipt names exists (commits need a branch);
    ``commits``       every claimed commit is on that branch.

:func:`receipt_from_pull` makes the receipt of a merged pull request whose agent sent none, so
the same checks run on it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from reconciler.errors import ForgejoNotFound
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import (
    Branch,
    ChangedFile,
    CombinedStatus,
    Commit,
    CommitState,
    PullRequest,
)
from reconciler.models import (
    RECONCILER_ACTOR,
    AgentId,
    CheckOutcome,
    Receipt,
    ReceiptCheck,
    ReceiptId,
    Task,
    TaskEvent,
)

VERIFICATION = "verification"
"""The kind of the events that record checks of receipts."""

BRANCH_COMMITS_LIMIT = 500
"""How far back a branch is searched for claimed commits (newest first)."""

# "Closes #12" alone on a line says which issue a PR closes, not what it did.
_KEYWORD_LINE = re.compile(
    r"^\s*(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?)\s*:?\s+#\d+\s*$", re.IGNORECASE | re.MULTILINE
)

UNKNOWN_AGENT = AgentId("unknown")
"""The agent named in a receipt made from a pull request of a task nobody holds."""


@dataclass(frozen=True)
class Evidence:
    """What Forgejo shows about a receipt's claims, read once by :func:`gather`."""

    pull: PullRequest | None = None
    """The pull request the receipt names; None: there is none of that number in the repo."""
    pull_commits: tuple[Commit, ...] = ()
    pull_files: tuple[ChangedFile, ...] = ()
    statuses: CombinedStatus | None = None
    """The statuses on the PR's head; None when not read (no requirement, or not merged)."""
    branch: Branch | None = None
    """The branch a receipt without a pull request names; None: it does not exist."""
    branch_commits: tuple[Commit, ...] = ()


def gather(
    gateway: ForgejoGateway,
    task: Task,
    receipt: Receipt,
    *,
    pull: PullRequest | None,
    with_statuses: bool,
) -> Evidence:
    """Read from Forgejo what ``receipt`` can be checked against.

    ``pull`` is the pull request the caller already read for ``receipt.pr_number`` (None: it
    does not exist); ``with_statuses`` reads the statuses on its head commit too.
    """
    if receipt.pr_number is not None:
        if pull is None:
            return Evidence()
        commits, files = gateway.pull_changes(task.repo, pull)
        return Evidence(
            pull=pull,
            pull_commits=commits,
            pull_files=files,
            statuses=(
                gateway.combined_status(task.repo, pull.head_sha)
                if with_statuses and pull.head_sha
                else None
            ),
        )
    if not receipt.branch:
        return Evidence()
    branch = gateway.get_branch(task.repo, receipt.branch)
    if branch is None:
        return Evidence()
    try:
        commits = gateway.list_branch_commits(task.repo, receipt.branch, limit=BRANCH_COMMITS_LIMIT)
    except ForgejoNotFound:  # deleted between the two calls
        return Evidence()
    return Evidence(branch=branch, branch_commits=commits)


def check_receipt(
    receipt: Receipt,
    task: Task,
    evidence: Evidence,
    *,
    required_statuses: Sequence[str] = (),
    final: bool = False,
) -> tuple[ReceiptCheck, ...]:
    """Every claim of ``receipt`` checked against ``evidence``; pure.

    ``final`` is the check before completion (the pull request is merged): required statuses
    are checked then, not while the pull request is still in review.
    """
    if receipt.pr_number is None:
        return _check_without_pull(receipt, task, evidence)
    return _check_pull(
        receipt, task, evidence, required_statuses=required_statuses if final else ()
    )


def failed(checks: Sequence[ReceiptCheck]) -> tuple[ReceiptCheck, ...]:
    return tuple(c for c in checks if c.outcome is CheckOutcome.FAILED)


def pending(checks: Sequence[ReceiptCheck]) -> tuple[ReceiptCheck, ...]:
    return tuple(c for c in checks if c.outcome is CheckOutcome.PENDING)


def _passed(name: str, detail: str) -> ReceiptCheck:
    return ReceiptCheck(name=name, outcome=CheckOutcome.PASSED, detail=detail)


def _failed(name: str, detail: str) -> ReceiptCheck:
    return ReceiptCheck(name=name, outcome=CheckOutcome.FAILED, detail=detail)


def short(sha: str) -> str:
    return sha[:10]


def _is_among(claimed: str, commits: Sequence[Commit]) -> bool:
    # Receipts may carry abbreviated shas (7 hex digits at least, as git prints them).
    wanted = claimed.lower()
    return any(c.sha.lower().startswith(wanted) for c in commits)


def _check_pull(
    receipt: Receipt, task: Task, evidence: Evidence, *, required_statuses: Sequence[str]
) -> tuple[ReceiptCheck, ...]:
    number = receipt.pr_number
    pull = evidence.pull
    if pull is None:
        return (_failed("pull_request", f"there is no pull request #{number} in {task.repo}"),)
    checks = [_passed("pull_request", f"pull request #{number} exists in {task.repo}")]

    def same(repo: str | None) -> bool:
        return repo is not None and repo.lower() == task.repo.lower()

    if pull.base_repo is not None and not same(pull.base_repo):
        checks.append(
            _failed("repository", f"pull request #{number} is in {pull.base_repo}, not {task.repo}")
        )
    elif not same(pull.head_repo):
        where = pull.head_repo or "a repository that was deleted"
        checks.append(
            _failed(
                "repository",
                f"the head of pull request #{number} is in {where}, a fork of {task.repo}",
            )
        )
    else:
        checks.append(_passed("repository", f"head and base are branches of {task.repo}"))

    if pull.head_branch != task.branch:
        checks.append(
            _failed(
                "branch",
                f"the head of pull request #{number} is `{pull.head_branch}`, not the task's "
                f"branch `{task.branch}`",
            )
        )
    elif receipt.branch and receipt.branch != pull.head_branch:
        checks.append(
            _failed(
                "branch",
                f"the receipt names branch `{receipt.branch}`, but the head of pull request "
                f"#{number} is `{pull.head_branch}`",
            )
        )
    else:
        checks.append(_passed("branch", f"the head is the task's branch `{task.branch}`"))

    strangers = [sha for sha in receipt.commits if not _is_among(sha, evidence.pull_commits)]
    if strangers:
        listed = ", ".join(short(s) for s in strangers[:5]) + (" …" if len(strangers) > 5 else "")
        checks.append(
            _failed(
                "commits",
                f"{len(strangers)} claimed commit(s) are not in pull request #{number}: {listed}",
            )
        )
    elif receipt.commits:
        checks.append(
            _passed(
                "commits", f"all {len(receipt.commits)} claimed commit(s) are in the pull request"
            )
        )
    else:
        checks.append(_passed("commits", "no commits claimed"))

    if evidence.pull_files:
        checks.append(_passed("diff", f"changes {len(evidence.pull_files)} file(s)"))
    else:
        checks.append(_failed("diff", f"pull request #{number} changes no file"))

    for context in required_statuses:
        checks.append(_check_status(context, pull, evidence.statuses))
    return tuple(checks)


def _check_status(context: str, pull: PullRequest, statuses: CombinedStatus | None) -> ReceiptCheck:
    name = f"status:{context}"
    head = short(pull.head_sha) if pull.head_sha else "its head"
    status = statuses.for_context(context) if statuses is not None else None
    if status is None:
        return _failed(name, f"no {context} status was reported on {head}")
    if status.state is CommitState.SUCCESS:
        return _passed(name, f"{context} is success on {head}")
    if status.state is CommitState.PENDING:
        return ReceiptCheck(
            name=name, outcome=CheckOutcome.PENDING, detail=f"{context} is still pending on {head}"
        )
    why = f": {status.description}" if status.description else ""
    return _failed(name, f"{context} is {status.state.value} on {head}{why}")


def _check_without_pull(
    receipt: Receipt, task: Task, evidence: Evidence
) -> tuple[ReceiptCheck, ...]:
    if not receipt.branch:
        if receipt.commits:
            return (_failed("branch", "the receipt claims commits but names no branch"),)
        return (_passed("commits", "no commits claimed, no branch named"),)
    if evidence.branch is None:
        return (_failed("branch", f"there is no branch `{receipt.branch}` in {task.repo}"),)
    checks = [_passed("branch", f"branch `{receipt.branch}` exists in {task.repo}")]
    strangers = [sha for sha in receipt.commits if not _is_among(sha, evidence.branch_commits)]
    if strangers:
        listed = ", ".join(short(s) for s in strangers[:5]) + (" …" if len(strangers) > 5 else "")
        checks.append(
            _failed(
                "commits",
                f"{len(strangers)} claimed commit(s) are not on `{receipt.branch}` (searched its "
                f"newest {BRANCH_COMMITS_LIMIT}): {listed}",
            )
        )
    elif receipt.commits:
        checks.append(
            _passed(
                "commits", f"all {len(receipt.commits)} claimed commit(s) are on `{receipt.branch}`"
            )
        )
    else:
        checks.append(_passed("commits", "no commits claimed"))
    return tuple(checks)


def checked_receipts(events: Sequence[TaskEvent]) -> frozenset[str]:
    """The ids of the receipts a task's history shows verified (whatever the outcome)."""
    return frozenset(
        str(e.data["receipt_id"])
        for e in events
        if e.kind == VERIFICATION and "receipt_id" in e.data
    )


def recorded_checks(events: Sequence[TaskEvent], receipt_id: str) -> tuple[ReceiptCheck, ...]:
    """The checks of ``receipt_id`` as last recorded in a task's history (one verification
    writes its checks together, at one instant); empty when it was never checked."""
    mine = [e for e in events if e.kind == VERIFICATION and e.data.get("receipt_id") == receipt_id]
    if not mine:
        return ()
    last = mine[-1].at
    return tuple(
        ReceiptCheck(
            name=str(e.data.get("check", "")),
            outcome=CheckOutcome(str(e.data.get("outcome", CheckOutcome.FAILED.value))),
            detail=str(e.data.get("detail", "")),
        )
        for e in mine
        if e.at == last
    )


def verification_event(
    task: Task, receipt: Receipt, check: ReceiptCheck, *, now: datetime
) -> TaskEvent:
    """The history line of one check of one receipt."""
    return TaskEvent(
        task_id=task.id,
        at=now,
        actor=RECONCILER_ACTOR,
        kind=VERIFICATION,
        reason=f"{check.name} {check.outcome.value}: {check.detail}",
        data={
            "receipt_id": receipt.id,
            "check": check.name,
            "outcome": check.outcome.value,
            "detail": check.detail,
        },
    )


def receipt_from_pull(
    task: Task, pull: PullRequest, commits: Sequence[Commit], *, now: datetime
) -> Receipt:
    """The receipt of a merged pull request whose agent sent none: what Forgejo shows of it.

    Its id is a function of the task and the PR, so making it again gives the same receipt.
    It claims nothing beyond the PR's own facts, and costs and tokens are unknown (0).
    """
    if not pull.merged:
        raise ValueError(
            f"pull request #{pull.number} is not merged; receipts are made only for merged ones"
        )
    described = _KEYWORD_LINE.sub("", pull.body).strip()
    return Receipt(
        id=ReceiptId(f"{task.id}-pr{pull.number}"),
        task_id=task.id,
        agent_id=task.agent_id or task.previous_agent or UNKNOWN_AGENT,
        lease_generation=max(task.lease_generation, 1),
        pr_number=pull.number,
        branch=pull.head_branch,
        commits=tuple(c.sha for c in commits),
        summary=described or pull.title,
        session_id=task.session_id,
        submitted_at=now,
    )


__all__ = [
    "BRANCH_COMMITS_LIMIT",
    "VERIFICATION",
    "Evidence",
    "check_receipt",
    "checked_receipts",
    "failed",
    "gather",
    "pending",
    "receipt_from_pull",
    "recorded_checks",
    "short",
    "verification_event",
]
