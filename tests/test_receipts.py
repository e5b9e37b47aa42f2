"""The receipts controller: the plan table, reconciles against the in-memory Forgejo (a verified
receipt completes the task with its write-back, a lying one is refused with its reasons), the
no-op second pass, and the agent's stats."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from controllers.receipts import (
    RESULT_MARKER,
    CountReceipt,
    Observed,
    ReceiptsController,
    plan,
)
from controllers.setup import label_specs
from reconciler.engine.reconcile import (
    ActContext,
    Actuator,
    AddLabels,
    Enqueue,
    SaveTask,
    UpsertComment,
)
from reconciler.fleet.verify import Evidence
from reconciler.forgejo.gateway import ForgejoGateway, marker_tag
from reconciler.forgejo.types import ChangedFile, Commit, Issue, IssueState, PullRequest
from reconciler.keys import Key, issue_key, task_key
from reconciler.models import (
    Agent,
    AgentId,
    CheckOutcome,
    ExecutionMode,
    Receipt,
    ReceiptCheck,
    ReceiptId,
    RepoName,
    Task,
    TaskState,
    branch_for,
    task_id_for,
)
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, ReviewSettings, Settings
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL, ManualClock

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
REPO = "acme/web"
TASK_ID = task_id_for(REPO, 12)
BRANCH = branch_for(TASK_ID, "Fix login")
HEAD = "c" * 40
SETTINGS = Settings(
    forgejo=ForgejoSettings(
        url="https://forgejo.example.org", token=SecretStr("t"), repos=(REPO,), bot_login="fleet"
    )
)
CLOSING = SETTINGS.model_copy(update={"review": ReviewSettings(close_issue=True)})
CI = SETTINGS.model_copy(update={"review": ReviewSettings(required_statuses=("ci/build",))})


def task(state: TaskState = TaskState.REVIEW_PENDING, **changes: object) -> Task:
    base: dict[str, object] = {
        "id": TASK_ID, "repo": REPO, "issue_number": 12, "title": "Fix login", "state": state,
        "branch": BRANCH, "agent_id": "box-1", "lease_generation": 1, "attempt": 1,
        "pr_number": 7, "created_at": NOW, "updated_at": NOW,
    }  # fmt: skip
    return Task.model_validate({**base, **changes})


RECEIPT = Receipt(
    id=ReceiptId("r-1"), task_id=TASK_ID, agent_id=AgentId("box-1"), lease_generation=1,
    pr_number=7, branch=BRANCH, commits=(HEAD,), summary="Fixed the login.", cost_usd=0.25,
    tokens=1200, duration_s=95.0, submitted_at=NOW,
)  # fmt: skip


def pull(*, merged: bool = False) -> PullRequest:
    return PullRequest(
        id=7, number=7, title="Fix login", body="Closes #12",
        state=IssueState.CLOSED if merged else IssueState.OPEN, draft=False, merged=merged,
        merged_at=NOW if merged else None, merge_commit_sha=None, mergeable=True,
        head_branch=BRANCH, head_sha=HEAD, head_repo=REPO, base_branch="main", base_repo=REPO,
        author="fleet", labels=(), html_url="https://forgejo.example.org/acme/web/pulls/7",
        created_at=NOW, updated_at=NOW, closed_at=None,
    )  # fmt: skip


def evidence(*, merged: bool = False, files: int = 1) -> Evidence:
    commit = Commit(sha=HEAD, message="Fix login\n\nmore", author_name="a", author_email="a@x",
                    author_login=None, created=NOW, html_url="https://forgejo.example.org/c")  # fmt: skip
    changed = tuple(
        ChangedFile(filename=f"f{i}.py", status="modified", additions=3, deletions=1)
        for i in range(files)
    )
    return Evidence(pull=pull(merged=merged), pull_commits=(commit,), pull_files=changed)


def issue(*labels: str, state: IssueState = IssueState.OPEN) -> Issue:
    return Issue(
        id=1, number=12, title="Fix login", body="", state=state, labels=labels, author="alice",
        assignees=(), created_at=NOW, updated_at=NOW, closed_at=None, is_pull=False, html_url="",
    )  # fmt: skip


PASSED = (
    ReceiptCheck(name="pull_request", outcome=CheckOutcome.PASSED, detail=f"pull request #7 exists in {REPO}"),
    ReceiptCheck(name="repository", outcome=CheckOutcome.PASSED, detail=f"head and base are branches of {REPO}"),
    ReceiptCheck(name="branch", outcome=CheckOutcome.PASSED, detail=f"the head is the task's branch `{BRANCH}`"),
    ReceiptCheck(name="commits", outcome=CheckOutcome.PASSED, detail="all 1 claimed commit(s) are in the pull request"),
    ReceiptCheck(name="diff", outcome=CheckOutcome.PASSED, detail="changes 1 file(s)"),
)  # fmt: skip


def kinds(actions: tuple[object, ...]) -> list[str]:
    out = []
    for action in actions:
        if isinstance(action, SaveTask):
            moves = ",".join(
                f"{e.from_state}->{e.to_state}" if e.to_state else e.kind for e in action.events
            )
            out.append(f"save:{action.task.state}" + (f":{moves}" if moves else ""))
        elif isinstance(action, AddLabels):
            out.append("add:" + ",".join(action.names))
        elif isinstance(action, Enqueue):
            out.append(f"enqueue:{action.key.controller}")
        elif isinstance(action, CountReceipt):
            out.append(f"count:{action.completed}/{action.errors}")
        else:
            out.append(type(action).__name__)
    return out


V5 = "verification," * 4 + "verification"


@pytest.mark.parametrize(
    ("name", "obs", "settings", "expected"),
    [
        ("nothing to check", Observed(task()), SETTINGS, []),
        (
            "claims of a PR in review hold",
            Observed(task(), RECEIPT, evidence=evidence(), issue=issue()),
            SETTINGS,
            ["RecordEvents", "count:0/0"],
        ),
        (
            "claims checked already",
            Observed(task(), RECEIPT, evidence=evidence(), issue=issue(), recorded=PASSED),
            SETTINGS,
            [],
        ),
        (
            "claims of a PR in review lie",
            Observed(task(), RECEIPT, evidence=evidence(files=0), issue=issue("status/review")),
            SETTINGS,
            [
                "UpsertComment",
                f"save:failed:{V5},review_pending->failed",
                "count:0/1",
                "enqueue:assignment",
            ],
        ),
        (
            "merged and verified",
            Observed(
                task(),
                RECEIPT,
                evidence=evidence(merged=True),
                final=True,
                issue=issue("status/review"),
                recorded=PASSED,
            ),
            SETTINGS,
            [
                "UpsertComment",
                "save:completed:review_pending->completed",
                "count:1/0",
                "enqueue:assignment",
            ],
        ),
        (
            "merged, verified, the issue closed",
            Observed(
                task(),
                RECEIPT,
                evidence=evidence(merged=True),
                final=True,
                issue=issue("status/review"),
                recorded=PASSED,
            ),
            CLOSING,
            [
                "CloseIssue",
                "UpsertComment",
                "save:completed:review_pending->completed",
                "count:1/0",
                "enqueue:assignment",
            ],
        ),
        (
            "merged without a receipt",
            Observed(
                task(),
                RECEIPT,
                generated=True,
                evidence=evidence(merged=True),
                final=True,
                issue=issue("status/done"),
            ),
            SETTINGS,
            [
                "StoreReceipt",
                "UpsertComment",
                f"save:completed:receipt,{V5},review_pending->completed",
                "count:1/0",
                "enqueue:assignment",
            ],
        ),
        (
            "merged, a required status missing",
            Observed(task(), RECEIPT, evidence=evidence(merged=True), final=True, issue=issue()),
            CI,
            [
                "UpsertComment",
                f"save:failed:{V5},verification,review_pending->failed",
                "count:0/1",
                "enqueue:assignment",
            ],
        ),
    ],
)
def test_plan(name: str, obs: Observed, settings: Settings, expected: list[str]) -> None:
    """What the controller decides for each receipt (pure: no I/O)."""
    assert kinds(plan(obs, now=NOW, settings=settings)) == expected


def test_a_lie_found_in_review_fails_the_task_for_a_retry() -> None:
    """Before the merge a refused receipt is worth another attempt; the reason names the check."""
    actions = plan(Observed(task(), RECEIPT, evidence=evidence(files=0), issue=issue()),
                   now=NOW, settings=SETTINGS)  # fmt: skip
    failed = next(a.task for a in actions if isinstance(a, SaveTask))
    assert failed.failure_retryable
    assert (
        failed.failure_reason
        == "receipt r-1 did not hold up: diff: pull request #7 changes no file"
    )
    assert [c.name for c in failed.checks if c.outcome is CheckOutcome.FAILED] == ["diff"]
    comment = next(a for a in actions if isinstance(a, UpsertComment))
    assert comment.marker == RESULT_MARKER and "❌ **Receipt refused" in comment.body
    assert "✗ `diff`: pull request #7 changes no file" in comment.body


def test_after_the_merge_a_refused_receipt_fails_for_good() -> None:
    """The work is merged: another attempt cannot help; a person decides."""
    actions = plan(Observed(task(), RECEIPT, evidence=evidence(merged=True, files=0), final=True,
                            issue=issue()), now=NOW, settings=SETTINGS)  # fmt: skip
    failed = next(a.task for a in actions if isinstance(a, SaveTask))
    assert failed.state is TaskState.FAILED and not failed.failure_retryable
    assert failed.failure_reason.startswith(
        "pull request #7 was merged, but receipt r-1 did not hold up"
    )


def test_the_result_comment_has_everything_a_person_asks_about() -> None:
    """Status line, summary, PR and commit links, files, cost, tokens, duration, attempts."""
    actions = plan(Observed(task(attempt=2, review_count=1), RECEIPT, evidence=evidence(merged=True, files=2),
                            final=True, issue=issue()), now=NOW, settings=SETTINGS)  # fmt: skip
    body = next(a for a in actions if isinstance(a, UpsertComment)).body
    assert body.startswith(
        "✅ **Done**: pull request [#7](https://forgejo.example.org/acme/web/pulls/7) merged"
    )
    for part in ("> Fixed the login.", "[`cccccccccc`](https://forgejo.example.org/c) Fix login",
                 "Files changed (2)", "`f0.py` (+3 −1)", "$0.2500", "1,200", "1 min 35 s",
                 "| Attempts | 2 (1 review round(s) asking for changes) |", f"task `{TASK_ID}`"):  # fmt: skip
        assert part in body, part


def test_the_result_comment_shows_the_tasks_spend_against_its_budget() -> None:
    """Over several runs, or with a budget, the task's own spend is a row of its own."""
    spent = task(attempt=2).model_copy(
        update={"spent_usd": 0.75, "spent_tokens": 3000, "budget_usd": 5.0, "spent_estimated": True}
    )
    actions = plan(Observed(spent, RECEIPT, evidence=evidence(merged=True), final=True,
                            issue=issue()), now=NOW, settings=SETTINGS)  # fmt: skip
    body = next(a for a in actions if isinstance(a, UpsertComment)).body
    assert "| Task spend | $0.75 (estimated), 3,000 tokens of a budget of $5.00 |" in body


