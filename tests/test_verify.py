"""Receipt verification: every way a receipt can lie is refused with its own reason, a truthful
receipt passes. Against the in-memory Forgejo (real git behind it), plus pure cases for what
the sandbox cannot produce (a pull request from a fork)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from reconciler.fleet.verify import (
    Evidence,
    check_receipt,
    checked_receipts,
    failed,
    gather,
    receipt_from_pull,
    recorded_checks,
    verification_event,
)
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import ChangedFile, IssueState, PullRequest
from reconciler.models import (
    AgentId,
    CheckOutcome,
    Receipt,
    ReceiptCheck,
    ReceiptId,
    RepoName,
    Task,
    TaskEvent,
    TaskState,
    branch_for,
    task_id_for,
)
from reconciler.sandbox import ForgejoSandbox
from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
OTHER_REPO = "fleet-admin/other"


@dataclass
class World:
    forge: ForgejoSandbox
    gateway: ForgejoGateway
    task: Task
    pull: int
    commits: tuple[str, ...]

    def receipt(self, **changes: object) -> Receipt:
        fields: dict[str, object] = {
            "id": "r-1",
            "task_id": self.task.id,
            "agent_id": "box-1",
            "lease_generation": 1,
            "pr_number": self.pull,
            "branch": self.task.branch,
            "commits": self.commits,
            "summary": "Added the flag.",
            "submitted_at": NOW,
        }
        return Receipt.model_validate({**fields, **changes})

    def checks(
        self, receipt: Receipt, *, final: bool = False, required: tuple[str, ...] = ()
    ) -> tuple[ReceiptCheck, ...]:
        pull = None
        if receipt.pr_number is not None:
            try:
                pull = self.gateway.get_pull(DEMO_REPO, receipt.pr_number)
            except Exception:  # noqa: BLE001 -- a missing PR is what some cases test
                pull = None
        evidence = gather(self.gateway, self.task, receipt, pull=pull, with_statuses=bool(required))
        return check_receipt(receipt, self.task, evidence, required_statuses=required, final=final)


@pytest.fixture
def world(forge: ForgejoSandbox) -> Iterator[World]:
    number = forge.create_issue(DEMO_REPO, "Add a --version flag")
    task_id = task_id_for(DEMO_REPO, number)
    task = Task(
        id=task_id, repo=RepoName(DEMO_REPO), issue_number=number, title="Add a --version flag",
        state=TaskState.REVIEW_PENDING, agent_id=AgentId("box-1"), lease_generation=1, attempt=1,
        branch=branch_for(task_id, "Add a --version flag"), created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    first = forge.push(
        DEMO_REPO, task.branch, files={"cli.py": "VERSION = 1\n"}, message="Add VERSION"
    )
    second = forge.push(
        DEMO_REPO, task.branch, files={"docs/version.md": "--version\n"}, message="Document it"
    )
    pull = forge.open_pull(DEMO_REPO, task.branch, title=task.title, body=f"Closes #{number}")
    gateway = ForgejoGateway(
        IN_PROCESS_URL, forge.admin_token, transport=httpx.WSGITransport(app=forge.app)
    )
    yield World(forge, gateway, task.model_copy(update={"pr_number": pull}), pull, (first, second))
    gateway.close()


def outcome(checks: tuple[ReceiptCheck, ...], name: str) -> ReceiptCheck:
    return next(c for c in checks if c.name == name)


def test_a_truthful_receipt_passes_every_check(world: World) -> None:
    """PR in the repo, head is the task's branch, both commits in it, files changed."""
    checks = world.checks(world.receipt())
    assert [c.name for c in checks] == ["pull_request", "repository", "branch", "commits", "diff"]
    assert all(c.outcome is CheckOutcome.PASSED for c in checks), checks
    assert outcome(checks, "diff").detail == "changes 2 file(s)"


def test_abbreviated_commit_shas_are_accepted(world: World) -> None:
    """git prints short shas; a claim of the first 7 hex digits names the same commit."""
    checks = world.checks(world.receipt(commits=tuple(sha[:7] for sha in world.commits)))
    assert not failed(checks)


def test_a_pull_request_that_does_not_exist_is_refused(world: World) -> None:
    """The number names nothing in the task's repository: nothing else can be checked."""
    checks = world.checks(world.receipt(pr_number=99))
    assert checks == (
        ReceiptCheck(name="pull_request", outcome=CheckOutcome.FAILED,
                     detail=f"there is no pull request #99 in {DEMO_REPO}"),
    )  # fmt: skip


def test_a_pull_request_of_another_repository_is_refused(world: World) -> None:
    """A PR that exists only in another repository is no PR of the task's repository."""
    world.forge.create_repo(OTHER_REPO)
    world.forge.push(OTHER_REPO, "work", files={"x.txt": "x"}, message="x")
    elsewhere = world.forge.open_pull(OTHER_REPO, "work", title="Elsewhere")
    for _ in range(elsewhere + 3):  # make the same number an issue here, not a PR
        world.forge.create_issue(DEMO_REPO, "filler")
    checks = world.checks(world.receipt(pr_number=elsewhere + 3))
    [check] = checks
    assert check.name == "pull_request" and check.outcome is CheckOutcome.FAILED
    assert f"in {DEMO_REPO}" in check.detail


