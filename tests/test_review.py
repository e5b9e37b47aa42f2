"""The review controller: the plan table, reconciles against the in-memory Forgejo, the no-op
second pass, and the placement of a task sent back by a review."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from controllers.review import (
    Link,
    Observed,
    ReviewController,
    closing_references,
    next_check,
    plan,
)
from reconciler.engine.reconcile import ActContext, Actuator, Enqueue, SaveTask
from reconciler.fleet.placement import place
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import IssueState, PullRequest, Review, ReviewState
from reconciler.keys import Key, branch_key, issue_key, pull_key, task_key
from reconciler.models import (
    Agent,
    AgentId,
    ExecutionMode,
    Receipt,
    ReceiptId,
    RepoName,
    Task,
    TaskState,
    branch_for,
    task_id_for,
)
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, RetriesSettings, Settings
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL, ManualClock

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
REPO = "acme/web"
TASK_ID = task_id_for(REPO, 12)
BRANCH = branch_for(TASK_ID, "Fix login")
HEAD = "c" * 40
OLD_HEAD = "b" * 40
SETTINGS = Settings(
    forgejo=ForgejoSettings(
        url="https://forgejo.example.org", token=SecretStr("t"), repos=(REPO,), bot_login="fleet"
    )
)


def task(state: TaskState = TaskState.REVIEW_PENDING, **changes: object) -> Task:
    base: dict[str, object] = {
        "id": TASK_ID, "repo": REPO, "issue_number": 12, "title": "Fix login", "state": state,
        "branch": BRANCH, "agent_id": "box-1", "lease_generation": 1, "attempt": 1,
        "pr_number": 7, "created_at": NOW, "updated_at": NOW, "last_activity_at": NOW,
    }  # fmt: skip
    return Task.model_validate({**base, **changes})


def pull(*, state: IssueState = IssueState.OPEN, merged: bool = False, head: str = BRANCH,
         number: int = 7, body: str = "Closes #12", head_sha: str = HEAD) -> PullRequest:  # fmt: skip
    return PullRequest(
        id=number, number=number, title="Fix login", body=body, state=state, draft=False,
        merged=merged, merged_at=NOW if merged else None, merge_commit_sha=None, mergeable=True,
        head_branch=head, head_sha=head_sha, head_repo=REPO, base_branch="main", base_repo=REPO,
        author="fleet", labels=(), html_url="", created_at=NOW, updated_at=NOW, closed_at=None,
    )  # fmt: skip


def review(rid: int, state: ReviewState, *, author: str = "alice", body: str = "Please add tests",
           commit: str = HEAD, dismissed: bool = False) -> Review:  # fmt: skip
    return Review(id=rid, state=state, body=body, author=author, commit_id=commit,
                  submitted_at=NOW, dismissed=dismissed)  # fmt: skip


REJECT = review(31, ReviewState.REQUEST_CHANGES)


def observed(the_pull: PullRequest | None, the_task: Task | None, **changes: object) -> Observed:
    fields: dict[str, object] = {"link": Link.BRANCH, "trusted_reviewers": frozenset({"alice"})}
    fields.update(changes)
    return Observed(REPO, the_pull, the_task, **fields)  # type: ignore[arg-type]


def kinds(actions: tuple[object, ...]) -> list[str]:
    out = []
    for action in actions:
        if isinstance(action, SaveTask):
            moves = ",".join(
                f"{e.from_state}->{e.to_state}" if e.to_state else e.kind for e in action.events
            )
            out.append(f"save:{action.task.state}" + (f":{moves}" if moves else ""))
        elif isinstance(action, Enqueue):
            out.append(f"enqueue:{action.key.controller}")
        else:
            out.append(type(action).__name__)
    return out


ROUNDS_USED = task(review_count=SETTINGS.retries.max_review_rounds)
REQUEUE = SETTINGS.model_copy(update={"retries": RetriesSettings(requeue_closed_unmerged=True)})


@pytest.mark.parametrize(
    ("name", "obs", "expected"),
    [
        ("no task for this key", observed(pull(), None), []),
        (
            "a completed task is left alone",
            observed(pull(merged=True), task(TaskState.COMPLETED)),
            [],
        ),
        ("in review, nothing new", observed(pull(), task()), []),
        (
            "a new tip is activity",
            observed(None, task(), branch_tip=HEAD),
            ["save:review_pending:push"],
        ),
        (
            "the same tip again is nothing",
            observed(None, task(branch_head=HEAD), branch_tip=HEAD),
            [],
        ),
        (
            "a tip the run reported is nothing",
            observed(None, task(), branch_tip=HEAD, reported_commits=frozenset({HEAD})),
            [],
        ),
        (
            "a receipt not yet checked goes to the receipts controller",
            observed(pull(), task(), unchecked_receipt=True),
            ["enqueue:receipts"],
        ),
        (
            "changes requested: back to the queue",
            observed(pull(), task(), reviews=(REJECT,)),
            ["save:created:review,review_pending->created", "enqueue:assignment"],
        ),
        (
            "a seen review is not acted on again",
            observed(pull(), task(reviews_seen=(31,)), reviews=(REJECT,)),
            [],
        ),
        (
            "a dismissed review does not count",
            observed(
                pull(), task(), reviews=(review(31, ReviewState.REQUEST_CHANGES, dismissed=True),)
            ),
            [],
        ),
        (
            "an untrusted reviewer is recorded, not obeyed",
            observed(pull(), task(), reviews=(REJECT,), trusted_reviewers=frozenset()),
            ["save:review_pending:review"],
        ),
        (
            "a change request on an older head is answered",
            observed(
                pull(), task(), reviews=(review(31, ReviewState.REQUEST_CHANGES, commit=OLD_HEAD),)
            ),
            ["save:review_pending:review"],
        ),
        (
            "an approval is recorded once",
            observed(pull(), task(), reviews=(review(32, ReviewState.APPROVED, body=""),)),
            ["save:review_pending:review"],
        ),
        (
            "past the last round the task fails",
            observed(pull(), ROUNDS_USED, reviews=(REJECT,)),
            ["save:failed:review,review_pending->failed", "enqueue:assignment"],
        ),
        (
            "merged goes to the receipts controller",
            observed(pull(state=IssueState.CLOSED, merged=True), task()),
            ["enqueue:receipts"],
        ),
        (
            "merged while running too",
            observed(pull(state=IssueState.CLOSED, merged=True), task(TaskState.RUNNING)),
            ["enqueue:receipts"],
        ),
        (
            "closed unmerged fails",
            observed(pull(state=IssueState.CLOSED), task()),
            ["save:failed:review_pending->failed", "enqueue:assignment"],
        ),
        (
            "closed unmerged, failed already",
            observed(pull(state=IssueState.CLOSED), task(TaskState.FAILED)),
            [],
        ),
        ("someone else's PR", observed(pull(number=8), task()), []),
        (
            "a PR the receipt names does not exist",
            observed(None, task(), link=Link.RECEIPT),
            ["enqueue:receipts"],
        ),
        (
            "running, the run reports itself",
            observed(
                pull(),
                task(TaskState.RUNNING, last_activity_at=NOW - timedelta(hours=1)),
                run_in_progress=True,
            ),
            [],
        ),
        ("running, within the receipt grace", observed(pull(), task(TaskState.RUNNING)), []),
        (
            "running, no receipt past the grace",
            observed(pull(), task(TaskState.RUNNING, last_activity_at=NOW - timedelta(hours=1))),
            ["save:review_pending:running->review_pending", "enqueue:assignment"],
        ),
        (
            "running, no new work since changes were asked",
            observed(
                pull(),
                task(
                    TaskState.RUNNING,
                    sent_back_head=HEAD,
                    last_activity_at=NOW - timedelta(hours=1),
                ),
            ),
            [],
        ),
    ],
)
def test_plan(name: str, obs: Observed, expected: list[str]) -> None:
    """What the controller decides for each pull request, review and task (pure: no I/O)."""
    assert kinds(plan(obs, now=NOW, settings=SETTINGS)) == expected


def saved(actions: tuple[object, ...]) -> Task:
    return next(a.task for a in actions if isinstance(a, SaveTask))


def test_a_change_request_sends_the_task_back_to_its_agent_with_the_review() -> None:
    """review_count + 1, the review's text as feedback, the agent remembered, the head noted."""
    second = review(33, ReviewState.REQUEST_CHANGES, author="bob", body="And a changelog entry")
    actions = plan(observed(pull(), task(), reviews=(REJECT, second),
                            trusted_reviewers=frozenset({"alice", "bob"})), now=NOW, settings=SETTINGS)  # fmt: skip
    back = saved(actions)
    assert back.state is TaskState.CREATED and back.agent_id is None
    assert back.previous_agent == "box-1" and back.review_count == 1
    assert back.review_feedback == (
        "alice requested changes:\n\nPlease add tests",
        "bob requested changes:\n\nAnd a changelog entry",
    )
    assert back.sent_back_head == HEAD and back.reviews_seen == (31, 33)
    assert back.lease_generation == 1, "the next assignment bumps the lease past the old one"
    save = next(a for a in actions if isinstance(a, SaveTask))
    assert [e.actor for e in save.events] == ["forgejo:alice", "forgejo:bob", "forgejo:bob"]
    assert "review round 1 of 3" in save.events[-1].reason
    assert Enqueue(issue_key(REPO, 12)) in actions


