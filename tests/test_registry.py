"""The registry controller: the plan table, reconciles on a real store with injected time, the
no-op second pass, the heartbeat race, and ssh host health with fake checks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from controllers.registry import (
    Observed,
    RegistryController,
    RestartHost,
    describe_restart,
    next_look,
    plan,
)
from reconciler.engine.reconcile import Action, Actuator, Enqueue, SaveAgent, SaveTask, recording
from reconciler.engine.resync import Resync
from reconciler.errors import ConflictError, WaitingError
from reconciler.fleet.agents import Fleet
from reconciler.fleet.records import HeldTask, Pulse
from reconciler.keys import Key, agent_key, issue_key
from reconciler.models import (
    Agent,
    AgentId,
    AgentStatus,
    ExecutionMode,
    Task,
    TaskState,
    assign,
    task_id_for,
)
from reconciler.settings import HostSettings, Settings
from tests.test_fleet import NOW, REPO, FakeHealth, FakeRestart, Harness, host, make_settings

SETTINGS = make_settings()
HOST = host("build-01", restart_command="systemctl --user restart agent", roles=("developer",))
HOST_SETTINGS = make_settings(hosts=(HOST,))
AN_HOUR_AGO = NOW - timedelta(hours=1)


def agent(status: AgentStatus = AgentStatus.ONLINE, **changes: Any) -> Agent:
    base: dict[str, Any] = {
        "id": "a1",
        "type": "claude-code",
        "status": status,
        "status_since": AN_HOUR_AGO,
        "registered_at": AN_HOUR_AGO,
        "status_reason": "" if status is not AgentStatus.OFFLINE else "no heartbeat for 3 min",
    }
    return Agent.model_validate(base | changes)


def host_agent(status: AgentStatus = AgentStatus.ONLINE, **changes: Any) -> Agent:
    fields: dict[str, Any] = {
        "id": "build-01",
        "mode": ExecutionMode.SSH,
        "hostname": HOST.address,
        "roles": HOST.roles,
        "metadata": {"workdir": HOST.workdir},
        "status_reason": "",
    }
    return agent(status, **(fields | changes))


def task(number: int, state: TaskState, agent_id: str = "a1") -> Task:
    return Task.model_validate(
        {
            "id": task_id_for(REPO, number),
            "repo": REPO,
            "issue_number": number,
            "title": f"Issue {number}",
            "state": state,
            "agent_id": agent_id,
            "lease_generation": 1,
            "created_at": AN_HOUR_AGO,
            "updated_at": AN_HOUR_AGO,
        }
    )


def observed(
    subject: Agent | None,
    *,
    silent: float = 10,
    tasks: tuple[Task, ...] = (),
    host_entry: HostSettings | None = None,
    health: FakeHealth | None = None,
) -> Observed:
    seen = NOW - timedelta(seconds=silent)
    return Observed(
        agent_id=AgentId(subject.id if subject else HOST.name),
        agent=subject,
        pulse=Pulse(at=seen),
        last_seen=seen,
        tasks=tasks,
        host=host_entry,
        health=health,
        checked_at=NOW if health is not None else NOW - timedelta(seconds=10),
    )


def kinds(actions: tuple[Action, ...]) -> list[str]:
    out = []
    for action in actions:
        if isinstance(action, SaveAgent):
            before = action.observed.status if action.observed else "new"
            out.append(f"agent:{before}->{action.agent.status}")
        elif isinstance(action, SaveTask):
            out.append("task:" + ",".join(f"{e.from_state}->{e.to_state}" for e in action.events))
        elif isinstance(action, Enqueue):
            out.append(f"enqueue:{action.key}")
        elif isinstance(action, RestartHost):
            out.append("restart")
        else:
            out.append(type(action).__name__)
    return out


LOST = "task:running->agent_lost,agent_lost->created"
LOST_ASSIGNED = "task:assigned->agent_lost,agent_lost->created"
ENQUEUE_12 = f"enqueue:{issue_key(REPO, 12)}"
ENQUEUE_13 = f"enqueue:{issue_key(REPO, 13)}"
RUNNING_12 = task(12, TaskState.RUNNING)


@pytest.mark.parametrize(
    ("name", "obs", "settings", "expected"),
    [
        ("online and heard from: already in desired state", observed(agent(), silent=60), SETTINGS, []),
        ("silent for less than 3 intervals: still online", observed(agent(), silent=179), SETTINGS, []),
        ("silent for 3 intervals: offline", observed(agent(), silent=180), SETTINGS, ["agent:online->offline"]),
        ("offline takes running and assigned tasks back", observed(agent(), silent=200, tasks=(RUNNING_12, task(13, TaskState.ASSIGNED))), SETTINGS, ["agent:online->offline", LOST, ENQUEUE_12, LOST_ASSIGNED, ENQUEUE_13]),
        ("a task in review stays with its agent", observed(agent(), silent=200, tasks=(task(12, TaskState.REVIEW_PENDING),)), SETTINGS, ["agent:online->offline"]),
        ("offline and silent: already in desired state", observed(agent(AgentStatus.OFFLINE), silent=900), SETTINGS, []),
        ("offline but still holding a task: taken back", observed(agent(AgentStatus.OFFLINE), silent=900, tasks=(RUNNING_12,)), SETTINGS, [LOST, ENQUEUE_12]),
        ("offline agent heard from again: online", observed(agent(AgentStatus.OFFLINE), silent=5), SETTINGS, ["agent:offline->online"]),
        ("offline, not heard from since the process started: stays offline", replace(observed(agent(AgentStatus.OFFLINE), silent=5), pulse=None), SETTINGS, []),
        ("back from an outage with a drain asked for: draining", observed(agent(AgentStatus.OFFLINE, drain_requested=True), silent=5), SETTINGS, ["agent:offline->draining"]),
        ("draining and heard from: already in desired state", observed(agent(AgentStatus.DRAINING, drain_requested=True, status_reason="drained by an operator")), SETTINGS, []),
        ("draining keeps its tasks", observed(agent(AgentStatus.DRAINING, drain_requested=True, status_reason="drained by the agent"), tasks=(RUNNING_12,)), SETTINGS, []),
        ("deregistered: offline, tasks back", observed(agent(deregistered=True), tasks=(RUNNING_12,)), SETTINGS, ["agent:online->offline", LOST, ENQUEUE_12]),
        ("deregistered and offline: already in desired state", observed(agent(AgentStatus.OFFLINE, deregistered=True, status_reason="deregistered by the agent")), SETTINGS, []),
        ("no record, tasks still name it: taken back", observed(None, tasks=(task(12, TaskState.RUNNING, "gone"),)), SETTINGS, [LOST, ENQUEUE_12]),
        ("new host, healthy: created online", observed(None, host_entry=HOST, health=FakeHealth()), HOST_SETTINGS, ["agent:new->online"]),
        ("new host, unhealthy: created offline", observed(None, host_entry=HOST, health=FakeHealth("git not found")), HOST_SETTINGS, ["agent:new->offline"]),
        ("healthy host, no check due: already in desired state", observed(host_agent(), host_entry=HOST), HOST_SETTINGS, []),
        ("healthy host checked healthy: already in desired state", observed(host_agent(), host_entry=HOST, health=FakeHealth()), HOST_SETTINGS, []),
        ("first failed check: still online, counted", observed(host_agent(), host_entry=HOST, health=FakeHealth("unreachable")), HOST_SETTINGS, ["agent:online->online"]),
        ("third failed check: offline and one restart", observed(host_agent(consecutive_failures=2), host_entry=HOST, health=FakeHealth("unreachable"), tasks=(task(12, TaskState.RUNNING, "build-01"),)), HOST_SETTINGS, ["agent:online->offline", LOST, ENQUEUE_12, "restart"]),
        ("third failed check without a restart command: offline", observed(host_agent(consecutive_failures=2), host_entry=host("build-01", roles=("developer",)), health=FakeHealth("unreachable")), HOST_SETTINGS, ["agent:online->offline"]),
        ("still failing after the restart: no second restart", observed(host_agent(AgentStatus.OFFLINE, consecutive_failures=3, restarted_in_streak=True), host_entry=HOST, health=FakeHealth("unreachable")), HOST_SETTINGS, ["agent:offline->offline"]),
        ("offline host healthy again: online, streak over", observed(host_agent(AgentStatus.OFFLINE, consecutive_failures=4, restarted_in_streak=True), host_entry=HOST, health=FakeHealth()), HOST_SETTINGS, ["agent:offline->online"]),
        ("host removed from the config: offline", observed(host_agent(), host_entry=None), SETTINGS, ["agent:online->offline"]),
        ("host's entry changed: record follows", observed(host_agent(roles=("tester",)), host_entry=HOST), HOST_SETTINGS, ["agent:online->online"]),
    ],
)  # fmt: skip
def test_plan(name: str, obs: Observed, settings: Settings, expected: list[str]) -> None:
    """What the registry decides for each kind of agent (pure: no I/O)."""
    assert kinds(plan(obs, now=NOW, settings=settings)) == expected


def test_the_offline_reason_says_how_long_and_how_many_intervals() -> None:
    """A person reading the table learns why: no heartbeat for how long, how many missed."""
    (save,) = plan(observed(agent(), silent=185), now=NOW, settings=SETTINGS)
    assert isinstance(save, SaveAgent)
    assert save.agent.status_reason == "no heartbeat for 3 min 5 s (3 missed intervals)"
    assert save.agent.last_heartbeat_at == NOW - timedelta(seconds=185)
    assert save.agent.stats.online_seconds == 3600


def test_a_failed_host_reports_its_problems_and_restart_outcome() -> None:
    """The host's reason lists what the check found; the restart's outcome is appended."""
    actions = plan(
        observed(
            host_agent(consecutive_failures=2),
            host_entry=HOST,
            health=FakeHealth("claude not found on PATH", "free disk 12 MiB below 1024 MiB"),
        ),
        now=NOW,
        settings=HOST_SETTINGS,
    )
    save = actions[0]
    assert isinstance(save, SaveAgent)
    assert save.agent.status_reason == (
        "claude not found on PATH; free disk 12 MiB below 1024 MiB (3 failed checks in a row)"
    )
    assert describe_restart(FakeRestart(False, 1, "starting\nunit agent.service not found\n")) == (
        "failed (exit 1): unit agent.service not found"
    )


@pytest.mark.parametrize(
    ("obs", "expected"),
    [
        (observed(agent(), silent=60), 120 + 1),
        (observed(agent(AgentStatus.OFFLINE), silent=900), None),
        (observed(agent(deregistered=True)), None),
        (observed(host_agent(), host_entry=HOST), HOST.health_interval - 10 + 1),
    ],
)
def test_the_registry_looks_again_when_grace_or_the_next_check_is_due(
    obs: Observed, expected: float | None
) -> None:
    """No polling: each agent asks to be looked at when something can change."""
    assert next_look(obs, now=NOW, settings=HOST_SETTINGS) == expected


# --- reconciles on a real store ----------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_three_missed_intervals_take_an_agents_tasks_back_under_a_new_lease(
    registry: Harness,
) -> None:
    """Offline after 3 intervals; running → agent_lost → created; the next assignment bumps
    the lease; the issue's key goes to the assignment controller."""
    registry.register("a1")
    registry.register("b1")
    registry.give_task("a1", running=True)
    assert registry.reconcile("a1").requeue_after == 180 + 1
    registry.clock.advance(120)
    registry.fleet.heartbeat("b1")
    registry.clock.advance(60)
    result = registry.reconcile("a1")
    assert registry.agent("a1").status is AgentStatus.OFFLINE
    assert registry.agent("a1").status_reason == "no heartbeat for 3 min (3 missed intervals)"
    assert result.requeue_after is None  # its next heartbeat enqueues it
    lost = registry.task()
    assert (lost.state, lost.agent_id, lost.lease_generation) == (TaskState.CREATED, None, 1)
    events = registry.store.events_for(lost.id)
    assert [(e.from_state, e.to_state) for e in events[-2:]] == [
        (TaskState.RUNNING, TaskState.AGENT_LOST),
        (TaskState.AGENT_LOST, TaskState.CREATED),
    ]
    assert issue_key(REPO, 12) in registry.enqueued
    reassigned, _ = assign(lost, AgentId("b1"), now=registry.clock(), actor="reconciler")
    assert reassigned.lease_generation == 2
    assert registry.reconcile("b1").requeue_after == 120 + 1  # b1 was heard of 60 s ago


