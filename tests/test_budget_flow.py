"""Budgets end to end: the in-memory Forgejo, signed webhooks, the loop, the assignment
controller and a pull agent's view of the queue, with the clock injected.

A run's spend is reported the way an agent in this process reports a failed run
(``Fleet.report_failure`` with what the run spent, as the ssh executor does); the daily cap,
the over-budget failure and raising a budget then follow from the store and the labels.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.console.history import task_report
from reconciler.console.views import status_report
from reconciler.fleet.api import TaskDetail
from reconciler.fleet.budgets import RunSpend
from reconciler.keys import issue_key
from reconciler.models import Agent, AgentId, AgentStatus, ExecutionMode, Task
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import BudgetsSettings, TaskBudget
from tests.daemon_rig import FlowWorld, hooked_daemon
from tests.sandbox_fixtures import DEMO_REPO, ManualClock

SECRET = "budget-secret"
pytest_plugins = ("tests.sandbox_fixtures",)
CAP_REASON = f"daily budget of $1.00 for {DEMO_REPO} spent; resumes at 00:00 UTC"


class World(FlowWorld):
    def run_over_budget(self, number: int, spent: RunSpend) -> Task:
        """The puller takes the task, starts it, and its run is stopped over budget."""
        handout = self.assembly.pull_queue.dequeue("puller")
        assert handout is not None and handout.task.issue_number == number
        lease = handout.task.lease_generation
        self.assembly.fleet.update_task_status(
            "puller", handout.task.id, lease_generation=lease, state="running"
        )
        budget = handout.task.budget_tokens
        self.assembly.fleet.report_failure(
            "puller",
            handout.task.id,
            lease_generation=lease,
            reason=f"over budget: spent {spent.tokens:,} of {budget:,} tokens",
            retryable=False,
            spent=spent,
        )
        self.settle()
        return self.task(number)


@pytest.fixture
def world(forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path) -> Iterator[World]:
    forge_clock.now = datetime(2026, 1, 5, 22, 0, tzinfo=UTC)
    store, assembly, server = hooked_daemon(forge, forge_clock, tmp_path / "state", secret=SECRET)
    settings = assembly.settings()
    budgets = BudgetsSettings(default=TaskBudget(tokens=1000), repo_daily_usd=1.0)
    assembly.settings.replace(settings.model_copy(update={"budgets": budgets}))
    assembly.loop.drain()
    for name in ("budget/5usd", "budget/2k", "budget/500", "budget/5k"):
        forge.create_label(DEMO_REPO, name)  # people make the budget labels they use
    store.put_agent(
        Agent(
            id=AgentId("puller"),
            type="claude-code",
            max_concurrency=2,
            status=AgentStatus.ONLINE,
            mode=ExecutionMode.PULL,
            registered_at=forge_clock(),
            last_heartbeat_at=forge_clock(),
        )
    )
    made = World(forge=forge, assembly=assembly, clock=forge_clock)
    yield made
    forge.flush_webhooks()
    server.stop()
    assembly.gateway.close()
    store.close()


def test_a_task_gets_its_roles_budget_and_a_label_overrides_it(world: World) -> None:
    """The default budget applies; `budget/5usd` adds a dollar limit, `budget/2k` replaces
    the token limit."""
    number = world.forge.create_issue(DEMO_REPO, "Work", labels=["fleet/task"])
    world.settle()
    task = world.task(number)
    assert (task.budget_usd, task.budget_tokens) == (None, 1000)
    world.forge.add_labels(DEMO_REPO, number, ["budget/5usd", "budget/2k"])
    world.settle()
    task = world.task(number)
    assert (task.budget_usd, task.budget_tokens) == (5.0, 2000)


def test_over_budget_fails_for_good_and_the_daily_cap_holds_the_queue_until_midnight(
    world: World,
) -> None:
    """A run stopped over budget fails and is not retried (not even by fleet/retry); its
    spend reaches the repository's $1 daily cap, so the next task waits saying why, is never
    handed out, and starts once the clock passes 00:00 UTC."""
    first = world.forge.create_issue(DEMO_REPO, "Expensive", labels=["fleet/task"])
    world.settle()
    spent = RunSpend(cost_usd=1.25, tokens=1500, estimated=False, over_budget=True)
    task = world.run_over_budget(first, spent)
    assert task.state == "failed" and task.over_budget
    assert task.failure_reason == "over budget: spent 1,500 of 1,000 tokens"
    assert (task.spent_usd, task.spent_tokens) == (1.25, 1500)
    assert "over budget: spent 1,500 of 1,000 tokens" in world.status_comment(first)

    # Spend per task (tasks show, status), per repository and agent per day (/metrics).
    store = world.assembly.store
    shown = task_report(TaskDetail(task=task, events=tuple(store.events_for(task.id))))
    assert "spent: $1.25, 1,500 tokens · budget: 1,000 tokens · over budget" in shown
    assert "$1.25" in status_report([task], now=world.clock())
    scraped = world.assembly.metrics.render().decode()
    assert f'agent_fleet_repo_spend_today_usd{{repo="{DEMO_REPO}"}} 1.25' in scraped
    assert 'agent_fleet_agent_spend_today_tokens{agent="puller"} 1500.0' in scraped

    world.clock.advance(3600)  # well past any retry backoff
    world.forge.add_labels(DEMO_REPO, first, ["fleet/retry"])
    world.settle()
    assert world.task(first).state == "failed", "only a raised budget runs it again"

    second = world.forge.create_issue(DEMO_REPO, "Next", labels=["fleet/task"])
    world.settle()
    waiting = world.task(second)
    assert waiting.on_hold and waiting.wait_reason == CAP_REASON
    assert world.handed_out() is None
    assert CAP_REASON in world.status_comment(second)

    world.assembly.queue.add(issue_key(DEMO_REPO, second))
    outcomes = world.assembly.loop.drain()
    # Looked at again at 00:00 UTC (the work queue's timer runs on its own monotonic clock,
    # so the test reads the delay and plays the timer itself).
    assert [(o.key, o.actions) for o in outcomes] == [(issue_key(DEMO_REPO, second), ())]
    assert outcomes[0].retry_in == pytest.approx(3600.5)
    world.clock.now = datetime(2026, 1, 6, 0, 0, 1, tzinfo=UTC)
    world.assembly.queue.add(issue_key(DEMO_REPO, second))
    world.settle()
    assert not world.task(second).on_hold
    handed = world.handed_out()
    assert handed is not None and handed.issue_number == second


def test_raising_the_budget_of_an_over_budget_task_requeues_it(world: World) -> None:
    """A budget label allowing more puts the failed task back in the queue, attempts kept."""
    number = world.forge.create_issue(DEMO_REPO, "Big", labels=["fleet/task"])
    world.settle()
    spent = RunSpend(cost_usd=0.01, tokens=1200, estimated=True, over_budget=True)
    task = world.run_over_budget(number, spent)
    assert task.state == "failed" and task.spent_estimated

    world.forge.add_labels(DEMO_REPO, number, ["budget/500"])  # less: still failed
    world.settle()
    assert world.task(number).state == "failed"
    world.forge.add_labels(DEMO_REPO, number, ["budget/5k"])  # the smallest label wins: 500
    world.settle()
    assert world.task(number).state == "failed"
    world.forge.remove_label(DEMO_REPO, number, "budget/500")
    world.settle()
    task = world.task(number)
    assert task.state == "created" and not task.over_budget and task.budget_tokens == 5000
    assert task.attempt == 1 and task.failure_reason == ""
    handed = world.handed_out()
    assert handed is not None and handed.issue_number == number


def test_an_agent_past_its_daily_budget_takes_no_new_task_until_midnight(world: World) -> None:
    """With budgets.agent_daily_usd, a pull agent whose runs spent it is given nothing today."""
    settings = world.assembly.settings()
    budgets = BudgetsSettings(default=TaskBudget(tokens=1000), agent_daily_usd=1.0)
    world.assembly.settings.replace(settings.model_copy(update={"budgets": budgets}))
    first = world.forge.create_issue(DEMO_REPO, "Expensive", labels=["fleet/task"])
    world.settle()
    world.run_over_budget(first, RunSpend(cost_usd=1.5, tokens=1500, estimated=False))
    second = world.forge.create_issue(DEMO_REPO, "Next", labels=["fleet/task"])
    world.settle()
    assert not world.task(second).on_hold  # the repository has no cap: only the agent does
    assert world.assembly.pull_queue.dequeue("puller") is None
    world.clock.now = datetime(2026, 1, 6, 0, 0, 1, tzinfo=UTC)
    world.assembly.fleet.heartbeat("puller")  # still there after the hours that passed
    handout = world.assembly.pull_queue.dequeue("puller")
    assert handout is not None and handout.task.issue_number == second
