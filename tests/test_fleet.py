"""The agent registry's domain service: registration and tokens, heartbeats as soft state,
drains, listings, uptime, the agents table and the agents-by-status metric.

``Harness`` (a store on disk, a manual clock, a Fleet and the registry controller wired as the
daemon wires them) is shared with tests/test_registry.py and tests/test_agents_api.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from controllers.registry import RegistryController
from reconciler.console.views import agents_table
from reconciler.engine.metrics import Metrics
from reconciler.engine.reconcile import ActContext, Actuator, Result
from reconciler.errors import ConflictError, ForbiddenError, UnauthenticatedError
from reconciler.fleet.agents import Fleet
from reconciler.fleet.api import AgentSummary
from reconciler.fleet.records import (
    HeldTask,
    Profile,
    Registration,
    token_digest,
    with_status,
)
from reconciler.keys import Key, agent_key
from reconciler.models import (
    AgentId,
    AgentStatus,
    Task,
    TaskId,
    TaskState,
    assign,
    requeue,
    task_id_for,
    transition,
)
from reconciler.run.probes import HealthReport, HostProbes, RestartReport
from reconciler.settings import ApiSettings, ForgejoSettings, HostSettings, Settings
from reconciler.store import Store
from reconciler.store.storage import load_state
from tests.sandbox_fixtures import ManualClock

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
REPO = "acme/web"
OPERATOR = "operator-token-for-tests"
ENROLMENT = "enrolment-secret-for-tests"


def make_settings(*, enrolment: bool = True, hosts: tuple[HostSettings, ...] = ()) -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url="https://forgejo.example.org",
            token=SecretStr("t"),
            repos=(REPO,),
            bot_login="fleet",
        ),
        api=ApiSettings(
            operator_token=SecretStr(OPERATOR),
            enrolment_secret=SecretStr(ENROLMENT) if enrolment else None,
            heartbeat_interval=60,
            missed_heartbeats=3,
        ),
        hosts=hosts,
    )


class FakeHealth:
    """A health check's result, as ``reconciler.run.hosts.HostHealth`` reports it."""

    def __init__(self, *problems: str) -> None:
        self.problems = tuple(problems)

    @property
    def healthy(self) -> bool:
        return not self.problems


class FakeRestart:
    def __init__(self, ok: bool = True, exit_code: int | None = 0, output: str = "") -> None:
        self.ok, self.exit_code, self.output = ok, exit_code, output


class FakeHosts:
    """Stands in for ssh: what each host's check finds, and every check and restart made."""

    def __init__(self) -> None:
        self.health: dict[str, FakeHealth] = {}
        self.checks: list[str] = []
        self.restarts: list[str] = []
        self.restart_outcome = FakeRestart(ok=True, exit_code=0, output="agent service restarted")

    def check(self, host: HostSettings, *, command: str, timeout: float) -> HealthReport:
        assert command and timeout > 0
        self.checks.append(host.name)
        return self.health.get(host.name, FakeHealth())

    def restart(self, host: HostSettings, *, timeout: float) -> RestartReport:
        self.restarts.append(host.name)
        return self.restart_outcome


