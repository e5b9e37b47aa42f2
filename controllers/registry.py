"""The registry controller (key: one agent id): who is online, and what a lost agent leaves behind.

``reconcile(("registry", "", agent_id))`` observes the agent's record, its soft state in the
:class:`~reconciler.fleet.agents.Fleet` (the last heartbeat) and the tasks it holds, plans with the
pure :func:`plan`, and applies the actions:

* a pull agent silent for ``missed_heartbeats × heartbeat_interval`` goes offline, with the
  reason (``no heartbeat for 3 min 5 s (3 missed intervals)``); one that deregistered too;
* an offline agent's assigned and running tasks become ``agent_lost`` and are requeued
  (``created``, lease generation kept, so the next assignment bumps it past the lost agent's
  lease), and each task's issue key is enqueued so the assignment controller places it again;
* an agent heard of again comes back online (or draining, if a drain was asked for);
* an ssh host declared in ``[[hosts]]`` is an agent too: its record follows the config; its
  health checks run every ``health_interval`` off the loop (``reconciler.run.probes``), and
  the registry reads each result once: it goes offline after ``failures_before_offline``
  failed checks in a row with the problems as the reason, and its ``restart_command`` is
  started once per failure streak (off the loop too), the outcome in its status reason.
  No ssh call is made inside a reconcile.

The result asks to look again when the agent's grace period or the host's next check is due,
so no loop polls the fleet. The registry writes an agent's tasks under the Fleet's per-agent
lock and only if no heartbeat arrived since it observed: either the heartbeat wins and the
agent is not lost, or the tasks are requeued first and the heartbeat's reply tells the agent
to stop them — never both running.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog

from reconciler.engine.reconcile import (
    ActContext,
    Action,
    Actuator,
    Enqueue,
    Result,
    SaveAgent,
    SaveTask,
)
from reconciler.errors import WaitingError
from reconciler.fleet.agents import LOST_WITH_AGENT, Fleet
from reconciler.fleet.placement import waiting_for
from reconciler.fleet.records import Pulse, grace_period, with_status
from reconciler.keys import REGISTRY, Key, issue_key
from reconciler.models import (
    RECONCILER_ACTOR,
    Agent,
    AgentId,
    AgentStatus,
    ExecutionMode,
    Task,
    TaskId,
    TaskState,
    requeue,
    transition,
)
from reconciler.run.probes import HealthReport, HostProbes, RestartReport
from reconciler.settings import HostSettings, Settings
from reconciler.store import Store
from reconciler.text import format_duration

log = structlog.get_logger(__name__)

# Seconds added to a computed wake-up time, so the pass after it finds the deadline passed
# rather than a hair before it.
WAKE_SLACK = 1.0
NOT_CHECKED = "not health-checked yet"
RESTART_MARK = " · restart: "


@dataclass(frozen=True)
class Observed:
    """Everything :func:`plan` may look at, read once per reconcile."""

    agent_id: AgentId
    agent: Agent | None
    pulse: Pulse | None  # the last heartbeat this process received
    last_seen: datetime  # that heartbeat's time, or the process start
    tasks: tuple[Task, ...]  # live assigned/running tasks whose lease the agent holds
    host: HostSettings | None = None  # its [[hosts]] entry (ssh agents)
    health: HealthReport | None = None  # a check not yet counted; None when none is new
    checked_at: datetime | None = None  # when the host was last checked
    restarted: RestartReport | None = None  # a restart's outcome not yet shown
    probe_seq: int = 0  # the sequence numbers of the check and restart read (0: none)
    restart_seq: int = 0
    # When each of its ``assigned`` tasks was handed to it (pull agents): the tasks whose
    # receipt its heartbeats must confirm within ``api.handout_grace``.
    handed_out: Mapping[TaskId, datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class RestartHost(Action):
    """Start an unhealthy host's restart command off the loop; its outcome comes back through
    the probes and a later pass puts it in the host's status reason."""

    host: HostSettings
    timeout: float
    probes: HostProbes | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        return f"host {self.host.name}: run its restart command ({self.host.restart_command})"

    def apply(self, ctx: ActContext) -> None:
        if self.probes is None:
            raise RuntimeError("RestartHost needs the host probes to run the restart")
        self.probes.restart(self.host, timeout=self.timeout)


def describe_restart(outcome: RestartReport) -> str:
    """One line for a status reason: how the restart command ended, with its last output."""
    verdict = "succeeded" if outcome.ok else "failed"
    exit_text = f" (exit {outcome.exit_code})" if outcome.exit_code is not None else ""
    lines = [line for line in outcome.output.strip().splitlines() if line.strip()]
    last = f": {lines[-1].strip()[:200]}" if lines else ""
    return f"{verdict}{exit_text}{last}"


# --- the plan -----------------------------------------------------------------------------