def test_heartbeat_loss_never_leaves_a_task_with_two_agents(registry: Harness) -> None:
    """The lost agent's lease is stale from the requeue on, and its next heartbeat is told to
    stop; only the new holder's updates are accepted."""
    registry.register("a1")
    registry.register("b1")
    old = registry.give_task("a1", running=True)
    registry.clock.advance(200)
    registry.fleet.heartbeat("b1")
    registry.reconcile("a1")
    new = registry.give_task("b1")
    assert new.lease_generation == old.lease_generation + 1
    with pytest.raises(ConflictError) as refused:
        registry.fleet.update_task_status("a1", old.id, lease_generation=1, note="still on it")
    assert refused.value.code == "stale_lease"
    reply = registry.fleet.heartbeat("a1", tasks=[HeldTask(old.id, 1)])
    assert [(s.task_id, s.code) for s in reply.stop] == [(old.id, "reassigned")]
    assert agent_key("a1") in registry.enqueued  # back: the registry brings it online
    registry.reconcile("a1")
    assert registry.agent("a1").status is AgentStatus.ONLINE
    update = registry.fleet.update_task_status(
        "b1", new.id, lease_generation=2, state=TaskState.RUNNING
    )
    assert update.changed and update.task.state is TaskState.RUNNING
    assert registry.task().agent_id == "b1"