class Harness:
    """The registry as the daemon wires it, on a real store, with time in the test's hands."""

    def __init__(self, path: Path, settings: Settings | None = None) -> None:
        self.clock = ManualClock(NOW)
        self.current = settings or make_settings()
        self.store = Store.open(path / "state")
        self.enqueued: list[Key] = []
        self.hosts = FakeHosts()
        self.fleet = Fleet(
            self.store, settings=self.settings, clock=self.clock, enqueue=self.enqueued.append
        )
        self.probes = self.new_probes()
        self.controller = RegistryController(
            self.store,
            self.fleet,
            Actuator(
                ActContext(gateway=None, store=self.store, enqueue=self.enqueued.append)  # type: ignore[arg-type]  # the registry never calls Forgejo
            ),
            settings=self.settings,
            clock=self.clock,
            probes=self.probes,
        )

    def new_probes(self) -> HostProbes:
        """Host probes with the fake ssh, run in the test's thread (see reconcile)."""
        return HostProbes(
            settings=self.settings,
            clock=self.clock,
            enqueue=self.enqueued.append,
            check=self.hosts.check,
            restart=self.hosts.restart,
        )

    def settings(self) -> Settings:
        return self.current

    def restart_process(self) -> None:
        """A new Fleet and controller over the same store, as after a daemon restart."""
        self.fleet = Fleet(
            self.store, settings=self.settings, clock=self.clock, enqueue=self.enqueued.append
        )
        self.probes = self.new_probes()
        self.controller = RegistryController(
            self.store,
            self.fleet,
            Actuator(ActContext(gateway=None, store=self.store, enqueue=self.enqueued.append)),  # type: ignore[arg-type]
            settings=self.settings,
            clock=self.clock,
            probes=self.probes,
        )

    def register(
        self, agent_id: str | None = "a1", *, credential: str | None = ENROLMENT, **profile: Any
    ) -> Registration:
        fields: dict[str, Any] = {"type": "claude-code", "hostname": "box-1"} | profile
        return self.fleet.register(Profile(**fields), agent_id=agent_id, credential=credential)

    def reconcile(self, agent_id: str) -> Result:
        """The due health checks (as the probes' thread makes them), then one reconcile."""
        self.probes.run_due()
        return self.controller.reconcile(agent_key(agent_id))

    def agent(self, agent_id: str) -> Any:
        return self.store.get_agent(agent_id)

    def task(self, number: int = 12) -> Task:
        return self.store.get_task(task_id_for(REPO, number))

    def give_task(self, agent_id: str, number: int = 12, *, running: bool = False) -> Task:
        """A task of issue ``number`` assigned to ``agent_id`` (and started) as the assignment
        controller and the agent would leave it: state and events."""
        existing = self.store.find_task(task_id_for(REPO, number))
        task = existing or Task(
            id=task_id_for(REPO, number),
            repo=REPO,
            issue_number=number,
            title=f"Issue {number}",
            created_at=self.clock(),
            updated_at=self.clock(),
        )
        if existing is None:
            self.store.put_task(task)
        task, event = assign(task, AgentId(agent_id), now=self.clock(), actor="reconciler")
        self.store.record(task, event)
        if running:
            task, event = transition(
                task, TaskState.RUNNING, now=self.clock(), actor=f"agent:{agent_id}"
            )
            self.store.record(task, event)
        return task

    def state_files(self) -> tuple[bytes, ...]:
        """The store's files, to show a pass wrote nothing."""
        return tuple(
            (self.store.path / name).read_bytes() if (self.store.path / name).exists() else b""
            for name in ("state.json", "state.journal", "events.jsonl")
        )

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


# --- registration ----------------------------------------------------------------------------


def test_register_creates_an_online_agent_whose_token_is_stored_only_as_a_digest(
    fleet: Harness,
) -> None:
    """A new agent is online at once; the store never holds the token itself."""
    outcome = fleet.register("a1", roles=("developer",), capabilities=("code:python",))
    assert outcome.created and len(outcome.token) >= 40
    agent = fleet.agent("a1")
    assert agent.status is AgentStatus.ONLINE and agent.roles == ("developer",)
    assert agent.token_hash == token_digest(outcome.token)
    assert outcome.token not in json.dumps(load_state(fleet.store.path))
    assert fleet.fleet.authenticate(outcome.token) == "a1"
    assert agent_key("a1") in fleet.enqueued


def test_register_without_an_id_generates_one(fleet: Harness) -> None:
    """An agent that does not choose its id gets a fresh one."""
    first, second = fleet.register(None), fleet.register(None)
    assert first.agent.id != second.agent.id
    assert first.agent.id.startswith("agent-")