def test_past_the_review_limit_the_task_fails_with_that_reason_for_good() -> None:
    """Not retryable: a person decides what happens next."""
    failed = saved(
        plan(observed(pull(), ROUNDS_USED, reviews=(REJECT,)), now=NOW, settings=SETTINGS)
    )
    assert failed.state is TaskState.FAILED and not failed.failure_retryable
    assert failed.review_count == 4
    assert "changes were requested in 4 review rounds" in failed.failure_reason
    assert "retries.max_review_rounds" in failed.failure_reason


def test_a_pull_request_closed_unmerged_is_requeued_when_configured() -> None:
    """requeue_closed_unmerged: back to the queue, the dead PR forgotten."""
    actions = plan(observed(pull(state=IssueState.CLOSED), task()), now=NOW, settings=REQUEUE)
    back = saved(actions)
    assert back.state is TaskState.CREATED and back.pr_number is None
    closed = saved(
        plan(observed(pull(state=IssueState.CLOSED), task()), now=NOW, settings=SETTINGS)
    )
    assert closed.failure_reason == "pull request #7 was closed without being merged"
    assert not closed.failure_retryable


def test_a_pull_request_found_by_its_body_lends_the_task_its_branch() -> None:
    """`Closes #12` from another branch: the PR is the task's, and its head the task's branch."""
    obs = observed(pull(head="fix-login-by-hand", number=9), task(pr_number=None), link=Link.BODY)
    adopted = saved(plan(obs, now=NOW, settings=SETTINGS))
    assert adopted.pr_number == 9 and adopted.branch == "fix-login-by-hand"