def test_agent_text_cannot_hide_a_marker_in_the_result_comment() -> None:
    """A summary with a hidden comment would confuse the bot's marker search: it is defused."""
    sneaky = RECEIPT.model_copy(update={"summary": "done <!-- agent-fleet:task -->"})
    actions = plan(Observed(task(), sneaky, evidence=evidence(merged=True), final=True, issue=issue()),
                   now=NOW, settings=SETTINGS)  # fmt: skip
    body = next(a for a in actions if isinstance(a, UpsertComment)).body
    assert "<!--" not in body


# --- against the in-memory Forgejo ---------------------------------------------------------


@dataclass
class Rig:
    forge: ForgejoSandbox
    gateway: ForgejoGateway
    store: Store
    clock: ManualClock
    settings: Settings
    calls: list[str]
    """Every Forgejo call the gateway made, by operation."""
    enqueued: list[Key] = field(default_factory=list)

    @property
    def controller(self) -> ReceiptsController:
        actuator = Actuator(
            ActContext(gateway=self.gateway, store=self.store, enqueue=self.enqueued.append)
        )
        return ReceiptsController(self.gateway, self.store, actuator, settings=lambda: self.settings,
                                  clock=self.clock)  # fmt: skip

    def in_review(
        self, *, pull_request: bool = True, with_receipt: bool = True
    ) -> tuple[Task, Receipt]:
        """A task in review with its PR and the agent's truthful receipt, as a run leaves them."""
        number = self.forge.create_issue(
            DEMO_REPO, "Fix login", labels=["fleet/task", "status/review"]
        )
        tid = task_id_for(DEMO_REPO, number)
        branch = branch_for(tid, "Fix login")
        sha = self.forge.push(DEMO_REPO, branch, files={"login.py": "ok\n"}, message="Fix login")
        pr = (
            self.forge.open_pull(DEMO_REPO, branch, title="Fix login", body=f"Closes #{number}")
            if pull_request
            else None
        )
        now = self.clock()
        the_task = Task(
            id=tid, repo=RepoName(DEMO_REPO), issue_number=number, title="Fix login",
            state=TaskState.REVIEW_PENDING if pull_request else TaskState.RUNNING,
            agent_id=AgentId("box-1"), lease_generation=1, attempt=1, branch=branch, pr_number=pr,
            created_at=now, updated_at=now,
        )  # fmt: skip
        receipt = Receipt(
            id=ReceiptId(f"{tid}-a1"), task_id=tid, agent_id=AgentId("box-1"), lease_generation=1,
            pr_number=pr, branch=branch, commits=(sha,), summary="Fixed the login.", cost_usd=0.5,
            tokens=1000, duration_s=60.0, submitted_at=now,
        )  # fmt: skip
        self.store.put_task(the_task)
        if with_receipt:
            self.store.put_receipt(receipt)
        return the_task, receipt

    def result_comment(self, number: int) -> str | None:
        tag = marker_tag(RESULT_MARKER)
        found = [c.body for c in self.gateway.list_comments(DEMO_REPO, number) if tag in c.body]
        assert len(found) <= 1, "one result comment per issue"
        return found[0] if found else None