def test_registering_an_id_again_updates_it_and_never_duplicates(fleet: Harness) -> None:
    """Same id, current token: the entry changes, a new token replaces the old one."""
    first = fleet.register("a1", hostname="box-1")
    again = fleet.register("a1", credential=first.token, hostname="box-2", capabilities=("review",))
    assert not again.created
    assert [a.id for a in fleet.store.list_agents()] == ["a1"]
    assert fleet.agent("a1").hostname == "box-2"
    assert fleet.agent("a1").capabilities == ("review",)
    assert fleet.fleet.authenticate(first.token) is None
    assert fleet.fleet.authenticate(again.token) == "a1"


def test_reregistering_with_a_wrong_token_is_refused(fleet: Harness) -> None:
    """Nobody takes over an agent id without its token or the enrolment secret."""
    fleet.register("a1", hostname="box-1")
    other = fleet.register("a2")
    with pytest.raises(ForbiddenError) as refused:
        fleet.register("a1", credential=other.token, hostname="evil")
    assert refused.value.code == "registration_refused"
    with pytest.raises(UnauthenticatedError):
        fleet.register("a1", credential=None, hostname="evil")
    assert fleet.agent("a1").hostname == "box-1"


def test_reregistering_with_the_enrolment_secret_is_accepted(fleet: Harness) -> None:
    """An agent that lost its token registers its id again with the enrolment secret."""
    lost = fleet.register("a1")
    again = fleet.register("a1", credential=ENROLMENT, hostname="rebuilt")
    assert not again.created and fleet.agent("a1").hostname == "rebuilt"
    assert fleet.fleet.authenticate(lost.token) is None


def test_a_new_agent_needs_the_enrolment_secret_when_one_is_configured(fleet: Harness) -> None:
    """Without the secret, no new id; without a secret configured, enrolment is open."""
    with pytest.raises(ForbiddenError):
        fleet.register("a1", credential="guess")
    with pytest.raises(UnauthenticatedError):
        fleet.register("a1", credential=None)
    assert fleet.store.list_agents() == []
    fleet.current = make_settings(enrolment=False)
    assert fleet.register("a1", credential=None).created


def test_tokens_survive_a_restart_of_the_process(fleet: Harness) -> None:
    """The token index is rebuilt from the stored digests."""
    token = fleet.register("a1").token
    fleet.restart_process()
    assert fleet.fleet.authenticate(token) == "a1"
    assert fleet.fleet.authenticate("not-a-token") is None


def test_an_ssh_host_id_cannot_be_registered_by_a_pull_agent(fleet: Harness) -> None:
    """A host from [[hosts]] keeps its id even against the enrolment secret."""
    fleet.current = make_settings(hosts=(host("build-01"), host("build-02")))
    fleet.reconcile("build-01")
    for name in ("build-01", "build-02"):  # on record, or only declared so far
        with pytest.raises(ConflictError) as refused:
            fleet.register(name, credential=ENROLMENT)
        assert refused.value.code == "agent_id_conflict"


# --- heartbeats ------------------------------------------------------------------------------


def test_a_heartbeat_is_soft_state_and_writes_nothing(fleet: Harness) -> None:
    """Heartbeats update memory only: the store's files do not change."""
    fleet.register("a1")
    before = fleet.state_files()
    fleet.clock.advance(60)
    reply = fleet.fleet.heartbeat("a1", load=0.5, version="1.4.2")
    assert reply.stop == () and reply.agent.status is AgentStatus.ONLINE
    assert fleet.state_files() == before
    assert fleet.fleet.last_seen("a1") == fleet.clock()
    view = fleet.fleet.get("a1")
    assert (view.load, view.version, view.last_heartbeat_at) == (0.5, "1.4.2", fleet.clock())


def test_after_a_restart_every_agent_gets_a_full_grace_period(fleet: Harness) -> None:
    """Heartbeats were in memory: a new process counts every agent as heard of at its start."""
    fleet.register("a1")
    fleet.clock.advance(3600)  # the daemon was down for an hour
    fleet.restart_process()
    assert fleet.fleet.last_seen("a1") == fleet.clock()
    assert fleet.fleet.is_alive(fleet.agent("a1"), now=fleet.clock.advance(179))
    assert not fleet.fleet.is_alive(fleet.agent("a1"), now=fleet.clock.advance(1))


