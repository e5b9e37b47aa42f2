"""A task rebuilt after local state loss says what its status comment said (issue 11).

The reason and attempt count come back from the bot's status comment Forgejo still holds, and
a good comment is never overwritten with an emptier one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from controllers.assignment import COMMENT_MARKER, AssignmentController, Observed, plan
from reconciler.engine.reconcile import SaveTask, UpsertComment
from reconciler.fleet.rebuild import RebuiltFacts, facts_from_status_comment
from reconciler.forgejo.gateway import ForgejoGateway, marker_tag
from reconciler.forgejo.types import Issue, IssueState
from reconciler.keys import issue_key
from reconciler.models import TaskState, task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, Settings
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL, ManualClock
from tests.test_assignment import assignment_rig

pytest_plugins = ("tests.sandbox_fixtures",)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

SETTINGS = Settings(
    forgejo=ForgejoSettings(
        url=IN_PROCESS_URL, token=SecretStr("t"), repos=(DEMO_REPO,), bot_login="fleet-admin"
    )
)
FAILED = (
    f"{marker_tag(COMMENT_MARKER)}\n❌ Failed after 3 attempt(s): timed out: still running at "
    "its deadline 12:00:00 UTC\n\n<sub>agent-fleet · task `12-x`</sub>\n"
)
IN_REVIEW = (
    f"{marker_tag(COMMENT_MARKER)}\n👀 In review · branch `task/12-x-fix` · attempt 2\n\n"
    "<sub>agent-fleet · task `12-x`</sub>\n"
)


def an_issue(*labels: str, comments: int = 1) -> Issue:
    return Issue.model_validate(
        {
            "id": 1,
            "number": 12,
            "title": "Fix login",
            "body": "",
            "state": IssueState.OPEN,
            "labels": labels,
            "author": "alice",
            "assignees": (),
            "comments": comments,
            "created_at": NOW,
            "updated_at": NOW,
            "closed_at": None,
            "is_pull": False,
            "html_url": "",
        }
    )


@pytest.mark.parametrize(
    ("body", "facts"),
    [
        (FAILED, RebuiltFacts(3, "timed out: still running at its deadline 12:00:00 UTC")),
        (IN_REVIEW, RebuiltFacts(2, None)),
        (f"{marker_tag(COMMENT_MARKER)}\n⏳ Waiting for an agent: none online.", RebuiltFacts()),
        ("edited by a person", RebuiltFacts()),
    ],
)
def test_facts_are_read_from_the_status_line(body: str, facts: RebuiltFacts) -> None:
    """Attempt count and failure reason come from the rendered status line, nothing else."""
    assert facts_from_status_comment(body) == facts


def test_a_failed_task_is_rebuilt_with_its_reason_and_attempts_and_no_comment_write() -> None:
    """Lost store, status/failed: reason and attempts from the comment; it is left as it is."""
    observed = Observed(
        DEMO_REPO, 12, an_issue("fleet/task", "status/failed"), None, status_comment=FAILED
    )
    actions = plan(observed, now=NOW, settings=SETTINGS)
    assert not [a for a in actions if isinstance(a, UpsertComment)]
    [save] = [a for a in actions if isinstance(a, SaveTask)]
    assert save.task.state is TaskState.FAILED
    assert save.task.attempt == 3
    assert save.task.failure_reason.startswith("timed out")


def test_a_completed_task_keeps_its_attempt_count() -> None:
    """Lost store, status/done: the attempt count is the one the comment showed, not 0."""
    observed = Observed(
        DEMO_REPO, 12, an_issue("fleet/task", "status/done"), None, status_comment=IN_REVIEW
    )
    [save] = [a for a in plan(observed, now=NOW, settings=SETTINGS) if isinstance(a, SaveTask)]
    assert (save.task.state, save.task.attempt) == (TaskState.COMPLETED, 2)


@pytest.fixture
def controller(
    forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path
) -> Iterator[tuple[AssignmentController, ForgejoGateway, Store]]:
    with assignment_rig(forge, forge_clock, tmp_path / "state", SETTINGS) as rig:
        yield rig


def test_after_state_loss_the_failed_comment_keeps_its_words(
    forge: ForgejoSandbox, controller: tuple[AssignmentController, ForgejoGateway, Store]
) -> None:
    """Against the in-memory Forgejo: the rebuilt task has the reason; the comment is intact."""
    reconciler, gateway, store = controller
    number = forge.create_issue(DEMO_REPO, "Fix login", labels=["fleet/task", "status/failed"])
    gateway.upsert_marker_comment(DEMO_REPO, number, marker=COMMENT_MARKER, body=FAILED)
    before = [c.body for c in gateway.list_comments(DEMO_REPO, number)]
    writes = gateway.writes
    reconciler.reconcile(issue_key(DEMO_REPO, number))
    assert gateway.writes == writes
    assert [c.body for c in gateway.list_comments(DEMO_REPO, number)] == before
    task = store.find_task(task_id_for(DEMO_REPO, number))
    assert task is not None and task.attempt == 3
    assert "deadline" in task.failure_reason
