"""Holds: the pure rules that say why a task may not be placed now, and the assignment plan
that keeps them on the task (held: not placed, no attempt spent, the reason said)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from controllers.assignment import Dispatch, Observed, plan, status_comment
from reconciler.engine.reconcile import Enqueue, SaveTask, comment_digest
from reconciler.fleet.holdfacts import HoldFacts
from reconciler.fleet.holds import (
    Hold,
    HoldKind,
    IssueRef,
    always_needs_approval,
    approval_hold,
    approver,
    dependency_hold,
    find_cycle,
    first_hold,
    label_hold,
)
from reconciler.forgejo.types import Issue, IssueState, LabelEvent
from reconciler.keys import issue_key
from reconciler.models import (
    Agent,
    AgentId,
    AgentStatus,
    ExecutionMode,
    Task,
    TaskState,
    task_id_for,
)
from reconciler.settings import ApprovalSettings, ForgejoSettings, LabelsSettings, Settings

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
REPO = "acme/web"
SETTINGS = Settings(
    forgejo=ForgejoSettings(
        url="https://forgejo.example.org", token=SecretStr("t"), repos=(REPO,), bot_login="fleet"
    )
)
VOCAB = LabelsSettings()


def issue(*labels: str, author: str = "alice", state: IssueState = IssueState.OPEN) -> Issue:
    return Issue(
        id=1,
        number=12,
        title="Fix login",
        body="",
        state=state,
        labels=labels,
        author=author,
        assignees=(),
        created_at=NOW,
        updated_at=NOW,
        closed_at=None,
        is_pull=False,
        html_url="",
    )


def task(**changes: object) -> Task:
    base: dict[str, object] = {
        "id": task_id_for(REPO, 12),
        "repo": REPO,
        "issue_number": 12,
        "title": "Fix login",
        "branch": f"task/{task_id_for(REPO, 12)}-fix-login",
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Task.model_validate({**base, **changes})


def ssh_agent() -> Agent:
    return Agent(
        id=AgentId("box"),
        type="claude-code",
        max_concurrency=1,
        status=AgentStatus.ONLINE,
        mode=ExecutionMode.SSH,
        registered_at=NOW,
    )


def event(label: str, actor: str, *, added: bool = True, n: int = 1) -> LabelEvent:
    return LabelEvent(id=n, label=label, added=added, actor=actor, created_at=NOW)


def ref(number: int, repo: str = REPO) -> IssueRef:
    return IssueRef(repo, number)


def saved(actions: tuple[object, ...]) -> Task:
    found = [a for a in actions if isinstance(a, SaveTask)]
    assert found, f"no SaveTask in {actions}"
    return found[-1].task


# --- the rules ------------------------------------------------------------------------------


def test_the_hold_label_holds_and_says_which_label() -> None:
    """fleet/hold (as configured) holds the task; without it there is no label hold."""
    assert label_hold(("fleet/task", "fleet/hold"), VOCAB) == Hold(
        HoldKind.LABEL, "on hold (fleet/hold)"
    )
    assert label_hold(("fleet/task",), VOCAB) is None


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ((), None),
        ((event("fleet/approved", "mallory"),), None),  # the author's own approval
        ((event("fleet/approved", "carol"),), "carol"),
        ((event("fleet/approved", "eve"),), None),  # not trusted
        ((event("fleet/approved", "carol"), event("fleet/approved", "x", added=False)), None),
        (
            (
                event("fleet/approved", "carol"),
                event("fleet/approved", "x", added=False),
                event("fleet/approved", "mallory"),
            ),
            None,
        ),
        ((event("fleet/task", "carol"),), None),  # another label
    ],
)
def test_only_a_standing_approval_by_a_trusted_user_other_than_the_author_counts(
    events: tuple[LabelEvent, ...], expected: str | None
) -> None:
    """The author's own approval, an untrusted user's, and one removed since do not count."""
    trusted = {"carol", "mallory"}.__contains__  # mallory, the author, is trusted elsewhere
    got = approver(events, label="fleet/approved", author="mallory", trusted=trusted)
    assert got == expected


def test_an_untrusted_author_without_approval_waits_for_a_maintainer() -> None:
    """The reason names the author and the label a maintainer adds."""
    held = approval_hold(author="bob", author_trusted=False, approved_by=None, vocabulary=VOCAB)
    assert held == Hold(
        HoldKind.APPROVAL,
        "waiting for a maintainer's approval: the issue's author bob is not trusted; "
        "a maintainer adds fleet/approved",
    )
    assert (
        approval_hold(author="bob", author_trusted=False, approved_by="carol", vocabulary=VOCAB)
        is None
    )
    assert (
        approval_hold(author="alice", author_trusted=True, approved_by=None, vocabulary=VOCAB)
        is None
    )


def test_open_dependencies_are_named_and_other_repos_are_spelled_out() -> None:
    """#12 within the repo, org/lib#3 from another one."""
    held = dependency_hold(REPO, (ref(12), ref(3, "org/lib")), None)
    assert held == Hold(HoldKind.DEPENDENCY, "waiting for #12, org/lib#3: open")
    assert dependency_hold(REPO, (), None) is None


def test_the_shortest_cycle_back_to_the_issue_is_found() -> None:
    """1 → 2 → 3 → 1 (and a longer way round) is reported as the short loop, start first."""
    edges = {
        ref(1): (ref(2), ref(5)),
        ref(2): (ref(3),),
        ref(3): (ref(1),),
        ref(5): (ref(6),),
        ref(6): (ref(2),),
    }
    assert find_cycle(ref(1), edges) == (ref(1), ref(2), ref(3), ref(1))
    assert find_cycle(ref(1), {ref(1): (ref(2),), ref(2): ()}) is None
    # A cycle that does not pass through the issue is the others' to report.
    assert find_cycle(ref(1), {ref(1): (ref(2),), ref(2): (ref(3),), ref(3): (ref(2),)}) is None
    held = dependency_hold(REPO, (ref(2),), (ref(1), ref(2), ref(1)))
    assert held is not None and held.kind == HoldKind.CYCLE
    assert held.reason.startswith("dependency cycle: #1 → #2 → #1")