def test_a_push_moves_last_activity() -> None:
    """The tip is remembered, so the same push delivered again writes nothing."""
    pushed = saved(plan(observed(None, task(last_activity_at=NOW - timedelta(hours=2)),
                                 branch_tip=HEAD), now=NOW, settings=SETTINGS))  # fmt: skip
    assert pushed.last_activity_at == NOW and pushed.branch_head == HEAD


def test_the_receipt_grace_is_looked_at_again_when_it_ends() -> None:
    """A running task with an open PR: requeued for the moment its grace ends."""
    obs = observed(pull(), task(TaskState.RUNNING, last_activity_at=NOW - timedelta(seconds=20)))
    left = next_check(obs, obs.task, now=NOW, settings=SETTINGS)
    assert left == pytest.approx(SETTINGS.review.receipt_grace - 20 + 0.5)
    assert next_check(observed(pull(), task()), task(), now=NOW, settings=SETTINGS) is None


def test_a_push_through_the_branch_key_delays_the_pull_request_keys_grace() -> None:
    """A branch key has no PR: it moves last_activity_at and asks for no look of its own; the PR
    key, looking at the end of the old grace, sees the later push and waits for the rest."""
    grace = SETTINGS.review.receipt_grace
    running = task(TaskState.RUNNING, pr_number=None, last_activity_at=NOW)
    first = observed(pull(head_sha=OLD_HEAD), running)
    assert next_check(first, running, now=NOW, settings=SETTINGS) == pytest.approx(grace + 0.5)
    pushed_at = NOW + timedelta(seconds=grace / 2)
    on_push = observed(None, running, branch_tip=HEAD)
    pushed = saved(plan(on_push, now=pushed_at, settings=SETTINGS))
    assert pushed.last_activity_at == pushed_at and pushed.state is TaskState.RUNNING
    assert next_check(on_push, pushed, now=pushed_at, settings=SETTINGS) is None
    old_end = NOW + timedelta(seconds=grace + 0.5)
    again = observed(pull(), pushed, branch_tip=HEAD)
    assert kinds(plan(again, now=old_end, settings=SETTINGS)) == [
        "save:running:pull_request"  # the PR is recorded; no move to review yet
    ]
    waits = next_check(again, pushed, now=old_end, settings=SETTINGS)
    assert waits == pytest.approx(grace / 2)
    end = pushed_at + timedelta(seconds=grace)
    assert kinds(plan(again, now=end, settings=SETTINGS)) == [
        "save:review_pending:pull_request,running->review_pending",
        "enqueue:assignment",
    ]