@pytest.fixture
def rig(forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path) -> Iterator[Rig]:
    calls: list[str] = []
    gateway = ForgejoGateway(
        IN_PROCESS_URL,
        forge.admin_token,
        transport=httpx.WSGITransport(app=forge.app),
        on_call=lambda operation, _status: calls.append(operation),
    )
    gateway.ensure_labels(DEMO_REPO, label_specs(SETTINGS))
    store = Store.open(tmp_path / "state")
    store.put_agent(Agent(id=AgentId("box-1"), type="claude-code", mode=ExecutionMode.SSH,
                          registered_at=forge_clock()))  # fmt: skip
    settings = SETTINGS.model_copy(
        update={"forgejo": SETTINGS.forgejo.model_copy(update={"bot_login": "fleet-admin"})}
    )
    yield Rig(forge, gateway, store, forge_clock, settings, calls)
    store.close()
    gateway.close()


def test_a_truthful_receipt_completes_the_task_once_merged(rig: Rig) -> None:
    """In review: claims checked, nothing written to Forgejo. Merged: completed, one result
    comment, the agent's stats, and the issue's key handed to the assignment controller (the
    one writer of status labels); a second pass makes no write and no event."""
    the_task, _ = rig.in_review()
    key = task_key(DEMO_REPO, the_task.id)
    writes = rig.gateway.writes
    rig.controller.reconcile(key)
    assert rig.store.get_task(the_task.id) == the_task, "checking claims leaves the task alone"
    assert rig.gateway.writes == writes
    checked = [e for e in rig.store.events_for(the_task.id) if e.kind == "verification"]
    assert len(checked) == 5 and all(e.data["outcome"] == "passed" for e in checked)

    assert the_task.pr_number is not None
    rig.forge.merge(DEMO_REPO, the_task.pr_number)
    rig.controller.reconcile(key)
    done = rig.store.get_task(the_task.id)
    assert done.state is TaskState.COMPLETED and all(c.passed for c in done.checks)
    assert "status/done" not in rig.gateway.get_issue(DEMO_REPO, the_task.issue_number).labels
    body = rig.result_comment(the_task.issue_number)
    assert body is not None and "✅ **Done**" in body and "login.py" in body
    agent = rig.store.get_agent("box-1")
    assert (agent.stats.tasks_completed, agent.stats.tokens, agent.stats.cost_usd) == (1, 1000, 0.5)
    assert agent.stats.average_duration_s == 60.0
    assert rig.enqueued == [issue_key(DEMO_REPO, the_task.issue_number)]

    writes, events = rig.gateway.writes, len(rig.store.events_for(the_task.id))
    rig.controller.reconcile(key)
    assert rig.gateway.writes == writes and len(rig.store.events_for(the_task.id)) == events
    assert rig.store.get_agent("box-1").stats == agent.stats


