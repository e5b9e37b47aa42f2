"""The agent registry's domain service: who is in the fleet, who is alive, who may do what.

One :class:`Fleet` per process, built by the daemon (``webhook.daemon.build``). The agent API
(``webhook/agents_api.py``) calls it for every request — register, authenticate, heartbeat,
deregister, drain, status updates, listings — and the registry controller
(``controllers/registry.py``) reads its soft state to decide who is offline.

**Heartbeats are soft state.** The time of an agent's last heartbeat, its reported load, the
tasks it says it runs and its version are kept in memory only: a durable write per heartbeat
rewrites the whole state file (≈15 ms at 1,000 records) and cannot reach 1,000 heartbeats a
second. ``Agent.last_heartbeat_at`` is written only with a status change. The price is paid
at a restart: nobody knows when an agent was last heard of, so every agent counts as heard of
when the process started and gets one full grace period (``missed_heartbeats ×
heartbeat_interval``) from then.

**Tokens** are 256-bit random strings, shown once (at registration) and stored only as a
SHA-256 digest. An in-memory index digest → agent id makes authentication one dictionary
lookup instead of a scan.

**One lock per agent** (striped) orders what an agent's requests do against the registry
controller taking its tasks back: either a heartbeat lands first and the agent is not lost,
or the tasks are requeued first and the heartbeat's reply tells the agent to stop them. This
is what keeps a lost heartbeat from ever leaving a task with two agents that both believe
they hold it.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime

import structlog

from reconciler.engine.metrics import Metrics, SpendToday
from reconciler.errors import (
    ConflictError,
    ForbiddenError,
    UnauthenticatedError,
)
from reconciler.fleet.budgets import read_spend_today
from reconciler.fleet.health import end_auto_drain
from reconciler.fleet.placement import active_load, queue_order
from reconciler.fleet.records import (
    AgentView,
    HeartbeatReply,
    HeldTask,
    Profile,
    Pulse,
    Registration,
    StopOrder,
    canonical_agent_id,
    grace_period,
    issue_token,
    token_digest,
    uptime_percent,
    with_status,
)
from reconciler.fleet.reports import AGENT_SETTABLE_STATES, LOST_WITH_AGENT, TaskReports
from reconciler.keys import Key, agent_key, setup_key
from reconciler.models import (
    ACTIVE_STATES,
    Agent,
    AgentId,
    AgentStatus,
    ExecutionMode,
    Task,
    TaskState,
)
from reconciler.settings import Settings
from reconciler.store import Store

log = structlog.get_logger(__name__)

_LOCK_STRIPES = 64


# --- the service -----------------------------------------------------------------------------


class Fleet(TaskReports):
    def __init__(
        self,
        store: Store,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        enqueue: Callable[[Key], None] | None = None,
        follow_up: Callable[[Key], None] | None = None,
    ) -> None:
        """``enqueue`` asks a controller for a fresh look (an agent's key, a repository's set-up);
        ``follow_up`` hands on the issue key of a task an agent's report moved — work under way,
        which needs no fresh read of the issue (the daemon's urgent keys; ``enqueue`` if None)."""
        self._store = store
        self._settings = settings
        self._clock = clock
        self._enqueue = enqueue
        self._follow_up = follow_up or enqueue
        # Every known agent counts as heard of at start: one full grace period after a restart.
        self.started_at = clock()
        self._pulses: dict[AgentId, Pulse] = {}
        # ssh hosts: when each was last health-checked (soft state, as heartbeats are).
        self._checked: dict[AgentId, datetime] = {}
        self._stripes = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))
        # Registration allocates ids and rewrites the token index: one at a time.
        self._registering = threading.Lock()
        self._token_index: dict[str, AgentId] = {
            agent.token_hash: agent.id for agent in store.list_agents() if agent.token_hash
        }

    @property
    def clock(self) -> Callable[[], datetime]:
        """The clock the registry judges liveness by; the pull queue shares it."""
        return self._clock

    # --- locks and soft state ----------------------------------------------------------------

    @contextlib.contextmanager
    def agent_lock(self, agent_id: str) -> Iterator[None]:
        """Serialise what one agent's requests and the registry controller do to it."""
        with self._stripes[hash(agent_id) % _LOCK_STRIPES]:
            yield

    def pulse(self, agent_id: str) -> Pulse | None:
        """The agent's last heartbeat since this process started, or None."""
        return self._pulses.get(AgentId(agent_id))

    def record_check(self, agent_id: str, *, at: datetime) -> None:
        """Note when an ssh host was last health-checked; listings show it as last heard of."""
        self._checked[AgentId(agent_id)] = at

    def last_seen(self, agent_id: str) -> datetime:
        """When the agent was last heard of: its last heartbeat, or the process start."""
        pulse = self._pulses.get(AgentId(agent_id))
        return pulse.at if pulse is not None else self.started_at

    def is_alive(self, agent: Agent, *, now: datetime) -> bool:
        """Whether a pull agent has been heard of within its grace period (ssh hosts: always;
        their health checks decide)."""
        if agent.mode is ExecutionMode.SSH:
            return True
        return now - self.last_seen(agent.id) < grace_period(self._settings().api)

    def _notify(self, agent_id: str) -> None:
        if self._enqueue is not None:
            self._enqueue(agent_key(agent_id))

    def _vocabulary_changed(self) -> None:
        """An agent's roles or capabilities are new: the set-up controller (the one writer of
        labels) makes their ``agent/`` and ``needs/`` labels in every watched repository."""
        if self._enqueue is not None:
            for repo in self._settings().forgejo.repos:
                self._enqueue(setup_key(repo))

    # --- credentials -------------------------------------------------------------------------

    def authenticate(self, token: str) -> AgentId | None:
        """The agent a registry token belongs to, or None for a token nobody was issued."""
        if not token:
            return None
        return self._token_index.get(token_digest(token))

    def is_operator(self, token: str) -> bool:
        """Whether ``token`` is the configured operator token (constant-time compare)."""
        configured = self._settings().api.operator_token
        if configured is None or not token:
            return False
        return hmac.compare_digest(token.encode(), configured.get_secret_value().encode())

    def _is_enrolment_secret(self, credential: str | None) -> bool:
        secret = self._settings().api.enrolment_secret
        if secret is None or not credential:
            return False
        return hmac.compare_digest(credential.encode(), secret.get_secret_value().encode())

    # --- registration ------------------------------------------------------------------------

    def register(
        self, profile: Profile, *, agent_id: str | None, credential: str | None
    ) -> Registration:
        """Register a new agent, or register an existing id again (updating its profile).

        ``credential`` is what the caller presented as its bearer token. A new id needs the
        enrolment secret when one is configured; an existing id needs its current token or
        the enrolment secret, so nobody can take over an agent id. Either way a new token is
        issued and the old one stops working.
        """
        now = self._clock()
        token = issue_token()
        digest = token_digest(token)
        canonical = canonical_agent_id(agent_id) if agent_id is not None else None
        for host in self._settings().hosts:
            if canonical is not None and canonical_agent_id(host.name) == canonical:
                raise ConflictError(
                    "agent_id_conflict",
                    f"agent id {agent_id!r} is (or looks like) the ssh host {host.name!r} "
                    "declared in the configuration",
                )
        with self._registering:
            existing = self._store.find_agent(agent_id) if agent_id else None
            if agent_id is not None and existing is None:
                self._refuse_look_alike(agent_id)
            if existing is None:
                self._check_enrolment(credential)
                new_id = AgentId(agent_id) if agent_id else self._new_id()
                with self.agent_lock(new_id):
                    agent = Agent.model_validate(
                        {
                            "id": new_id,
                            "token_hash": digest,
                            "registered_at": now,
                            "status": AgentStatus.ONLINE,
                            "status_since": now,
                            "last_heartbeat_at": now,
                            **_profile_fields(profile),
                        }
                    )
                    self._store.put_agent(agent)
                    self._pulses[new_id] = Pulse(at=now)
                self._token_index[digest] = new_id
                created = True
            else:
                self._check_reregistration(existing, credential)
                with self.agent_lock(existing.id):

                    def change(current: Agent) -> Agent:
                        return Agent.model_validate(
                            {
                                **current.model_dump(),
                                **_profile_fields(profile),
                                "token_hash": digest,
                                "deregistered": False,
                                "last_heartbeat_at": now,
                            }
                        )

                    agent = self._store.update_agent(existing.id, change)
                    self._pulses[agent.id] = Pulse(at=now)
                self._token_index.pop(existing.token_hash, None)
                self._token_index[digest] = agent.id
                created = False
        if existing is None or (existing.roles, existing.capabilities) != (
            agent.roles,
            agent.capabilities,
        ):
            self._vocabulary_changed()
        log.info(
            "agent.registered" if created else "agent.reregistered",
            agent_id=agent.id,
            type=agent.type,
            hostname=agent.hostname,
        )
        self._notify(agent.id)
        return Registration(agent=agent, token=token, created=created)

    def _refuse_look_alike(self, agent_id: str) -> None:
        canonical = canonical_agent_id(agent_id)
        for agent in self._store.list_agents():
            if agent.id != agent_id and canonical_agent_id(agent.id) == canonical:
                raise ConflictError(
                    "agent_id_conflict",
                    f"agent id {agent_id!r} looks like the existing agent {agent.id!r} "
                    "(ids are compared ignoring case, trailing dots and _ versus -)",
                )

    def _check_enrolment(self, credential: str | None) -> None:
        if self._settings().api.enrolment_secret is None:
            return  # open enrolment: no secret configured (see docs/agents-api.md)
        if not credential:
            raise UnauthenticatedError(
                "missing_token",
                "registering a new agent needs the enrolment secret as the bearer token",
            )
        if not self._is_enrolment_secret(credential):
            raise ForbiddenError(
                "registration_refused", "the bearer token is not the enrolment secret"
            )

    def _check_reregistration(self, existing: Agent, credential: str | None) -> None:
        if existing.mode is ExecutionMode.SSH:
            raise ConflictError(
                "agent_id_conflict",
                f"agent id {existing.id!r} is an ssh host declared in the configuration",
            )
        needed = (
            f"agent id {existing.id!r} is registered already; present its current token or "
            "the enrolment secret to register it again"
        )
        if not credential:
            raise UnauthenticatedError("missing_token", needed)
        holds_token = bool(existing.token_hash) and hmac.compare_digest(
            token_digest(credential), existing.token_hash
        )
        if not (holds_token or self._is_enrolment_secret(credential)):
            raise ForbiddenError("registration_refused", needed)

    def _new_id(self) -> AgentId:
        while True:
            candidate = AgentId(f"agent-{secrets.token_hex(4)}")
            if self._store.find_agent(candidate) is None:
                return candidate

    def deregister(self, agent_id: str) -> Agent:
        """The agent leaves the fleet: the registry controller marks it offline and requeues
        its tasks. Its token keeps working for registering again and reading its own record."""
        with self.agent_lock(agent_id):
            agent = self._store.update_agent(
                agent_id, lambda a: a.model_copy(update={"deregistered": True})
            )
            self._pulses.pop(AgentId(agent_id), None)
        log.info("agent.deregistered", agent_id=agent_id)
        self._notify(agent_id)
        return agent

    def set_draining(self, agent_id: str, draining: bool, *, by: str) -> Agent:
        """Drain an agent (it keeps its tasks, takes no new ones) or end the drain.

        Takes effect at once, so placement stops at once; ``by`` says who asked, for the
        status reason (``the agent``, ``an operator``).
        """
        now = self._clock()

        def change(agent: Agent) -> Agent:
            if not draining and agent.auto_drained:
                return end_auto_drain(agent, now=now)
            # A person's drain is theirs to end: no success ends it automatically.
            updated = agent.model_copy(update={"drain_requested": draining, "auto_drained": False})
            if not draining:
                updated = updated.model_copy(update={"failing_runs": 0})
            if draining and agent.status is AgentStatus.ONLINE:
                return with_status(
                    updated, AgentStatus.DRAINING, reason=f"drained by {by}", now=now
                )
            if not draining and agent.status is AgentStatus.DRAINING:
                return with_status(updated, AgentStatus.ONLINE, reason="", now=now)
            return updated

        with self.agent_lock(agent_id):
            agent = self._store.update_agent(agent_id, change)
        log.info("agent.drain" if draining else "agent.undrain", agent_id=agent_id, by=by)
        self._notify(agent_id)
        return agent

    # --- heartbeats --------------------------------------------------------------------------

    def heartbeat(
        self,
        agent_id: str,
        *,
        load: float | None = None,
        version: str = "",
        tasks: Sequence[HeldTask] = (),
    ) -> HeartbeatReply:
        """Record that the agent is alive; tell it which of the tasks it reports to stop.

        A task is to be stopped when it is unknown, no longer the agent's (requeued or given
        to another agent), held under an older lease, or no longer in progress. An offline
        agent's heartbeat makes the registry controller bring it back online.
        """
        now = self._clock()
        with self.agent_lock(agent_id):
            agent = self._store.get_agent(agent_id)
            if agent.deregistered:
                raise ConflictError(
                    "agent_deregistered",
                    f"agent {agent_id} deregistered; register again to rejoin the fleet",
                )
            self._pulses[agent.id] = Pulse(at=now, load=load, version=version, tasks=tuple(tasks))
            stop = tuple(
                order
                for order in (self._stop_order(agent.id, held) for held in tasks)
                if order is not None
            )
        if agent.status is AgentStatus.OFFLINE:
            self._notify(agent.id)
        return HeartbeatReply(agent=agent, stop=stop)

    def _stop_order(self, agent_id: AgentId, held: HeldTask) -> StopOrder | None:
        task = self._store.find_task(held.task_id)
        if task is None:
            return StopOrder(held.task_id, "unknown_task", "no such task")
        if task.agent_id is None:
            return StopOrder(task.id, "requeued", f"the task was taken back ({task.state})")
        if task.agent_id != agent_id:
            return StopOrder(task.id, "reassigned", f"the task now belongs to {task.agent_id}")
        if task.lease_generation != held.lease_generation:
            return StopOrder(
                task.id,
                "stale_lease",
                f"lease {held.lease_generation} was superseded by lease {task.lease_generation}",
            )
        if task.state not in ACTIVE_STATES:
            return StopOrder(task.id, "not_active", f"the task is {task.state}")
        return None

    # --- queries -----------------------------------------------------------------------------

    def get(self, agent_id: str) -> AgentView:
        """One agent with its soft state and current tasks, or :class:`NotFoundError`."""
        agent = self._store.get_agent(agent_id)
        mine = self._store.list_tasks(state=ACTIVE_STATES, agent_id=agent.id)
        return self._view(agent, mine, now=self._clock())

    def agents(
        self,
        *,
        capabilities: Iterable[str] = (),
        status: AgentStatus | None = None,
        role: str | None = None,
    ) -> list[AgentView]:
        """Agents by id, those with every capability, the status and the role asked for."""
        wanted = tuple(capabilities)
        now = self._clock()
        agents = [
            a
            for a in self._store.list_agents(status=status)
            if all(c in a.capabilities for c in wanted) and (role is None or role in a.roles)
        ]
        held: dict[AgentId, list[Task]] = {}
        for task in self._store.list_tasks(state=ACTIVE_STATES):
            if task.agent_id is not None:
                held.setdefault(task.agent_id, []).append(task)
        return [self._view(a, held.get(a.id, []), now=now) for a in sorted(agents, key=_by_id)]

    def _view(self, agent: Agent, tasks: Sequence[Task], *, now: datetime) -> AgentView:
        pulse = self._pulses.get(agent.id)
        return AgentView(
            agent=agent,
            last_heartbeat_at=(
                self._checked.get(agent.id, agent.last_heartbeat_at)
                if agent.mode is ExecutionMode.SSH
                else pulse.at
                if pulse is not None
                else agent.last_heartbeat_at
            ),
            load=pulse.load if pulse is not None else None,
            version=(pulse.version if pulse is not None else "")
            or agent.metadata.get("version", ""),
            current_tasks=tuple(sorted(tasks, key=lambda t: t.id)),
            uptime_percent=uptime_percent(agent, now=now),
        )

    def tasks(self, *, states: Iterable[TaskState] = (), repo: str | None = None) -> list[Task]:
        """Live tasks (not yet archived), in queue order: for people and tools."""
        wanted = set(states)
        found = self._store.list_tasks(state=wanted or None, repo=repo)
        return sorted(found, key=queue_order)

    def available_agents(self) -> list[Agent]:
        """Agents that may be given a new task now, least loaded first: online (not draining,
        not deregistered), heard of within their grace period, with a free slot."""
        now = self._clock()
        load = active_load(self._store.list_tasks(state=ACTIVE_STATES))
        free = [
            a
            for a in self._store.list_agents(status=AgentStatus.ONLINE)
            if not a.deregistered
            and not a.drain_requested
            and self.is_alive(a, now=now)
            and load.get(a.id, 0) < a.max_concurrency
        ]
        return sorted(free, key=lambda a: (load.get(a.id, 0) / a.max_concurrency, a.id))

    def bind_metrics(self, metrics: Metrics) -> None:
        """Count agents by status at scrape time rather than tracking every change."""
        for status in AgentStatus:
            metrics.agents.labels(status=status.value).set_function(self._counter(status))
        metrics.bind_spend(self.spend_today)

    def spend_today(self) -> list[SpendToday]:
        """What each repository and each agent spent this UTC day (``fleet/budgets.py``)."""
        return read_spend_today(self._store, now=self._clock())

    def _counter(self, status: AgentStatus) -> Callable[[], float]:
        return lambda: float(len(self._store.list_agents(status=status)))

    def enqueue_hosts(self) -> int:
        """Ask the registry controller to look at every configured host and every ssh agent
        on record (so one removed from the configuration goes offline); return how many."""
        ids = {host.name for host in self._settings().hosts} | {
            a.id for a in self._store.list_agents() if a.mode is ExecutionMode.SSH
        }
        for agent_id in sorted(ids):
            self._notify(agent_id)
        return len(ids)


def _by_id(agent: Agent) -> str:
    return agent.id


def _profile_fields(profile: Profile) -> dict[str, object]:
    return {
        "type": profile.type,
        "hostname": profile.hostname,
        "roles": tuple(dict.fromkeys(profile.roles)),
        "capabilities": tuple(dict.fromkeys(profile.capabilities)),
        "max_concurrency": profile.max_concurrency,
        "forgejo_login": profile.forgejo_login,
        "mode": ExecutionMode.PULL,
        "metadata": dict(profile.metadata or {}),
    }


__all__ = [
    "AGENT_SETTABLE_STATES",
    "LOST_WITH_AGENT",
    "Fleet",
]