def test_the_heartbeat_reply_says_which_tasks_to_stop(fleet: Harness) -> None:
    """Unknown, requeued, reassigned, superseded and finished tasks are to be stopped."""
    fleet.register("a1")
    fleet.register("b1")
    mine = fleet.give_task("a1", 1, running=True)
    fleet.give_task("b1", 2)
    lost = fleet.give_task("a1", 3)
    requeued, event = requeue(lost, now=fleet.clock(), actor="reconciler", reason="test")
    fleet.store.record(requeued, event)
    done = fleet.give_task("a1", 4, running=True)
    cancelled, event = transition(done, TaskState.CANCELLED, now=fleet.clock(), actor="reconciler")
    fleet.store.record(cancelled, event)
    reply = fleet.fleet.heartbeat(
        "a1",
        tasks=[
            HeldTask(mine.id, mine.lease_generation),
            HeldTask(task_id_for(REPO, 2), 1),
            HeldTask(lost.id, lost.lease_generation),
            HeldTask(done.id, done.lease_generation),
            HeldTask(TaskId("99-00000000"), 1),
            HeldTask(mine.id, mine.lease_generation + 1),
        ],
    )
    assert [(s.task_id, s.code) for s in reply.stop] == [
        (task_id_for(REPO, 2), "reassigned"),
        (lost.id, "requeued"),
        (done.id, "not_active"),
        ("99-00000000", "unknown_task"),
        (mine.id, "stale_lease"),
    ]


def test_a_deregistered_agent_must_register_again(fleet: Harness) -> None:
    """Its heartbeats are refused until it registers again (with its token)."""
    token = fleet.register("a1").token
    fleet.fleet.deregister("a1")
    with pytest.raises(ConflictError) as refused:
        fleet.fleet.heartbeat("a1")
    assert refused.value.code == "agent_deregistered"
    fleet.register("a1", credential=token)
    assert fleet.fleet.heartbeat("a1").stop == ()


# --- drains, placement, listings -------------------------------------------------------------


def test_a_draining_agent_takes_no_new_tasks_and_finishes_its_own(fleet: Harness) -> None:
    """Draining: out of placement at once; its tasks are neither stopped nor taken back."""
    fleet.register("a1", max_concurrency=2)
    fleet.register("b1")
    task = fleet.give_task("a1", running=True)
    assert [a.id for a in fleet.fleet.available_agents()] == ["b1", "a1"]  # least loaded first
    drained = fleet.fleet.set_draining("a1", True, by="an operator")
    assert drained.status is AgentStatus.DRAINING and drained.drain_requested
    assert [a.id for a in fleet.fleet.available_agents()] == ["b1"]
    fleet.clock.advance(60)
    assert fleet.fleet.heartbeat("a1", tasks=[HeldTask(task.id, task.lease_generation)]).stop == ()
    fleet.reconcile("a1")
    assert fleet.task().state is TaskState.RUNNING and fleet.task().agent_id == "a1"
    assert fleet.agent("a1").status is AgentStatus.DRAINING
    fleet.fleet.set_draining("a1", False, by="an operator")
    assert fleet.agent("a1").status is AgentStatus.ONLINE


def test_available_agents_leave_out_offline_full_and_silent_ones(fleet: Harness) -> None:
    """Placement sees online agents with a free slot that were heard of within their grace."""
    fleet.register("full")
    fleet.register("free", max_concurrency=2)
    fleet.give_task("full")
    fleet.give_task("free", 13)
    assert [a.id for a in fleet.fleet.available_agents()] == ["free"]
    fleet.clock.advance(180)
    assert fleet.fleet.available_agents() == []  # silent, even before the registry looks