def test_closing_references_are_read_from_the_body() -> None:
    """Closes/Fixes/Resolves #N, any case, same repository only; each number once."""
    body = "Closes #12. Also fixes: #13 and RESOLVES #12\nsee other/repo#14, closes acme#15 #16"
    assert closing_references(body) == (12, 13)
    assert closing_references("Fixed #3, resolved #4, close #5") == (3, 4, 5)


# --- placement of a task sent back by a review ------------------------------------------------


def _agent(agent_id: str, **changes: object) -> Agent:
    base: dict[str, object] = {"id": agent_id, "type": "claude-code", "roles": ("developer",),
                               "mode": ExecutionMode.SSH, "registered_at": NOW, "max_concurrency": 2}  # fmt: skip
    return Agent.model_validate({**base, **changes})


def test_a_task_sent_back_goes_to_its_previous_agent_when_it_has_a_free_slot() -> None:
    """Placement prefers the agent that did the work, even when another is less loaded."""
    back = task(TaskState.CREATED, agent_id=None, previous_agent="box-2", pr_number=7)
    busy = task(TaskState.RUNNING, id=task_id_for(REPO, 13), issue_number=13, agent_id="box-2")
    agents = [_agent("box-1"), _agent("box-2")]
    assert place(back, agents=agents, tasks=[back, busy], now=NOW).agent == agents[1]
    # Without a free slot, or without the role, the least loaded agent that fits takes it.
    full = [_agent("box-1"), _agent("box-2", max_concurrency=1)]
    assert place(back, agents=full, tasks=[back, busy], now=NOW).agent == full[0]
    unfit = [_agent("box-1"), _agent("box-2", roles=("tester",))]
    assert place(back.model_copy(update={"required_role": "developer"}), agents=unfit,
                 tasks=[back], now=NOW).agent == unfit[0]  # fmt: skip


# --- against the in-memory Forgejo ---------------------------------------------------------


