"""Waking the tasks that wait for a closed issue: the assignment controller reads what a closed
issue blocks (``GET …/blocks``) only while some task is held, once per close, and a dependent
held from dependencies read just before the close looks again rather than staying held."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from controllers.assignment import AssignmentController
from controllers.setup import label_specs
from reconciler.engine.reconcile import ActContext, Actuator
from reconciler.errors import StaleStateError
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import Issue
from reconciler.keys import Key, issue_key
from reconciler.models import AgentId, Question, Task, TaskState, task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, Settings
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL, ManualClock

SETTINGS = Settings(
    forgejo=ForgejoSettings(
        url="https://forgejo.example.org",
        token=SecretStr("t"),
        repos=(DEMO_REPO,),
        bot_login="fleet-admin",
    )
)


class Rig:
    """An assignment controller over the in-memory Forgejo and a store on disk, whose
    ``Enqueue`` actions land in ``enqueued``; ``blocks_read`` lists the issues whose
    ``GET …/blocks`` it made."""

    def __init__(self, forge: ForgejoSandbox, clock: ManualClock, state_dir: Path) -> None:
        self.forge = forge
        self.gateway = ForgejoGateway(
            IN_PROCESS_URL, forge.admin_token, transport=httpx.WSGITransport(app=forge.app)
        )
        self.gateway.ensure_labels(DEMO_REPO, label_specs(SETTINGS))
        self.store = Store.open(state_dir)
        self.enqueued: list[Key] = []
        actuator = Actuator(
            ActContext(gateway=self.gateway, store=self.store, enqueue=self.enqueued.append)
        )
        self.controller = AssignmentController(
            self.gateway, self.store, actuator, settings=lambda: SETTINGS, clock=clock
        )
        self.blocks_read: list[int] = []
        real = self.gateway.list_blocks

        def list_blocks(repo: str, number: int) -> tuple[Issue, ...]:
            self.blocks_read.append(number)
            return real(repo, number)

        self.gateway.list_blocks = list_blocks  # type: ignore[method-assign]

    def close_issue(self, number: int) -> None:
        """Close the issue as a person does; its webhook would make the next read fresh."""
        self.forge.set_issue_state(DEMO_REPO, number, "closed")
        self.gateway.seen.invalidate(DEMO_REPO, number)

    def task(self, number: int) -> Task:
        return self.store.get_task(task_id_for(DEMO_REPO, number))

    def settle(self, *numbers: int, limit: int = 20) -> None:
        """Reconcile the issues, then what they enqueued or asked to see again at once, as the
        loop does, until nothing is left."""
        pending = [issue_key(DEMO_REPO, n) for n in numbers]
        for _ in range(limit):
            if not pending:
                return
            key = pending.pop(0)
            result = self.controller.reconcile(key)
            if result.requeue_after == 0:
                pending.append(key)
            pending += [k for k in self.enqueued if k not in pending]
            self.enqueued.clear()
        raise AssertionError(f"still reconciling after {limit} passes: {pending}")


@pytest.fixture
def rig(forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path) -> Iterator[Rig]:
    made = Rig(forge, forge_clock, tmp_path / "state")
    try:
        yield made
    finally:
        made.store.close()
        made.gateway.close()


def held_dependent(rig: Rig) -> tuple[int, int]:
    """A plain issue (the blocker) and a fleet issue that depends on it, its task held."""
    blocker = rig.forge.create_issue(DEMO_REPO, "Design the schema")
    number = rig.forge.create_issue(DEMO_REPO, "Build on the schema", labels=["fleet/task"])
    rig.forge.add_dependency(DEMO_REPO, number, on=blocker)
    rig.settle(number)
    held = rig.task(number)
    assert held.is_held and held.wait_reason == f"waiting for #{blocker}: open"
    return blocker, number


def test_a_close_with_no_held_task_reads_nothing_it_blocks(rig: Rig) -> None:
    """No task is held, so no task can be waiting for the closed issue: no ``…/blocks`` read,
    though an issue with no task depends on it."""
    number = rig.forge.create_issue(DEMO_REPO, "Fix login", labels=["fleet/task"])
    other = rig.forge.create_issue(DEMO_REPO, "Not fleet work")
    rig.forge.add_dependency(DEMO_REPO, other, on=number)
    rig.settle(number)
    assert not rig.store.has_held_tasks()
    rig.close_issue(number)
    rig.settle(number)
    assert rig.blocks_read == [] and rig.enqueued == []
    assert rig.task(number).is_terminal  # the close was seen: the task was cancelled


def test_a_held_dependent_is_woken_by_its_blockers_close(rig: Rig) -> None:
    """The blocker's close reads what it blocks once and wakes the held task, which is
    released in its next reconcile."""
    blocker, number = held_dependent(rig)
    rig.close_issue(blocker)
    rig.controller.reconcile(issue_key(DEMO_REPO, blocker))
    assert rig.blocks_read == [blocker]
    assert rig.enqueued == [issue_key(DEMO_REPO, number)]
    rig.settle(number)
    released = rig.task(number)
    assert not released.on_hold and released.wait_reason != f"waiting for #{blocker}: open"
    rig.settle(blocker)
    assert rig.blocks_read == [blocker]  # the close was looked at once


def test_a_task_waiting_for_its_questions_answer_is_woken_when_the_question_closes(
    rig: Rig,
) -> None:
    """A question is an issue the asking task depends on: its close wakes the task, which
    records the answer and is released."""
    number = rig.forge.create_issue(DEMO_REPO, "Serve the API", labels=["fleet/task"])
    asked = rig.forge.create_issue(DEMO_REPO, "Which port?", labels=["fleet/question"])
    rig.forge.add_dependency(DEMO_REPO, number, on=asked)
    rig.settle(number)
    created = rig.task(number)
    question = Question(number=1, text="Which port?", asked_at=created.created_at,
                        asked_by=AgentId("a1"), lease_generation=1, issue_number=asked)  # fmt: skip
    rig.store.replace_task(
        created.changed(now=created.updated_at, questions=(question,)), expected=created
    )
    rig.settle(number)
    assert rig.task(number).is_held
    rig.forge.create_user("maintainer")
    with rig.forge.state.lock:
        admin = rig.forge.state.user_named("fleet-admin")
        repo = rig.forge.state.repo(DEMO_REPO, admin)
        rig.forge.state.add_collaborator(repo, admin, "maintainer", permission="write")
    rig.forge.comment(DEMO_REPO, asked, "Port 8080.", author="maintainer")
    rig.close_issue(asked)
    rig.controller.reconcile(issue_key(DEMO_REPO, asked))
    assert rig.blocks_read == [asked] and rig.enqueued == [issue_key(DEMO_REPO, number)]
    rig.settle(number)
    resumed = rig.task(number)
    assert not resumed.on_hold
    assert (resumed.questions[0].answer, resumed.questions[0].answered_by) == (
        "Port 8080.",
        "maintainer",
    )


def test_a_hold_saved_after_a_close_looked_for_held_tasks_is_looked_at_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dependent's reconcile reads its blocker open; the blocker closes and its reconcile
    finds no held task (the hold is not saved yet) so wakes nobody; the dependent saves its
    hold, sees that a close was looked at meanwhile, and looks again: it ends released."""
    blocker = rig.forge.create_issue(DEMO_REPO, "Design the schema")
    number = rig.forge.create_issue(DEMO_REPO, "Build on the schema", labels=["fleet/task"])
    rig.forge.add_dependency(DEMO_REPO, number, on=blocker)
    real = rig.gateway.list_dependencies
    closed: list[object] = []

    def list_dependencies(repo: str, n: int) -> tuple[Issue, ...]:
        answer = real(repo, n)
        if n == number and not closed:
            # The close lands between the dependent's read and its write.
            rig.close_issue(blocker)
            closed.append(rig.controller.reconcile(issue_key(DEMO_REPO, blocker)))
        return answer

    monkeypatch.setattr(rig.gateway, "list_dependencies", list_dependencies)
    result = rig.controller.reconcile(issue_key(DEMO_REPO, number))
    assert closed, "the blocker's close was reconciled in between"
    assert rig.blocks_read == [] and rig.enqueued == []  # the close saw no held task
    assert rig.task(number).is_held  # held from the read made before the close
    assert result.requeue_after == 0
    rig.settle(number)
    assert not rig.task(number).on_hold