def test_a_receipt_in_review_is_checked_against_the_pull_request_as_last_read(rig: Rig) -> None:
    """The review controller read the PR and handed the receipt over: its claims are checked
    against that read, and holding in review they say nothing, so the issue is not read
    either; only the commits and files are. The look that waits for the merge reads the PR."""
    the_task, _ = rig.in_review()
    assert the_task.pr_number is not None
    rig.gateway.get_pull(DEMO_REPO, the_task.pr_number)  # the review controller's read
    del rig.calls[:]
    key = task_key(DEMO_REPO, the_task.id)
    rig.controller.reconcile(key)
    assert sorted(rig.calls) == ["list_pull_commits", "list_pull_files"]
    checked = [e for e in rig.store.events_for(the_task.id) if e.kind == "verification"]
    assert len(checked) == 5 and all(e.data["outcome"] == "passed" for e in checked)

    del rig.calls[:]
    rig.controller.reconcile(key)
    assert rig.calls == ["get_pull"]


def test_a_receipt_is_refused_on_a_read_of_the_pull_request_made_for_it(rig: Rig) -> None:
    """Claims the kept copy of the PR does not bear out may rest on a change whose delivery is
    on its way: the PR is read again before the receipt is refused (and then it is)."""
    the_task, receipt = rig.in_review()
    assert the_task.pr_number is not None
    rig.gateway.get_pull(DEMO_REPO, the_task.pr_number)  # the review controller's read
    stranger = rig.forge.push(DEMO_REPO, "main", files={"x.txt": "x"}, message="not the agent's")
    rig.store.put_receipt(receipt.model_copy(update={"commits": (*receipt.commits, stranger)}))
    del rig.calls[:]
    rig.controller.reconcile(task_key(DEMO_REPO, the_task.id))
    assert rig.calls[0] == "list_pull_commits" and rig.calls.count("get_pull") == 1
    assert rig.store.get_task(the_task.id).state is TaskState.FAILED