def test_a_heartbeat_during_the_reconcile_wins_over_marking_offline(
    registry: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat between observing and acting: nothing is taken back, the key runs again."""
    registry.register("a1")
    registry.give_task("a1", running=True)
    registry.clock.advance(200)
    observe = registry.controller.observe

    def observe_then_heartbeat(*args: Any, **kwargs: Any) -> Observed:
        seen = observe(*args, **kwargs)
        registry.fleet.heartbeat("a1")
        return seen

    monkeypatch.setattr(registry.controller, "observe", observe_then_heartbeat)
    with pytest.raises(WaitingError):
        registry.reconcile("a1")
    assert registry.agent("a1").status is AgentStatus.ONLINE
    assert registry.task().state is TaskState.RUNNING
    monkeypatch.undo()
    assert registry.reconcile("a1").requeue_after == 180 + 1


def test_a_restart_gives_online_agents_a_grace_period_and_leaves_offline_ones_offline(
    registry: Harness,
) -> None:
    """After a restart nobody is lost at once, and nobody offline comes back by itself."""
    registry.register("up")
    registry.register("down")
    registry.clock.advance(150)
    registry.fleet.heartbeat("up")
    registry.clock.advance(50)
    registry.reconcile("down")
    assert registry.agent("down").status is AgentStatus.OFFLINE
    registry.clock.advance(600)  # the daemon is down for ten minutes
    registry.restart_process()
    assert registry.reconcile("up").requeue_after == 180 + 1
    registry.reconcile("down")
    assert registry.agent("up").status is AgentStatus.ONLINE
    assert registry.agent("down").status is AgentStatus.OFFLINE
    registry.clock.advance(180)
    registry.reconcile("up")
    assert registry.agent("up").status is AgentStatus.OFFLINE


def test_deregistering_takes_the_agents_tasks_back(registry: Harness) -> None:
    """Deregister → offline with its reason, its tasks requeued."""
    registry.register("a1")
    registry.give_task("a1", running=True)
    registry.fleet.deregister("a1")
    registry.reconcile("a1")
    assert registry.agent("a1").status is AgentStatus.OFFLINE
    assert registry.agent("a1").status_reason == "deregistered by the agent"
    assert registry.task().state is TaskState.CREATED


@pytest.mark.parametrize("scenario", ["online", "lost", "deregistered", "host"])
def test_a_second_pass_writes_nothing(registry: Harness, scenario: str) -> None:
    """Whatever the first pass did, a second pass over the same world plans no action and
    leaves the store's files byte for byte as they were."""
    registry.current = HOST_SETTINGS
    registry.register("a1")
    registry.give_task("a1", running=True)
    subject = "a1"
    if scenario == "lost":
        registry.clock.advance(200)
    elif scenario == "deregistered":
        registry.fleet.deregister("a1")
    elif scenario == "host":
        subject = "build-01"
    registry.reconcile(subject)
    before = registry.state_files()
    with recording() as applied:
        registry.reconcile(subject)
    assert applied == []
    assert registry.state_files() == before


# --- ssh hosts ---------------------------------------------------------------------------


def test_hosts_are_checked_on_their_interval_not_on_every_pass(registry: Harness) -> None:
    """A declared host becomes an agent; it is checked again only once its interval passed."""
    registry.current = HOST_SETTINGS
    assert registry.reconcile("build-01").requeue_after == HOST.health_interval + 1
    record = registry.agent("build-01")
    assert (record.mode, record.status, record.roles) == (
        ExecutionMode.SSH,
        AgentStatus.ONLINE,
        ("developer",),
    )
    registry.clock.advance(30)
    assert registry.reconcile("build-01").requeue_after == 30 + 1
    assert registry.hosts.checks == ["build-01"]
    registry.clock.advance(30)
    registry.reconcile("build-01")
    assert registry.hosts.checks == ["build-01", "build-01"]


def test_a_failing_host_goes_offline_and_is_restarted_once_per_streak(registry: Harness) -> None:
    """Three failures → offline, the restart command runs once, its outcome in the reason; a
    passing check ends the streak, so the next streak may restart again."""
    registry.current = HOST_SETTINGS
    registry.reconcile("build-01")
    registry.give_task("build-01", running=True)
    registry.hosts.health["build-01"] = FakeHealth("ssh: connection refused")
    for _ in range(5):
        registry.clock.advance(60)
        registry.reconcile("build-01")
    record = registry.agent("build-01")
    assert record.status is AgentStatus.OFFLINE
    assert record.consecutive_failures == 5
    assert registry.hosts.restarts == ["build-01"]
    assert record.status_reason == (
        "ssh: connection refused (5 failed checks in a row)"
        " · restart: succeeded (exit 0): agent service restarted"
    )
    assert registry.task().state is TaskState.CREATED
    registry.hosts.health["build-01"] = FakeHealth()
    registry.clock.advance(60)
    registry.reconcile("build-01")
    assert registry.agent("build-01").status is AgentStatus.ONLINE
    assert registry.agent("build-01").status_reason == ""
    registry.hosts.health["build-01"] = FakeHealth("ssh: connection refused")
    for _ in range(3):
        registry.clock.advance(60)
        registry.reconcile("build-01")
    assert registry.hosts.restarts == ["build-01", "build-01"]


def test_a_host_removed_from_the_config_goes_offline(registry: Harness) -> None:
    """Its record stays (history, stats) but it is offline and says why."""
    registry.current = HOST_SETTINGS
    registry.reconcile("build-01")
    registry.current = SETTINGS
    registry.reconcile("build-01")
    assert registry.agent("build-01").status is AgentStatus.OFFLINE
    assert registry.agent("build-01").status_reason == "no longer declared in [[hosts]]"
    assert registry.hosts.checks == ["build-01"]


def test_a_dry_run_describes_and_writes_nothing(registry: Harness) -> None:
    """With a dry-run actuator the plan is printed, the store untouched, no restart run."""
    registry.register("a1")
    registry.give_task("a1", running=True)
    registry.clock.advance(200)
    dry_run = RegistryController(
        registry.store,
        registry.fleet,
        Actuator(None, dry_run=True),
        settings=registry.settings,
        clock=registry.clock,
        probes=registry.probes,
    )
    before = registry.state_files()
    with recording() as described:
        dry_run.reconcile(agent_key("a1"))
    assert (
        described[0]
        == "agent a1: online → offline (no heartbeat for 3 min 20 s (3 missed intervals))"
    )
    assert described[1].startswith(
        f"task {task_id_for(REPO, 12)} ({REPO}#12): running → agent_lost"
    )
    assert registry.state_files() == before


def test_the_full_resync_enqueues_every_agent_and_declared_host(registry: Harness) -> None:
    """The start-up resync puts every registered agent and every [[hosts]] entry in the queue."""
    registry.current = HOST_SETTINGS.model_copy(
        update={"forgejo": HOST_SETTINGS.forgejo.model_copy(update={"repos": ()})}
    )
    registry.register("a1")
    keys: list[object] = []
    resync = Resync(
        None,  # type: ignore[arg-type]  # no repository is watched: Forgejo is never called
        registry.store,
        keys.append,
        settings=registry.settings,
        clock=registry.clock,
        record=False,
    )
    assert resync.full() == 2
    assert keys == [agent_key("a1"), agent_key("build-01")]


def test_a_handout_the_agent_never_received_is_requeued_after_the_grace(
    registry: Harness,
) -> None:
    """The dequeue answer was lost: the task stays ``assigned`` while the agent's heartbeats go
    on without it. Heartbeats inside ``api.handout_grace`` change nothing; the first one after
    it that does not list the task has it requeued (agent_lost → created, issue enqueued),
    and the agent stays online."""
    registry.register("a1")
    handed = registry.give_task("a1")
    assert handed.state is TaskState.ASSIGNED
    grace = SETTINGS.api.handout_grace
    assert grace == 60  # the default
    assert registry.reconcile("a1").requeue_after == grace + 1  # looks when the grace ends
    registry.clock.advance(30)
    registry.fleet.heartbeat("a1")  # within the grace: the answer may still be on its way
    registry.reconcile("a1")
    assert registry.task().state is TaskState.ASSIGNED
    registry.clock.advance(grace)
    # Past the grace but not heard of since: nothing to judge by; look a heartbeat later.
    assert registry.reconcile("a1").requeue_after == SETTINGS.api.heartbeat_interval + 1
    assert registry.task().state is TaskState.ASSIGNED
    registry.fleet.heartbeat("a1")  # lists nothing
    registry.reconcile("a1")
    lost = registry.task()
    assert (lost.state, lost.agent_id) == (TaskState.CREATED, None)
    events = registry.store.events_for(lost.id)
    assert [(e.from_state, e.to_state) for e in events[-2:]] == [
        (TaskState.ASSIGNED, TaskState.AGENT_LOST),
        (TaskState.AGENT_LOST, TaskState.CREATED),
    ]
    assert "never received the task" in (events[-2].reason or "")
    assert events[-1].reason == "requeued: the handout was lost"
    assert issue_key(REPO, 12) in registry.enqueued
    assert registry.agent("a1").status is AgentStatus.ONLINE
    registry.reconcile("a1")  # a second pass writes nothing more
    assert len(registry.store.events_for(lost.id)) == len(events)


def test_a_handout_the_agent_lists_is_kept_past_the_grace(registry: Harness) -> None:
    """A heartbeat listing the task after the grace: the agent has it; nothing is requeued.
    Neither is a running task that a heartbeat omits (only handouts are judged)."""
    registry.register("a1")
    handed = registry.give_task("a1")
    other = registry.give_task("a1", 13, running=True)
    registry.clock.advance(SETTINGS.api.handout_grace + 5)
    registry.fleet.heartbeat("a1", tasks=[HeldTask(handed.id, handed.lease_generation)])
    registry.reconcile("a1")
    assert registry.store.get_task(handed.id).state is TaskState.ASSIGNED
    assert registry.store.get_task(other.id).state is TaskState.RUNNING


def test_after_a_daemon_restart_a_handout_waits_for_a_heartbeat(registry: Harness) -> None:
    """The pulses are soft state: a restarted daemon judges a handout only by a heartbeat it
    received itself."""
    registry.register("a1")
    registry.give_task("a1")
    registry.clock.advance(SETTINGS.api.handout_grace + 5)
    registry.restart_process()
    registry.reconcile("a1")
    assert registry.task().state is TaskState.ASSIGNED
    registry.fleet.heartbeat("a1")
    registry.reconcile("a1")
    assert registry.task().state is TaskState.CREATED


def test_an_agent_starting_its_task_asks_nothing_of_the_issue_and_a_failure_follows_up(
    registry: Harness,
) -> None:
    """A task the agent started shows on its issue as the task it took did (`status/doing`, the
    line naming the agent): its issue key is not enqueued. A move the issue shows (the run
    failed) hands the key on as a follow-up of work under way — the daemon's urgent keys, which
    take the issue as last read — not as a fresh look."""
    followed: list[Key] = []
    registry.fleet = Fleet(
        registry.store,
        settings=registry.settings,
        clock=registry.clock,
        enqueue=registry.enqueued.append,
        follow_up=followed.append,
    )
    registry.register("a1")
    task = registry.give_task("a1")
    registry.enqueued.clear()
    update = registry.fleet.update_task_status(
        "a1", task.id, lease_generation=task.lease_generation, state=TaskState.RUNNING
    )
    assert update.changed and update.task.state is TaskState.RUNNING
    assert followed == [] and issue_key(REPO, 12) not in registry.enqueued
    registry.fleet.report_failure(
        "a1", task.id, lease_generation=task.lease_generation, reason="tests failed",
        retryable=True,
    )  # fmt: skip
    assert followed == [issue_key(REPO, 12)] and issue_key(REPO, 12) not in registry.enqueued
