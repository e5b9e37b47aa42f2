"""Honest stats and the health of pull agents' runs (issue 14, points 5 and 6).

Over the daemon's real HTTP app and store (``ApiServer`` of tests/test_worker.py): a failed run
reported by the agent counts an error; ``api.drain_after_failed_runs`` failed runs in a row
drain the agent with the reason, and an undrain or a successful run ends it; a receipt with
tokens and no cost gets a cost estimated from ``api.token_prices``, marked so. The type a
worker registers as is the CLI it actually runs.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controllers.receipts import CountReceipt
from reconciler.agent.client import AgentApi
from reconciler.agent.config import cli_type
from reconciler.engine.reconcile import ActContext, Actuator
from reconciler.fleet.api import AgentSummary, RegisterRequest
from reconciler.fleet.health import count_run_failure, count_run_success
from reconciler.models import Agent, AgentId, AgentStatus, ExecutionMode, Task
from tests.test_worker import ENROLMENT, ApiServer, receipt_for

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path / "daemon")
    server.stop()
    api = server.settings.api.model_copy(update={"token_prices": {"codex-cli": 2.0}})
    server.settings = server.settings.model_copy(update={"api": api})
    server.start()
    yield server
    if not server.store.closed:
        server.stop()


def agent_client(server: ApiServer, *, agent_type: str = "codex-cli") -> AgentApi:
    api = AgentApi(server.url, timeout=10)
    api.register(
        RegisterRequest(agent_id="p1", type=agent_type, roles=("developer",), max_concurrency=9),
        credential=ENROLMENT,
    )
    return api


def take_running(server: ApiServer, api: AgentApi, number: int) -> Task:
    """A waiting task the agent dequeued and reported running."""
    server.waiting_task(number)
    handout = api.dequeue()
    assert handout is not None and handout.task.issue_number == number
    api.report(handout.task.id, lease_generation=handout.lease_generation, running=True)
    return server.store.get_task(handout.task.id)


def fail_run(api: AgentApi, task: Task, why: str) -> None:
    api.report(task.id, lease_generation=task.lease_generation, note=why, failed=True)


def test_failed_runs_count_errors_and_three_in_a_row_drain_the_agent(
    api_server: ApiServer,
) -> None:
    """Each failed run is one error; the third in a row drains the agent (no new task), its
    status saying why; an operator's undrain brings it back with the streak reset."""
    api = agent_client(api_server)
    tasks = [take_running(api_server, api, n) for n in (1, 2, 3)]
    api_server.waiting_task(4)
    for n, task in enumerate(tasks[:2], start=1):
        fail_run(api, task, f"the run failed: exit {n}")
        agent = api_server.store.get_agent("p1")
        assert (agent.stats.errors, agent.failing_runs, agent.status) == (
            n,
            n,
            AgentStatus.ONLINE,
        )
    fail_run(api, tasks[2], "the run failed: exit 3")
    agent = api_server.store.get_agent("p1")
    assert agent.stats.errors == 3 and agent.status is AgentStatus.DRAINING
    assert agent.auto_drained and agent.drain_requested
    assert agent.status_reason == (
        "drained automatically: 3 runs failed in a row (last: the run failed: exit 3)"
    )
    events = api_server.store.events_for(tasks[2].id)
    assert events[-1].kind == "run_failed" and events[-1].reason == "the run failed: exit 3"
    assert api.dequeue() is None  # drained: the waiting task is not handed out
    api_server.assembly.fleet.set_draining("p1", False, by="an operator")
    agent = api_server.store.get_agent("p1")
    assert agent.status is AgentStatus.ONLINE and not agent.auto_drained
    assert agent.failing_runs == 0 and agent.stats.errors == 3
    assert api.dequeue() is not None


def test_a_successful_run_ends_the_streak_and_the_automatic_drain(
    api_server: ApiServer,
) -> None:
    """Drained after three failed runs, the agent is back online when a receipt of a run of
    its own is accepted; a progress note without ``failed`` counts nothing."""
    api = agent_client(api_server)
    tasks = [take_running(api_server, api, n) for n in (1, 2, 3, 4)]
    api.report(tasks[3].id, lease_generation=1, note="still going")
    for task in tasks[:3]:
        fail_run(api, task, "the run failed")
    assert api_server.store.get_agent("p1").status is AgentStatus.DRAINING
    api.submit_receipt(receipt_for(tasks[3]))
    agent = api_server.store.get_agent("p1")
    assert agent.status is AgentStatus.ONLINE and agent.status_reason == ""
    assert (agent.failing_runs, agent.auto_drained, agent.drain_requested) == (0, False, False)
    assert agent.stats.errors == 3


def test_an_operators_drain_is_not_ended_by_a_success(api_server: ApiServer) -> None:
    """A drain a person asked for stays until a person ends it, whatever the runs do."""
    api = agent_client(api_server)
    task = take_running(api_server, api, 1)
    api_server.assembly.fleet.set_draining("p1", True, by="an operator")
    api.submit_receipt(receipt_for(task))
    agent = api_server.store.get_agent("p1")
    assert agent.status is AgentStatus.DRAINING and agent.drain_requested