def test_a_lying_receipt_is_refused_with_its_reasons_on_the_issue(rig: Rig) -> None:
    """A commit that is not in the PR: failed (retryable), the check and its reason recorded,
    shown on the issue, counted as the agent's error; nothing more on a second pass."""
    the_task, receipt = rig.in_review()
    stranger = rig.forge.push(DEMO_REPO, "main", files={"x.txt": "x"}, message="not the agent's")
    rig.store.put_receipt(receipt.model_copy(update={"commits": (*receipt.commits, stranger)}))
    rig.controller.reconcile(task_key(DEMO_REPO, the_task.id))
    failed = rig.store.get_task(the_task.id)
    assert failed.state is TaskState.FAILED and failed.failure_retryable
    assert (
        f"commits: 1 claimed commit(s) are not in pull request #{the_task.pr_number}"
        in failed.failure_reason
    )
    events = rig.store.events_for(the_task.id)
    refused = [e for e in events if e.kind == "verification" and e.data["outcome"] == "failed"]
    assert [e.data["check"] for e in refused] == ["commits"]
    body = rig.result_comment(the_task.issue_number)
    assert body is not None and "Receipt refused" in body and stranger[:10] in body
    # The label follows through the assignment controller, whose key the failure enqueues.
    assert rig.enqueued == [issue_key(DEMO_REPO, the_task.issue_number)]
    assert rig.store.get_agent("box-1").stats.errors == 1
    writes = rig.gateway.writes
    rig.controller.reconcile(task_key(DEMO_REPO, the_task.id))
    assert rig.gateway.writes == writes and len(rig.store.events_for(the_task.id)) == len(events)


def test_a_merged_pull_request_without_a_receipt_gets_one_made_and_verified(rig: Rig) -> None:
    """The agent sent nothing: a receipt made from the PR is stored, checked, and completes
    the task; the history says where it came from."""
    the_task, _ = rig.in_review(with_receipt=False)
    assert the_task.pr_number is not None
    rig.forge.merge(DEMO_REPO, the_task.pr_number)
    rig.controller.reconcile(task_key(DEMO_REPO, the_task.id))
    assert rig.store.get_task(the_task.id).state is TaskState.COMPLETED
    [made] = rig.store.receipts_for(the_task.id)
    assert made.id == f"{the_task.id}-pr{the_task.pr_number}" and len(made.commits) == 1
    kinds = [e.kind for e in rig.store.events_for(the_task.id)]
    assert kinds[0] == "receipt" and kinds.count("verification") == 5