def plan(observed: Observed, *, now: datetime, settings: Settings) -> tuple[Action, ...]:
    """Decide what must change for one agent. Pure: no I/O, no clock."""
    before = observed.agent
    restart: Action | None = None
    if before is None:
        if observed.host is None:
            # Tasks may still name an agent whose record is gone: take them back too.
            return take_back(
                observed.tasks, why=f"agent {observed.agent_id} is not registered", now=now
            )
        after = plan_host(host_agent(observed.host, now=now), observed, now=now, settings=settings)
    elif before.mode is ExecutionMode.SSH:
        after = plan_host(before, observed, now=now, settings=settings)
    else:
        after = plan_pull(before, observed, now=now, settings=settings)

    host = observed.host
    if (
        host is not None
        and host.restart_command
        and after.restarted_in_streak
        and not (before is not None and before.restarted_in_streak)
    ):
        restart = RestartHost(host, timeout=settings.timeouts.dispatch)

    if observed.restarted is not None and after.status is AgentStatus.OFFLINE:
        reason = after.status_reason.split(RESTART_MARK)[0]
        summary = describe_restart(observed.restarted)
        after = after.model_copy(update={"status_reason": f"{reason}{RESTART_MARK}{summary}"})

    actions: list[Action] = []
    if after != before:
        actions.append(SaveAgent(after, observed=before, summary=_summary(before, after)))
    if after.status is AgentStatus.OFFLINE:
        why = f"agent {after.id} went offline: {after.status_reason or 'offline'}"
        actions.extend(take_back(observed.tasks, why=why, now=now))
    elif after.mode is ExecutionMode.PULL:
        actions.extend(take_back_unreceived(observed, now=now, settings=settings))
    if restart is not None:
        actions.append(restart)
    return tuple(actions)