def test_the_first_hold_given_wins_and_none_is_no_hold() -> None:
    """Precedence is the order the rules are asked in; a further kind only joins the list."""
    budget = Hold("budget", "daily budget spent")
    assert first_hold(None, budget, Hold(HoldKind.LABEL, "x")) == budget
    assert first_hold(None, None) is None


# --- the plan -------------------------------------------------------------------------------


def test_a_held_task_is_not_placed_and_says_why_with_a_waiting_event() -> None:
    """An open dependency: no Dispatch though an agent is free; wait reason and event set."""
    observed = Observed(
        repo=REPO,
        number=12,
        issue=issue("fleet/task"),
        task=task(),
        agents=(ssh_agent(),),
        holds=HoldFacts(open_dependencies=(ref(7),)),
    )
    actions = plan(observed, now=NOW, settings=SETTINGS)
    assert not any(isinstance(a, Dispatch) for a in actions)
    held = saved(actions)
    assert held.on_hold and held.wait_reason == "waiting for #7: open" and held.attempt == 0
    save = next(a for a in actions if isinstance(a, SaveTask))
    assert [(e.kind, e.reason) for e in save.events] == [("waiting", "waiting for #7: open")]
    assert "waiting for #7: open" in status_comment(held, agents=(), settings=SETTINGS, now=NOW)


def test_an_unchanged_hold_plans_nothing() -> None:
    """A second pass over the same held world writes nothing."""
    held = task(on_hold=True, wait_reason="waiting for #7: open")
    body = status_comment(held, agents=(), settings=SETTINGS, now=NOW)
    held = held.changed(now=NOW, comment_digest=comment_digest(body))
    observed = Observed(
        repo=REPO,
        number=12,
        issue=issue("fleet/task", "status/todo"),
        task=held,
        agents=(ssh_agent(),),
        holds=HoldFacts(open_dependencies=(ref(7),)),
    )
    assert plan(observed, now=NOW, settings=SETTINGS) == ()


def test_a_released_hold_places_the_task_in_the_same_plan() -> None:
    """The dependency closed: the hold is lifted and the free agent gets the task at once."""
    observed = Observed(
        repo=REPO,
        number=12,
        issue=issue("fleet/task", "status/todo"),
        task=task(on_hold=True, wait_reason="waiting for #7: open"),
        agents=(ssh_agent(),),
    )
    actions = plan(observed, now=NOW, settings=SETTINGS)
    dispatch = [a for a in actions if isinstance(a, Dispatch)]
    assert [d.agent_id for d in dispatch] == ["box"]
    started = saved(actions)
    assert not started.on_hold and started.state is TaskState.ASSIGNED and started.attempt == 1


def test_an_untrusted_authors_new_issue_is_held_not_failed() -> None:
    """No task yet, author untrusted, no approval: created and held, never assigned."""
    observed = Observed(
        repo=REPO,
        number=12,
        issue=issue("fleet/task", author="bob"),
        task=None,
        agents=(ssh_agent(),),
        holds=HoldFacts(author_trusted=False),
    )
    actions = plan(observed, now=NOW, settings=SETTINGS)
    assert not any(isinstance(a, Dispatch) for a in actions)
    held = saved(actions)
    assert held.state is TaskState.CREATED and held.on_hold and held.attempt == 0
    assert "the issue's author bob is not trusted" in held.wait_reason


def test_a_closed_issue_wakes_the_issues_it_blocks() -> None:
    """Whatever else the plan does, each open blocked issue is enqueued."""
    observed = Observed(
        repo=REPO,
        number=12,
        issue=issue(state=IssueState.CLOSED),
        task=None,
        blocked=(ref(13), ref(4, "acme/api")),
    )
    actions = plan(observed, now=NOW, settings=SETTINGS)
    assert actions == (
        Enqueue(issue_key(REPO, 13)),
        Enqueue(issue_key("acme/api", 4)),
    )


def test_configured_roles_and_labels_always_need_approval_even_from_trusted_authors() -> None:
    """[approval] roles and labels hold a trusted author's work until someone else approves."""
    approval = ApprovalSettings(roles=("devops",), labels=("risky",))
    assert always_needs_approval("devops", (), approval) == "tasks for role devops always need one"
    assert always_needs_approval(None, ("risky",), approval) == (
        "issues labelled risky always need one"
    )
    assert always_needs_approval("developer", ("fleet/task",), approval) is None
    held = approval_hold(
        author="alice",
        author_trusted=True,
        approved_by=None,
        vocabulary=VOCAB,
        always="tasks for role devops always need one",
    )
    assert held is not None and held.reason == (
        "waiting for a maintainer's approval: tasks for role devops always need one; "
        "a maintainer other than the author adds fleet/approved"
    )
    settings = SETTINGS.model_copy(update={"approval": approval})
    observed = Observed(
        repo=REPO,
        number=12,
        issue=issue("agent/devops"),
        task=None,
        agents=(ssh_agent(),),
    )
    assert saved(plan(observed, now=NOW, settings=settings)).on_hold
    approved = Observed(
        repo=REPO,
        number=12,
        issue=issue("agent/devops", "fleet/approved"),
        task=None,
        agents=(ssh_agent(),),
        holds=HoldFacts(approved_by="carol"),
    )
    assert not saved(plan(approved, now=NOW, settings=settings)).on_hold