def test_a_pull_request_from_a_fork_is_refused() -> None:
    """Head in another repository (a fork) or in a deleted one: not the task's branch."""
    task = _task()
    for head_repo, expected in (("mallory/demo", "is in mallory/demo, a fork"), (None, "deleted")):
        pull = _pull(task, head_repo=head_repo)
        checks = check_receipt(_receipt(task), task, Evidence(pull=pull, pull_files=(_file(),)))
        assert outcome(checks, "repository").outcome is CheckOutcome.FAILED
        assert expected in outcome(checks, "repository").detail


def test_the_wrong_head_branch_is_refused(world: World) -> None:
    """A PR whose head is another branch does not carry the task's work."""
    world.forge.push(DEMO_REPO, "feature", files={"a.txt": "a"}, message="a")
    other = world.forge.open_pull(DEMO_REPO, "feature", title="Feature")
    checks = world.checks(world.receipt(pr_number=other, commits=()))
    branch = outcome(checks, "branch")
    assert branch.outcome is CheckOutcome.FAILED
    assert branch.detail == (
        f"the head of pull request #{other} is `feature`, not the task's branch `{world.task.branch}`"
    )


def test_a_receipt_naming_another_branch_than_its_pull_request_is_refused(world: World) -> None:
    """The receipt's own branch claim must match the PR's head too."""
    checks = world.checks(world.receipt(branch="task/elsewhere"))
    assert "the receipt names branch `task/elsewhere`" in outcome(checks, "branch").detail


def test_a_commit_not_on_the_branch_is_refused(world: World) -> None:
    """A sha from main (or anywhere else) is not one of the PR's commits."""
    on_main = world.forge.push(DEMO_REPO, "main", files={"other.txt": "o"}, message="unrelated")
    checks = world.checks(world.receipt(commits=(*world.commits, on_main)))
    commits = outcome(checks, "commits")
    assert commits.outcome is CheckOutcome.FAILED
    assert (
        commits.detail
        == f"1 claimed commit(s) are not in pull request #{world.pull}: {on_main[:10]}"
    )


def test_an_empty_diff_is_refused(world: World) -> None:
    """Commits that undo each other leave a PR that changes nothing."""
    world.forge.push(
        DEMO_REPO,
        world.task.branch,
        files={"cli.py": None, "docs/version.md": None},
        message="undo",
    )
    checks = world.checks(world.receipt(commits=()))
    assert outcome(checks, "diff") == ReceiptCheck(
        name="diff",
        outcome=CheckOutcome.FAILED,
        detail=f"pull request #{world.pull} changes no file",
    )


def test_required_statuses_are_checked_only_at_completion(world: World) -> None:
    """In review the statuses are not looked at; at the merge they are."""
    assert not any(
        c.name.startswith("status:") for c in world.checks(world.receipt(), required=("ci/build",))
    )
    final = world.checks(world.receipt(), final=True, required=("ci/build",))
    assert outcome(final, "status:ci/build").outcome is CheckOutcome.FAILED


@pytest.mark.parametrize(
    ("state", "expected", "detail"),
    [
        (None, CheckOutcome.FAILED, "no ci/build status was reported on"),
        ("failure", CheckOutcome.FAILED, "ci/build is failure on"),
        ("error", CheckOutcome.FAILED, "ci/build is error on"),
        ("pending", CheckOutcome.PENDING, "ci/build is still pending on"),
        ("success", CheckOutcome.PASSED, "ci/build is success on"),
    ],
)
def test_a_required_status_must_be_green_on_the_head(
    world: World, state: str | None, expected: CheckOutcome, detail: str
) -> None:
    """Missing or red refuses, pending waits, success passes — on the PR's head commit."""
    head = world.gateway.get_pull(DEMO_REPO, world.pull).head_sha
    if state is not None:
        world.gateway.create_status(
            DEMO_REPO, head, context="ci/build", state=state, description=""
        )
    world.gateway.create_status(DEMO_REPO, head, context="other", state="success")
    checks = world.checks(world.receipt(), final=True, required=("ci/build",))
    status = outcome(checks, "status:ci/build")
    assert status.outcome is expected
    assert status.detail.startswith(detail) and head[:10] in status.detail


def test_a_status_on_an_older_commit_does_not_count(world: World) -> None:
    """Green on the first commit, nothing on the head: refused."""
    world.gateway.create_status(DEMO_REPO, world.commits[0], context="ci/build", state="success")
    checks = world.checks(world.receipt(), final=True, required=("ci/build",))
    assert outcome(checks, "status:ci/build").outcome is CheckOutcome.FAILED


def test_each_lie_is_refused_with_its_own_reason(world: World) -> None:
    """Several lies in one receipt: each failed check says what it found."""
    on_main = world.forge.push(DEMO_REPO, "main", files={"other.txt": "o"}, message="unrelated")
    checks = world.checks(
        world.receipt(branch="task/nope", commits=(on_main,)), final=True, required=("ci/build",)
    )
    assert [c.name for c in failed(checks)] == ["branch", "commits", "status:ci/build"]
    assert len({c.detail for c in failed(checks)}) == 3