def test_a_hold_saved_with_no_close_in_between_is_not_looked_at_again(rig: Rig) -> None:
    """Without a close during its reconcile, a newly held task waits for the close's wake-up
    (no requeue of its own)."""
    blocker = rig.forge.create_issue(DEMO_REPO, "Design the schema")
    number = rig.forge.create_issue(DEMO_REPO, "Build on the schema", labels=["fleet/task"])
    rig.forge.add_dependency(DEMO_REPO, number, on=blocker)
    result = rig.controller.reconcile(issue_key(DEMO_REPO, number))
    assert rig.task(number).is_held and result.requeue_after is None


def test_a_close_whose_later_write_meets_a_newer_record_is_not_read_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake-ups go out before the closed issue's own writes: when its task changed
    meanwhile (the loop reconciles again), the retry neither reads what the issue blocks nor
    wakes its dependents a second time."""
    _, dependent = held_dependent(rig)
    blocker = rig.forge.create_issue(DEMO_REPO, "Fix login", labels=["fleet/task"])
    rig.forge.add_dependency(DEMO_REPO, dependent, on=blocker)
    rig.settle(blocker, dependent)
    real = rig.gateway.list_blocks

    def list_blocks_then_task_changes(repo: str, n: int) -> tuple[Issue, ...]:
        answer = real(repo, n)
        # Another writer changes the closed issue's task before this reconcile writes it.
        rig.store.update_task(task_id_for(DEMO_REPO, n), lambda t: t.changed(now=t.updated_at,
                              last_activity_at=t.updated_at))  # fmt: skip
        return answer

    monkeypatch.setattr(rig.gateway, "list_blocks", list_blocks_then_task_changes)
    rig.close_issue(blocker)
    with pytest.raises(StaleStateError):
        rig.controller.reconcile(issue_key(DEMO_REPO, blocker))
    assert rig.enqueued == [issue_key(DEMO_REPO, dependent)]
    monkeypatch.setattr(rig.gateway, "list_blocks", _refused("read again"))
    rig.controller.reconcile(issue_key(DEMO_REPO, blocker))
    assert rig.task(blocker).is_terminal
    assert rig.enqueued == [issue_key(DEMO_REPO, dependent)]


def _refused(what: str) -> Callable[..., tuple[Issue, ...]]:
    def refuse(*_: object) -> tuple[Issue, ...]:
        raise AssertionError(what)

    return refuse


def test_the_store_knows_whether_any_task_is_held(tmp_path: Path) -> None:
    """``has_held_tasks`` follows each write: a held task counts until it is released or
    finished, and a reopened store rebuilds it."""
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    with Store.open(tmp_path / "state") as store:
        task = Task(id=task_id_for(DEMO_REPO, 3), repo=DEMO_REPO, issue_number=3, title="t",
                    created_at=now, updated_at=now)  # fmt: skip
        store.put_task(task)
        assert not store.has_held_tasks()
        store.put_task(task.changed(now=now, on_hold=True))
        assert store.has_held_tasks()
    with Store.open(tmp_path / "state") as store:
        assert store.has_held_tasks()
        held = store.get_task(task.id)
        store.put_task(held.changed(now=now, state=TaskState.CANCELLED))
        assert not store.has_held_tasks()  # finished: nothing can release it
        store.put_task(held)
        assert store.has_held_tasks()
        store.put_task(held.changed(now=now, on_hold=False))
        assert not store.has_held_tasks()