@dataclass
class Rig:
    forge: ForgejoSandbox
    gateway: ForgejoGateway
    store: Store
    controller: ReviewController
    clock: ManualClock
    enqueued: list[Key] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    """The gateway's operations, in order (its ``on_call``)."""

    def review_task(
        self, state: TaskState = TaskState.REVIEW_PENDING, *, recorded: bool = True
    ) -> tuple[Task, int]:
        """A task with its PR open, as a run leaves it (``recorded``: the task knows its PR)."""
        number = self.forge.create_issue(DEMO_REPO, "Fix login")
        tid = task_id_for(DEMO_REPO, number)
        branch = branch_for(tid, "Fix login")
        sha = self.forge.push(DEMO_REPO, branch, files={"login.py": "ok\n"}, message="Fix login")
        pr = self.forge.open_pull(DEMO_REPO, branch, title="Fix login", body=f"Closes #{number}")
        now = self.clock()
        the_task = Task(
            id=tid, repo=RepoName(DEMO_REPO), issue_number=number, title="Fix login",
            state=state, agent_id=AgentId("box-1"), lease_generation=1,
            attempt=1, branch=branch, pr_number=pr if recorded else None, branch_head=sha,
            created_at=now, updated_at=now, last_activity_at=now,
        )  # fmt: skip
        self.store.put_task(the_task)
        self.calls.clear()
        return the_task, pr


@pytest.fixture
def rig(forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path,
        forge_http: httpx.Client) -> Iterator[Rig]:  # fmt: skip
    forge.create_user("alice")
    forge.create_user("mallory")
    assert (
        forge_http.put(
            f"/repos/{DEMO_REPO}/collaborators/alice", json={"permission": "write"}
        ).status_code
        == 204
    )
    calls: list[str] = []
    gateway = ForgejoGateway(
        IN_PROCESS_URL,
        forge.admin_token,
        transport=httpx.WSGITransport(app=forge.app),
        on_call=lambda operation, status: calls.append(operation),
    )
    store = Store.open(tmp_path / "state")
    enqueued: list[Key] = []
    actuator = Actuator(ActContext(gateway=gateway, store=store, enqueue=enqueued.append))
    controller = ReviewController(
        gateway, store, actuator, settings=lambda: SETTINGS, clock=forge_clock
    )
    yield Rig(forge, gateway, store, controller, forge_clock, enqueued, calls)
    store.close()
    gateway.close()


def test_a_change_request_in_forgejo_sends_the_task_back_once(rig: Rig) -> None:
    """Reconcile after REQUEST_CHANGES: requeued with the review; a second pass writes nothing."""
    the_task, pr = rig.review_task()
    rig.forge.review(
        DEMO_REPO, pr, "REQUEST_CHANGES", body="Handle empty passwords", author="alice"
    )
    rig.controller.reconcile(pull_key(DEMO_REPO, pr))
    back = rig.store.get_task(the_task.id)
    assert back.state is TaskState.CREATED and back.review_count == 1
    assert back.review_feedback == ("alice requested changes:\n\nHandle empty passwords",)
    assert issue_key(DEMO_REPO, the_task.issue_number) in rig.enqueued
    writes, events = rig.gateway.writes, len(rig.store.events_for(the_task.id))
    rig.controller.reconcile(pull_key(DEMO_REPO, pr))
    rig.controller.reconcile(branch_key(DEMO_REPO, the_task.branch))
    assert rig.gateway.writes == writes == 0, "the review controller never writes to Forgejo"
    assert len(rig.store.events_for(the_task.id)) == events
    assert rig.store.get_task(the_task.id) == back


def test_a_change_request_by_someone_without_write_access_is_not_obeyed(rig: Rig) -> None:
    """mallory may read but not push: her review is recorded, the task stays in review."""
    the_task, pr = rig.review_task()
    rig.forge.review(DEMO_REPO, pr, "REQUEST_CHANGES", body="Delete everything", author="mallory")
    rig.controller.reconcile(pull_key(DEMO_REPO, pr))
    stays = rig.store.get_task(the_task.id)
    assert stays.state is TaskState.REVIEW_PENDING and stays.review_feedback == ()
    assert "may not push" in rig.store.events_for(the_task.id)[-1].reason


def test_a_merged_pull_request_hands_the_task_to_the_receipts_controller(rig: Rig) -> None:
    """Merged: the receipts key is queued; the task itself is not touched here."""
    the_task, pr = rig.review_task()
    rig.forge.merge(DEMO_REPO, pr)
    rig.controller.reconcile(pull_key(DEMO_REPO, pr))
    assert rig.enqueued == [task_key(DEMO_REPO, the_task.id)]
    assert rig.store.get_task(the_task.id) == the_task