def test_agents_are_listed_by_capability_status_and_role(fleet: Harness) -> None:
    """Each filter narrows the list; capabilities must all be present."""
    fleet.register("py", roles=("developer",), capabilities=("code:python", "test"))
    fleet.register("rust", roles=("developer",), capabilities=("code:rust",))
    fleet.register("rev", roles=("code-reviewer",), capabilities=("code:python", "review"))
    fleet.fleet.set_draining("rust", True, by="the agent")

    def ids(**filters: Any) -> list[str]:
        return [v.agent.id for v in fleet.fleet.agents(**filters)]

    assert ids() == ["py", "rev", "rust"]
    assert ids(capabilities=["code:python"]) == ["py", "rev"]
    assert ids(capabilities=["code:python", "test"]) == ["py"]
    assert ids(role="developer") == ["py", "rust"]
    assert ids(status=AgentStatus.DRAINING) == ["rust"]
    assert ids(status=AgentStatus.ONLINE, role="developer") == ["py"]
    assert ids(role="marketer") == []


def test_a_listing_shows_current_tasks_heartbeat_and_stats(fleet: Harness) -> None:
    """Current tasks, last heartbeat and the stats block come with each agent."""
    fleet.register("a1")
    fleet.give_task("a1", running=True)
    fleet.clock.advance(30)
    fleet.fleet.heartbeat("a1", load=1.5)
    summary = AgentSummary.of(fleet.fleet.get("a1"))
    assert [(t.state, t.lease_generation) for t in summary.current_tasks] == [
        (TaskState.RUNNING, 1)
    ]
    assert summary.last_heartbeat_at == fleet.clock() and summary.load == 1.5
    assert summary.stats.uptime_percent == 100.0
    assert summary.stats.tasks_completed == 0 and summary.stats.average_duration_s is None


def test_uptime_is_the_share_of_time_up_since_registration(fleet: Harness) -> None:
    """Online 30 minutes, offline 10, online 20 again: 50 of 60 minutes up."""
    agent = fleet.register("a1").agent
    agent = with_status(agent, AgentStatus.OFFLINE, reason="x", now=fleet.clock.advance(1800))
    agent = with_status(agent, AgentStatus.ONLINE, reason="", now=fleet.clock.advance(600))
    fleet.clock.advance(1200)
    from reconciler.fleet.records import uptime_percent

    assert uptime_percent(agent, now=fleet.clock()) == pytest.approx(83.3)
    assert agent.stats.online_seconds == 1800


# --- the table and the metric ----------------------------------------------------------------


def test_the_agents_table_says_why_an_agent_is_offline(fleet: Harness) -> None:
    """Offline agents carry their reason; the table shows it beside the status."""
    fleet.register("a1", roles=("developer",), capabilities=("code:python",))
    fleet.register("b1")
    fleet.clock.advance(185)
    fleet.fleet.heartbeat("b1")
    fleet.reconcile("a1")
    table = agents_table(
        [AgentSummary.of(v) for v in fleet.fleet.agents()], now=fleet.clock.advance(5)
    )
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "MODE"]
    a1 = next(line for line in lines if line.startswith("a1"))
    assert "offline" in a1 and "no heartbeat for 3 min 5 s (3 missed intervals)" in a1
    assert "developer" in a1 and "code:python" in a1 and "3 min 10 s ago" in a1
    assert "5 s ago" in next(line for line in lines if line.startswith("b1"))
    assert agents_table([], now=fleet.clock()) == "no agents registered"


def test_metrics_count_agents_by_status(fleet: Harness) -> None:
    """/metrics reads the counts at scrape time."""
    metrics = Metrics()
    fleet.fleet.bind_metrics(metrics)
    fleet.register("a1")
    fleet.register("b1")
    fleet.fleet.set_draining("b1", True, by="an operator")
    text = metrics.render().decode()
    assert 'agent_fleet_agents{status="online"} 1.0' in text
    assert 'agent_fleet_agents{status="draining"} 1.0' in text
    assert 'agent_fleet_agents{status="offline"} 0.0' in text


def host(name: str, **changes: Any) -> HostSettings:
    return HostSettings.model_validate(
        {"name": name, "address": f"{name}.example.org", "workdir": "/srv/agent", **changes}
    )