# --- receipts without a pull request -----------------------------------------------------


def test_without_a_pull_request_the_commits_must_be_on_the_named_branch(world: World) -> None:
    """A task completed through the API: its commits exist on the branch it names."""
    ok = world.checks(world.receipt(pr_number=None))
    assert [(c.name, c.outcome) for c in ok] == [
        ("branch", CheckOutcome.PASSED),
        ("commits", CheckOutcome.PASSED),
    ]
    stranger = world.forge.push(DEMO_REPO, "elsewhere", files={"e.txt": "e"}, message="e")
    lying = world.checks(world.receipt(pr_number=None, commits=(*world.commits, stranger)))
    assert outcome(lying, "commits").outcome is CheckOutcome.FAILED
    assert stranger[:10] in outcome(lying, "commits").detail


def test_without_a_pull_request_a_missing_branch_is_refused(world: World) -> None:
    """The branch must exist; commits without any branch are refused too."""
    missing = world.checks(world.receipt(pr_number=None, branch="task/9-nothing"))
    assert missing == (
        ReceiptCheck(name="branch", outcome=CheckOutcome.FAILED,
                     detail=f"there is no branch `task/9-nothing` in {DEMO_REPO}"),
    )  # fmt: skip
    unnamed = world.checks(world.receipt(pr_number=None, branch=""))
    assert unnamed[0].detail == "the receipt claims commits but names no branch"
    nothing = world.checks(world.receipt(pr_number=None, branch="", commits=()))
    assert [c.outcome for c in nothing] == [CheckOutcome.PASSED]


# --- receipts made from a pull request, and the history ---------------------------------


def test_a_merged_pull_request_makes_a_receipt_that_passes(world: World) -> None:
    """No receipt from the agent: the PR's own facts make one, with a fixed id."""
    world.forge.merge(DEMO_REPO, world.pull)
    pull = world.gateway.get_pull(DEMO_REPO, world.pull)
    commits = world.gateway.list_pull_commits(DEMO_REPO, world.pull)
    made = receipt_from_pull(world.task, pull, commits, now=NOW)
    again = receipt_from_pull(world.task, pull, commits, now=NOW)
    assert made == again and made.id == f"{world.task.id}-pr{world.pull}"
    assert set(made.commits) == set(world.commits) and made.branch == world.task.branch
    assert made.summary == world.task.title  # the body only closes the issue
    assert not failed(world.checks(made, final=True))


def test_an_open_pull_request_makes_no_receipt(world: World) -> None:
    """Only a merged pull request stands for work done."""
    pull = world.gateway.get_pull(DEMO_REPO, world.pull)
    with pytest.raises(ValueError, match="not merged"):
        receipt_from_pull(world.task, pull, (), now=NOW)


def test_the_history_gives_back_the_last_checks_of_a_receipt() -> None:
    """Verification events round-trip: the latest batch for one receipt, and which were checked."""
    task = _task()
    receipt = _receipt(task)
    first = (ReceiptCheck(name="diff", outcome=CheckOutcome.PENDING, detail="d"),)
    later = (ReceiptCheck(name="diff", outcome=CheckOutcome.PASSED, detail="ok"),
             ReceiptCheck(name="branch", outcome=CheckOutcome.PASSED, detail="b"))  # fmt: skip
    events: list[TaskEvent] = [verification_event(task, receipt, c, now=NOW) for c in first]
    events += [verification_event(task, receipt, c, now=NOW.replace(minute=5)) for c in later]
    assert recorded_checks(events, receipt.id) == later
    assert recorded_checks(events, "other") == ()
    assert checked_receipts(events) == {receipt.id}


# --- helpers for the pure cases ----------------------------------------------------------


def _task() -> Task:
    task_id = task_id_for(DEMO_REPO, 1)
    return Task(
        id=task_id, repo=RepoName(DEMO_REPO), issue_number=1, title="T", state=TaskState.REVIEW_PENDING,
        agent_id=AgentId("box-1"), lease_generation=1, branch=branch_for(task_id, "T"),
        pr_number=5, created_at=NOW, updated_at=NOW,
    )  # fmt: skip


def _receipt(task: Task) -> Receipt:
    return Receipt(
        id=ReceiptId("r"), task_id=task.id, agent_id=AgentId("box-1"), lease_generation=1,
        pr_number=5, branch=task.branch, submitted_at=NOW,
    )  # fmt: skip


def _pull(task: Task, *, head_repo: str | None) -> PullRequest:
    return PullRequest(
        id=5, number=5, title="T", body="", state=IssueState.OPEN, draft=False, merged=False,
        merged_at=None, merge_commit_sha=None, mergeable=True, head_branch=task.branch,
        head_sha="a" * 40, head_repo=head_repo, base_branch="main", base_repo=DEMO_REPO,
        author="bot", labels=(), html_url="", created_at=NOW, updated_at=NOW, closed_at=None,
    )  # fmt: skip


def _file() -> ChangedFile:
    return ChangedFile(filename="a", status="added", additions=1, deletions=0)