def test_a_push_to_the_task_branch_updates_last_activity(rig: Rig) -> None:
    """A new tip on task/… of a running task: last_activity_at is now; the same push again
    writes nothing."""
    the_task, _ = rig.review_task(TaskState.RUNNING)
    rig.clock.advance(600)
    tip = rig.forge.push(DEMO_REPO, the_task.branch, files={"login.py": "better\n"}, message="More")
    rig.controller.reconcile(branch_key(DEMO_REPO, the_task.branch))
    moved = rig.store.get_task(the_task.id)
    assert moved.last_activity_at == rig.clock() and moved.branch_head == tip
    rig.controller.reconcile(branch_key(DEMO_REPO, the_task.branch))
    assert rig.store.get_task(the_task.id) == moved


def test_a_branch_key_reads_only_the_tip(rig: Rig) -> None:
    """A push's key reads the branch, never the task's PR (its own key covers it), for a
    running task whose PR is open but not yet recorded."""
    the_task, _ = rig.review_task(TaskState.RUNNING, recorded=False)
    rig.clock.advance(60)
    tip = rig.forge.push(DEMO_REPO, the_task.branch, files={"a.py": "a\n"}, message="a")
    rig.controller.reconcile(branch_key(DEMO_REPO, the_task.branch))
    assert rig.calls == ["get_branch"]
    moved = rig.store.get_task(the_task.id)
    assert moved.branch_head == tip and moved.last_activity_at == rig.clock()
    assert moved.pr_number is None and moved.state is TaskState.RUNNING


def test_a_branch_key_of_a_task_in_review_with_its_pull_request_reads_nothing(rig: Rig) -> None:
    """In review with its PR recorded, or finished, a task's branch key reads nothing: a push
    to the PR's head comes with a `pull_request` delivery, and the PR's key records the tip
    and the activity from the PR it reads."""
    the_task, pr = rig.review_task()
    rig.clock.advance(60)
    tip = rig.forge.push(DEMO_REPO, the_task.branch, files={"a.py": "b\n"}, message="b")
    rig.controller.reconcile(branch_key(DEMO_REPO, the_task.branch))
    assert rig.calls == [] and rig.store.get_task(the_task.id) == the_task
    rig.controller.reconcile(pull_key(DEMO_REPO, pr))
    assert "get_branch" not in rig.calls
    moved = rig.store.get_task(the_task.id)
    assert moved.branch_head == tip and moved.last_activity_at == rig.clock()
    done = moved.changed(now=rig.clock(), state=TaskState.COMPLETED)
    rig.store.put_task(done)
    rig.calls.clear()
    rig.forge.push(DEMO_REPO, the_task.branch, files={"a.py": "c\n"}, message="c")
    rig.controller.reconcile(branch_key(DEMO_REPO, the_task.branch))
    assert rig.calls == [] and rig.store.get_task(the_task.id) == done


def test_a_pull_request_key_reports_its_task_branchs_tip(rig: Rig) -> None:
    """A push whose own delivery was lost: the PR's key sees the new head, records the tip and
    the activity from the PR it reads anyway (no branch read, no PR lookup); a second pass
    writes nothing."""
    the_task, pr = rig.review_task(TaskState.RUNNING)
    rig.clock.advance(60)
    tip = rig.forge.push(DEMO_REPO, the_task.branch, files={"login.py": "v2\n"}, message="v2")
    result = rig.controller.reconcile(pull_key(DEMO_REPO, pr))
    assert "get_branch" not in rig.calls and "find_pull_by_head" not in rig.calls
    assert rig.calls == ["get_pull"]
    moved = rig.store.get_task(the_task.id)
    assert moved.branch_head == tip and moved.last_activity_at == rig.clock()
    assert rig.store.events_for(the_task.id)[-1].data == {"head": tip}
    # The grace counts from this push.
    assert result.requeue_after == pytest.approx(SETTINGS.review.receipt_grace + 0.5)
    rig.controller.reconcile(pull_key(DEMO_REPO, pr))
    assert rig.store.get_task(the_task.id) == moved