def plan_pull(agent: Agent, observed: Observed, *, now: datetime, settings: Settings) -> Agent:
    """A pull agent's record as it should be: alive by its heartbeats, unless it left."""
    api = settings.api
    silent = (now - observed.last_seen).total_seconds()
    heard = observed.pulse.at if observed.pulse is not None else agent.last_heartbeat_at
    if agent.deregistered:
        return _become(agent, AgentStatus.OFFLINE, "deregistered by the agent", now, heard=heard)
    if agent.status is AgentStatus.OFFLINE and observed.pulse is None:
        # The grace a restart gives is for agents that were up; an offline one comes back
        # only by a heartbeat this process received.
        return agent
    if now - observed.last_seen >= grace_period(api):
        if agent.status is AgentStatus.OFFLINE:
            return agent  # its reason says since when; not rewritten as time passes
        missed = int(silent // api.heartbeat_interval)
        why = f"no heartbeat for {format_duration(silent)} ({missed} missed intervals)"
        return _become(agent, AgentStatus.OFFLINE, why, now, heard=heard)
    return _become(agent, _up_status(agent), _up_reason(agent), now, heard=heard)


def plan_host(agent: Agent, observed: Observed, *, now: datetime, settings: Settings) -> Agent:
    """An ssh host's record as it should be: its config entry, and its health."""
    host = observed.host
    if host is None:
        return _become(agent, AgentStatus.OFFLINE, "no longer declared in [[hosts]]", now)
    agent = Agent.model_validate({**agent.model_dump(), **host_profile(host)})
    health = observed.health
    if health is None:  # no check due this pass: only a drain can change the status
        if agent.status is AgentStatus.OFFLINE or agent.status is _up_status(agent):
            return agent
        return _become(agent, _up_status(agent), _up_reason(agent), now)
    if health.healthy:
        healed = agent.model_copy(update={"consecutive_failures": 0, "restarted_in_streak": False})
        return _become(healed, _up_status(agent), _up_reason(agent), now)
    failures = agent.consecutive_failures + 1
    limit = host.failures_before_offline
    problems = "; ".join(health.problems) or "health check failed"
    restarted = agent.restarted_in_streak or (failures >= limit and bool(host.restart_command))
    failing = agent.model_copy(
        update={"consecutive_failures": failures, "restarted_in_streak": restarted}
    )
    if failures >= limit or agent.status is AgentStatus.OFFLINE:
        why = f"{problems} ({failures} failed checks in a row)"
        if agent.restarted_in_streak and RESTART_MARK in agent.status_reason:
            # Keep the restart's outcome on display for the rest of the streak.
            why += RESTART_MARK + agent.status_reason.split(RESTART_MARK, 1)[1]
        return _become(failing, AgentStatus.OFFLINE, why, now)
    return _become(
        failing, agent.status, f"health check failed ({failures} of {limit}): {problems}", now
    )


def unreceived(observed: Observed, *, settings: Settings) -> tuple[Task, ...]:
    """The ``assigned`` tasks whose dequeue answer never reached the agent: its last heartbeat
    came ``api.handout_grace`` or more after the handout and does not list them."""
    pulse = observed.pulse
    if pulse is None:
        return ()  # not heard of since this process started: nothing to judge by
    grace = timedelta(seconds=settings.api.handout_grace)
    mentioned = {held.task_id for held in pulse.tasks}
    return tuple(
        task
        for task in observed.tasks
        if task.state is TaskState.ASSIGNED
        and task.id not in mentioned
        and task.id in observed.handed_out
        and pulse.at - observed.handed_out[task.id] >= grace
    )


def take_back_unreceived(
    observed: Observed, *, now: datetime, settings: Settings
) -> tuple[Action, ...]:
    """Requeue each task handed out but never received (see :func:`unreceived`)."""
    actions: list[Action] = []
    pulse = observed.pulse
    if pulse is None:
        return ()
    for task in unreceived(observed, settings=settings):
        after = format_duration((pulse.at - observed.handed_out[task.id]).total_seconds())
        why = (
            f"agent {observed.agent_id} never received the task: its heartbeat {after} after "
            "the handout does not list it"
        )
        actions.extend(
            take_back((task,), why=why, now=now, requeued="requeued: the handout was lost")
        )
    return tuple(actions)


def take_back(
    tasks: tuple[Task, ...],
    *,
    why: str,
    now: datetime,
    requeued: str = "requeued: its agent was lost",
) -> tuple[Action, ...]:
    """Each task → ``agent_lost`` → requeued (two events), and its issue key enqueued."""
    actions: list[Action] = []
    for task in tasks:
        if task.state not in LOST_WITH_AGENT:
            continue
        lost, lost_event = transition(
            task, TaskState.AGENT_LOST, now=now, actor=RECONCILER_ACTOR, reason=why
        )
        queued, queued_event = requeue(lost, now=now, actor=RECONCILER_ACTOR, reason=requeued)
        actions.append(SaveTask(queued, (lost_event, queued_event), expected=task))
        actions.append(Enqueue(issue_key(task.repo, task.issue_number)))
    return tuple(actions)


def host_profile(host: HostSettings) -> dict[str, object]:
    """The fields of an ssh agent's record that its ``[[hosts]]`` entry decides."""
    return {
        "type": host.agent_type,
        "hostname": host.address,
        "roles": host.roles,
        "capabilities": host.capabilities,
        "max_concurrency": host.max_concurrency,
        "forgejo_login": host.forgejo_login or "",
        "mode": ExecutionMode.SSH,
        "metadata": {"workdir": host.workdir},
    }


def host_agent(host: HostSettings, *, now: datetime) -> Agent:
    """The record a newly declared host starts with: offline until its first check passes."""
    return Agent.model_validate(
        {
            "id": host.name,
            **host_profile(host),
            "status": AgentStatus.OFFLINE,
            "status_reason": NOT_CHECKED,
            "status_since": now,
            "registered_at": now,
        }
    )


def next_look(observed: Observed, *, now: datetime, settings: Settings) -> float | None:
    """Seconds until this agent needs looking at again, or None (something will enqueue it)."""
    agent = observed.agent
    if observed.host is not None:
        if observed.checked_at is None:
            return observed.host.health_interval
        due = observed.checked_at.timestamp() + observed.host.health_interval
        return max(due - now.timestamp(), 0.0) + WAKE_SLACK
    if agent is None or agent.mode is ExecutionMode.SSH or agent.deregistered:
        return None
    deadline = observed.last_seen + grace_period(settings.api)
    if deadline <= now:
        return None  # offline now: its next heartbeat enqueues it
    wait = (deadline - now).total_seconds()
    if observed.handed_out:
        # A handout not yet confirmed: look when its grace ends, then once a heartbeat later
        # for as long as it stays unconfirmed (the registry is not told of every heartbeat).
        grace = timedelta(seconds=settings.api.handout_grace)
        ends = min(observed.handed_out.values()) + grace
        due = (ends - now).total_seconds() if ends > now else settings.api.heartbeat_interval
        wait = min(wait, due)
    return wait + WAKE_SLACK


def _up_status(agent: Agent) -> AgentStatus:
    return AgentStatus.DRAINING if agent.drain_requested else AgentStatus.ONLINE


def _up_reason(agent: Agent) -> str:
    if not agent.drain_requested:
        return ""
    # Keep who asked for the drain when it already says so.
    if agent.status is AgentStatus.DRAINING and agent.status_reason:
        return agent.status_reason
    return "drain requested"


def _become(
    agent: Agent, status: AgentStatus, reason: str, now: datetime, *, heard: datetime | None = None
) -> Agent:
    """``agent`` in ``status`` for ``reason``; a change of status records the last heartbeat."""
    if status is agent.status:
        return agent.model_copy(update={"status_reason": reason})
    changed = with_status(agent, status, reason=reason, now=now)
    if heard is not None:
        changed = changed.model_copy(update={"last_heartbeat_at": heard})
    return changed


def _summary(before: Agent | None, after: Agent) -> str:
    if before is None:
        return f"new ssh agent from [[hosts]], {after.status}" + (
            f" ({after.status_reason})" if after.status_reason else ""
        )
    if before.status is not after.status:
        return f"{before.status} → {after.status}" + (
            f" ({after.status_reason})" if after.status_reason else ""
        )
    if before.consecutive_failures != after.consecutive_failures:
        return f"{after.consecutive_failures} failed health checks in a row"
    return "record updated"


# --- the controller -----------------------------------------------------------------------


class RegistryController:
    name = REGISTRY

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        actuator: Actuator,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        probes: HostProbes,
    ) -> None:
        self._store = store
        self._fleet = fleet
        self._actuator = actuator
        self._settings = settings
        self._clock = clock
        self._probes = probes
        # The last check and restart of each host already counted: soft state, like the
        # probes' results (a restarted daemon checks every host at once).
        self._counted: dict[AgentId, int] = {}
        self._noted: dict[AgentId, int] = {}

    def observe(self, key: Key, *, now: datetime, settings: Settings) -> Observed:
        agent_id = AgentId(key.id)
        agent = self._store.find_agent(agent_id)
        host = next((h for h in settings.hosts if h.name == agent_id), None)
        if agent is not None and agent.mode is not ExecutionMode.SSH:
            host = None  # a pull agent registered this id first; the host cannot take it
        tasks = tuple(self._store.list_tasks(state=LOST_WITH_AGENT, agent_id=agent_id))
        handed_out: dict[TaskId, datetime] = {}
        if agent is not None and agent.mode is ExecutionMode.PULL:
            for task in tasks:
                if task.state is TaskState.ASSIGNED:
                    at = handout_time(self._store, task)
                    if at is not None:
                        handed_out[task.id] = at
        probe = self._probes.latest(agent_id) if host is not None else None
        restart = self._probes.restarted(agent_id) if host is not None else None
        return Observed(
            agent_id=agent_id,
            agent=agent,
            pulse=self._fleet.pulse(agent_id),
            last_seen=self._fleet.last_seen(agent_id),
            tasks=tasks,
            host=host,
            health=probe.health if probe and probe.seq > self._counted.get(agent_id, 0) else None,
            checked_at=probe.checked_at if probe else None,
            restarted=(
                restart.outcome if restart and restart.seq > self._noted.get(agent_id, 0) else None
            ),
            probe_seq=probe.seq if probe else 0,
            handed_out=handed_out,
            restart_seq=restart.seq if restart else 0,
        )

    def reconcile(self, key: Key) -> Result:
        now = self._clock()
        settings = self._settings()
        observed = self.observe(key, now=now, settings=settings)
        actions = tuple(
            RestartHost(a.host, timeout=a.timeout, probes=self._probes)
            if isinstance(a, RestartHost)
            else a
            for a in plan(observed, now=now, settings=settings)
        )
        if actions and observed.agent is not None and observed.agent.mode is ExecutionMode.PULL:
            with self._fleet.agent_lock(key.id):
                if self._fleet.pulse(key.id) is not observed.pulse:
                    raise WaitingError(
                        f"agent {key.id} sent a heartbeat while being reconciled; looking again",
                        retry_after=0.0,
                    )
                self._actuator.apply(actions)
        else:
            self._actuator.apply(actions)
        # The results this pass read are counted: each is acted on once.
        if observed.probe_seq:
            self._counted[observed.agent_id] = observed.probe_seq
        if observed.host is not None and observed.checked_at is not None:
            self._fleet.record_check(observed.agent_id, at=observed.checked_at)
        if observed.restart_seq:
            self._noted[observed.agent_id] = observed.restart_seq
        self._offer_free_slots(key.id, now=now)
        return Result(requeue_after=next_look(observed, now=now, settings=settings))

    def _offer_free_slots(self, agent_id: str, *, now: datetime) -> None:
        """An online ssh host with free slots: the waiting tasks it could take are looked at
        now (it just came online, or a slot freed since the last check), not at the next
        resync. Pull agents take their tasks themselves."""
        agent = self._store.find_agent(agent_id)
        if agent is None or agent.mode is not ExecutionMode.SSH:
            return
        waiting = waiting_for(agent, tasks=self._store.list_tasks(), now=now)
        self._actuator.apply([Enqueue(issue_key(t.repo, t.issue_number)) for t in waiting])


def handout_time(store: Store, task: Task) -> datetime | None:
    """When ``task`` was last assigned (its latest event into ``assigned``), or None."""
    for event in reversed(store.events_for(task.id)):
        if event.to_state is TaskState.ASSIGNED:
            return event.at
    return None