def test_a_failed_run_report_needs_a_note(api_server: ApiServer) -> None:
    """``failed`` without a note saying why is a 400, and counts nothing."""
    api = agent_client(api_server)
    task = take_running(api_server, api, 1)
    request = urllib.request.Request(
        f"{api_server.url}/api/v1/tasks/{task.id}/status",
        data=json.dumps({"lease_generation": 1, "failed": True}).encode(),
        headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/json"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and b"invalid_body" in refused.value.read()
    assert api_server.store.get_agent("p1").stats.errors == 0


def test_a_receipt_without_cost_gets_an_estimate_marked_estimated(
    api_server: ApiServer,
) -> None:
    """Tokens and no cost (Codex): cost = tokens × the type's price per million, marked
    estimated; sent again it gets the first answer; a reported cost is kept as it is."""
    api = agent_client(api_server)
    first, second = take_running(api_server, api, 1), take_running(api_server, api, 2)
    claim = receipt_for(first).model_copy(update={"tokens": 1_500_000})
    api.submit_receipt(claim)
    api.submit_receipt(claim)  # a retry after a lost answer
    [stored] = api_server.store.receipts_for(first.id)
    assert (stored.cost_usd, stored.cost_estimated) == (3.0, True)
    api.submit_receipt(receipt_for(second).model_copy(update={"tokens": 10, "cost_usd": 0.5}))
    [reported] = api_server.store.receipts_for(second.id)
    assert (reported.cost_usd, reported.cost_estimated) == (0.5, False)


def test_an_agent_type_without_a_price_gets_no_estimate(api_server: ApiServer) -> None:
    """No price for the type: the cost stays 0 and is not marked estimated."""
    api = agent_client(api_server, agent_type="hermes")
    task = take_running(api_server, api, 1)
    api.submit_receipt(receipt_for(task).model_copy(update={"tokens": 1000}))
    [stored] = api_server.store.receipts_for(task.id)
    assert (stored.cost_usd, stored.cost_estimated) == (0.0, False)


def test_ssh_hosts_count_errors_but_are_never_drained_by_failed_runs() -> None:
    """ssh hosts have health checks and restarts of their own: failed runs count, no drain."""
    host = Agent(id=AgentId("h1"), type="codex", mode=ExecutionMode.SSH, registered_at=NOW)
    for _ in range(5):
        host = count_run_failure(host, reason="exit 1", drain_after=3, now=NOW)
    assert (host.stats.errors, host.failing_runs, host.status) == (5, 5, AgentStatus.ONLINE)
    assert count_run_success(host, now=NOW).failing_runs == 0


def test_zero_drain_after_never_drains() -> None:
    """``api.drain_after_failed_runs = 0`` switches the automatic drain off."""
    agent = Agent(id=AgentId("p1"), type="codex", registered_at=NOW)
    for _ in range(10):
        agent = count_run_failure(agent, reason="exit 1", drain_after=0, now=NOW)
    assert agent.status is AgentStatus.ONLINE and not agent.drain_requested


@pytest.mark.parametrize(
    ("adapter", "command", "expected"),
    [
        ("claude-code", (), "claude-code"),
        ("codex", (), "codex"),
        ("claude-code", ("aider", "--yes", "{prompt}"), "aider"),
        ("claude-code", ("/usr/local/bin/my-cli", "{prompt}"), "my-cli"),
        ("claude-code", ("python3", "-m", "reconciler.agent.demo_agent"), "demo_agent"),
    ],
)
def test_a_worker_registers_as_the_cli_it_runs(
    adapter: str, command: tuple[str, ...], expected: str
) -> None:
    """--command's program is the type, not the default adapter's name."""
    assert cli_type(adapter, command=command) == expected


def test_the_agents_stats_show_how_much_of_the_cost_was_estimated(
    api_server: ApiServer,
) -> None:
    """The estimated receipt's cost is counted in the agent's cost and, apart, as estimated;
    a reported cost only in the first; the agent listing carries both."""
    api = agent_client(api_server)
    first, second = take_running(api_server, api, 1), take_running(api_server, api, 2)
    api.submit_receipt(receipt_for(first).model_copy(update={"tokens": 1_500_000}))
    api.submit_receipt(receipt_for(second).model_copy(update={"tokens": 10, "cost_usd": 0.5}))
    context = ActContext(gateway=None, store=api_server.store, enqueue=lambda key: None)  # type: ignore[arg-type]  # counting never calls Forgejo
    for task in (first, second):
        [receipt] = api_server.store.receipts_for(task.id)
        count = CountReceipt(
            receipt.agent_id, tokens=receipt.tokens, cost_usd=receipt.cost_usd,
            estimated=receipt.cost_estimated, completed=1,
        )  # fmt: skip
        assert ("(estimated)" in count.describe()) is receipt.cost_estimated
        Actuator(context).apply([count])
    stats = api_server.store.get_agent("p1").stats
    assert (stats.cost_usd, stats.estimated_cost_usd) == (3.5, 3.0)
    [listed] = api_server.assembly.fleet.agents()
    summary = AgentSummary.of(listed).stats
    assert (summary.cost_usd, summary.estimated_cost_usd) == (3.5, 3.0)