def test_a_tip_the_receipt_names_is_not_counted_again_by_the_pull_request_key(rig: Rig) -> None:
    """The agent's receipt reported the push: the PR key's tip is not a second activity."""
    the_task, pr = rig.review_task()
    tip = rig.forge.push(DEMO_REPO, the_task.branch, files={"login.py": "v2\n"}, message="v2")
    rig.store.put_receipt(Receipt(id=ReceiptId("r"), task_id=the_task.id, agent_id=AgentId("box-1"),
                                  lease_generation=1, pr_number=pr, commits=(tip,),
                                  submitted_at=rig.clock()))  # fmt: skip
    events = len(rig.store.events_for(the_task.id))
    rig.controller.reconcile(pull_key(DEMO_REPO, pr))
    assert rig.store.get_task(the_task.id).branch_head == the_task.branch_head
    assert len(rig.store.events_for(the_task.id)) == events


def test_a_closed_pull_request_reports_no_tip(rig: Rig) -> None:
    """Only an open PR's head is its branch's tip: a closed one's key leaves the branch alone."""
    the_task, pr = rig.review_task(TaskState.FAILED)
    rig.forge.push(DEMO_REPO, the_task.branch, files={"login.py": "v2\n"}, message="v2")
    rig.gateway.edit_issue(DEMO_REPO, pr, state="closed")
    rig.controller.reconcile(pull_key(DEMO_REPO, pr))
    assert rig.store.get_task(the_task.id) == the_task


def test_a_task_rebuilt_in_review_finds_its_pull_request_by_its_branch(rig: Rig) -> None:
    """In review with no PR recorded (rebuilt from its status label; the resync names it by
    its branch): the branch key looks its PR up, records it and, merged, hands it on."""
    the_task, pr = rig.review_task(recorded=False)
    rig.forge.merge(DEMO_REPO, pr)
    rig.controller.reconcile(branch_key(DEMO_REPO, the_task.branch))
    # (and the merged PR's reviews, which belong in the history)
    assert rig.calls == ["get_branch", "find_pull_by_head", "list_reviews"]
    assert rig.store.get_task(the_task.id).pr_number == pr
    assert rig.enqueued == [task_key(DEMO_REPO, the_task.id)]


def test_a_branch_or_pull_request_of_no_task_plans_nothing(rig: Rig) -> None:
    """A person's feature branch and its PR are not the fleet's business."""
    rig.forge.push(DEMO_REPO, "feature", files={"a.txt": "a"}, message="a")
    pr = rig.forge.open_pull(DEMO_REPO, "feature", title="Feature")
    rig.controller.reconcile(pull_key(DEMO_REPO, pr))
    rig.controller.reconcile(branch_key(DEMO_REPO, "task/1-00000000-nothing"))
    assert rig.store.list_tasks() == [] and rig.enqueued == []


def test_a_receipt_naming_a_missing_pull_request_is_handed_to_the_receipts_controller(
    rig: Rig,
) -> None:
    """The receipt says PR #99; there is none: the receipts controller must refuse it."""
    the_task, _ = rig.review_task()
    rig.store.put_task(the_task.model_copy(update={"pr_number": 99}))
    rig.store.put_receipt(Receipt(id=ReceiptId("r"), task_id=the_task.id, agent_id=AgentId("box-1"),
                                  lease_generation=1, pr_number=99, submitted_at=rig.clock()))  # fmt: skip
    rig.controller.reconcile(pull_key(DEMO_REPO, 99))
    assert rig.enqueued == [task_key(DEMO_REPO, the_task.id)]


def test_a_malformed_review_key_is_an_error(rig: Rig) -> None:
    """A key that names neither a number nor a branch is a bug, said as such."""
    with pytest.raises(ValueError, match="names neither"):
        rig.controller.reconcile(Key("review", DEMO_REPO, "seven"))