def test_a_pending_required_status_waits_then_completes(rig: Rig) -> None:
    """ci/build pending on the head: requeued after status_recheck, nothing completed; success
    then completes; the waiting pass repeated writes nothing."""
    rig.settings = rig.settings.model_copy(
        update={"review": ReviewSettings(required_statuses=("ci/build",), status_recheck=30)}
    )
    the_task, _ = rig.in_review()
    assert the_task.pr_number is not None
    head = rig.gateway.get_pull(DEMO_REPO, the_task.pr_number).head_sha
    rig.gateway.create_status(DEMO_REPO, head, context="ci/build", state="pending")
    rig.forge.merge(DEMO_REPO, the_task.pr_number)
    rig.gateway.seen.invalidate(DEMO_REPO, the_task.pr_number)  # as the merge's delivery does
    key = task_key(DEMO_REPO, the_task.id)
    assert rig.controller.reconcile(key).requeue_after == 30
    assert rig.store.get_task(the_task.id).state is TaskState.REVIEW_PENDING
    body = rig.result_comment(the_task.issue_number)
    assert body is not None and "waiting for required statuses" in body
    writes, events = rig.gateway.writes, len(rig.store.events_for(the_task.id))
    assert rig.controller.reconcile(key).requeue_after == 30
    assert rig.gateway.writes == writes and len(rig.store.events_for(the_task.id)) == events
    rig.gateway.create_status(DEMO_REPO, head, context="ci/build", state="success")
    assert rig.controller.reconcile(key).requeue_after is None
    assert rig.store.get_task(the_task.id).state is TaskState.COMPLETED
    assert "✅ **Done**" in (rig.result_comment(the_task.issue_number) or "")


def test_completion_closes_the_issue_when_configured(rig: Rig) -> None:
    """review.close_issue: the issue is closed with the task done."""
    rig.settings = rig.settings.model_copy(update={"review": ReviewSettings(close_issue=True)})
    the_task, _ = rig.in_review()
    assert the_task.pr_number is not None
    rig.forge.merge(DEMO_REPO, the_task.pr_number)
    rig.controller.reconcile(task_key(DEMO_REPO, the_task.id))
    assert rig.gateway.get_issue(DEMO_REPO, the_task.issue_number).state is IssueState.CLOSED


def test_a_receipt_without_a_pull_request_completes_a_running_task(rig: Rig) -> None:
    """Through the API, no PR: the commits are on the named branch, so the task completes."""
    the_task, _ = rig.in_review(pull_request=False)
    rig.controller.reconcile(task_key(DEMO_REPO, the_task.id))
    done = rig.store.get_task(the_task.id)
    assert done.state is TaskState.COMPLETED
    assert "branch `" in (rig.result_comment(the_task.issue_number) or "")


def test_a_receipt_without_a_pull_request_naming_a_missing_branch_fails_the_task(rig: Rig) -> None:
    """The branch it names does not exist: refused, the task failed with the reason."""
    the_task, receipt = rig.in_review(pull_request=False)
    rig.store.put_receipt(receipt.model_copy(update={"branch": "task/none"}))
    rig.controller.reconcile(task_key(DEMO_REPO, the_task.id))
    failed = rig.store.get_task(the_task.id)
    assert failed.state is TaskState.FAILED
    assert "there is no branch `task/none`" in failed.failure_reason


def test_a_task_completed_before_verification_is_verified_and_written_back(rig: Rig) -> None:
    """Completed on the agent's word (no result comment yet): checked, the comment written."""
    the_task, _ = rig.in_review(pull_request=False)
    rig.store.put_task(the_task.model_copy(update={"state": TaskState.COMPLETED}))
    rig.controller.reconcile(task_key(DEMO_REPO, the_task.id))
    assert "✅ **Done**" in (rig.result_comment(the_task.issue_number) or "")
    assert rig.store.get_agent("box-1").stats.tasks_completed == 1
    writes = rig.gateway.writes
    rig.controller.reconcile(task_key(DEMO_REPO, the_task.id))
    assert rig.gateway.writes == writes
