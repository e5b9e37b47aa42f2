"""The repository set-up controller: each watched repository's labels and webhook, as state.

Key: ``("setup", "owner/name", "repository")``. The daemon enqueues one per watched repository
at start and on every config reload, the full resync enqueues them again, and an action that
finds a label missing (a person deleted ``status/doing``) asks for one. A pass observes the
repository's labels and webhooks, plans the writes that make them match the configuration
and the fleet (creating or fixing the label vocabulary — with ``agent/<role>`` and
``needs/<capability>`` for the declared hosts and every registered agent — when
``forgejo.manage_labels`` is on, the one webhook when ``forgejo.manage_webhooks`` is on) and
applies them. The registry (``reconciler/fleet/agents.py``) enqueues the set-up keys again when
a registration brings roles or capabilities. A failure (Forgejo down, a 500, a
timeout) is raised, so the loop retries the key with its backoff: a repository is never left
half set up because one write failed once.

``RepoSetupStatus`` is the one record of which repositories are set up; this controller is its
only writer, and ``/readyz`` reads it (a repository not set up makes the daemon not ready).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from reconciler.engine.reconcile import ActContext, Action, Actuator, Result
from reconciler.errors import StalledError
from reconciler.fleet.vocabulary import label_specs
from reconciler.forgejo.gateway import ForgejoGateway, webhook_events_drifted
from reconciler.forgejo.types import Hook, Label, LabelSpec
from reconciler.keys import SETUP, Key, setup_key
from reconciler.models import Agent
from reconciler.settings import Settings

__all__ = [
    "WEBHOOK_EVENTS",
    "EnsureLabels",
    "EnsureWebhook",
    "RepoSetupController",
    "RepoSetupStatus",
    "SetupObserved",
    "fleet_vocabulary",
    "label_specs",
    "plan_setup",
    "setup_key",
]

log = structlog.get_logger(__name__)

WEBHOOK_EVENTS = ("issues", "issue_comment", "pull_request", "push", "create", "delete", "wiki")
"""What the managed webhook subscribes to: everything the receiver turns into keys."""


def fleet_vocabulary(agents: Sequence[Agent]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(roles, capabilities) of the registered agents, each once, sorted (a stable plan)."""
    roles = sorted({role for agent in agents for role in agent.roles})
    capabilities = sorted({cap for agent in agents for cap in agent.capabilities})
    return tuple(roles), tuple(capabilities)


@dataclass(frozen=True)
class RepoState:
    """Whether one repository is set up, and if not, why."""

    ready: bool
    detail: str
    at: datetime


class RepoSetupStatus:
    """Which watched repositories are set up. Written by ``RepoSetupController`` only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[str, RepoState] = {}

    def record(self, repo: str, *, ready: bool, detail: str, at: datetime) -> None:
        with self._lock:
            self._repos[repo.lower()] = RepoState(ready=ready, detail=detail, at=at)

    def get(self, repo: str) -> RepoState | None:
        with self._lock:
            return self._repos.get(repo.lower())

    def check(self, repos: Sequence[str]) -> tuple[bool, str]:
        """(all set up, a line saying which are not and why) over the watched ``repos``."""
        problems: list[str] = []
        for repo in repos:
            state = self.get(repo)
            if state is None:
                problems.append(f"{repo}: not set up yet")
            elif not state.ready:
                problems.append(f"{repo}: {state.detail}")
        if problems:
            return False, "; ".join(problems)
        return True, f"{len(repos)} repositor{'y' if len(repos) == 1 else 'ies'} set up"


@dataclass(frozen=True)
class SetupObserved:
    repo: str
    labels: tuple[Label, ...]
    hooks: tuple[Hook, ...] | None
    """None when webhooks are not managed (nothing was read)."""
    secret_written: bool
    """This process already wrote the webhook's secret (Forgejo never shows it back)."""
    roles: tuple[str, ...] = ()
    """The roles of the registered agents (their ``agent/`` labels are part of the vocabulary)."""
    capabilities: tuple[str, ...] = ()
    """The capabilities of the registered agents (``needs/`` labels)."""


@dataclass(frozen=True)
class EnsureLabels(Action):
    repo: str
    specs: tuple[LabelSpec, ...]
    missing: tuple[str, ...]
    drifted: tuple[str, ...]

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"create label(s) {', '.join(self.missing)}")
        if self.drifted:
            parts.append(f"fix label(s) {', '.join(self.drifted)}")
        return f"{self.repo}: {'; '.join(parts)}"

    def apply(self, ctx: ActContext) -> None:
        ctx.gateway.ensure_labels(self.repo, self.specs)


@dataclass(frozen=True)
class EnsureWebhook(Action):
    repo: str
    url: str
    secret: str
    events: tuple[str, ...]
    why: str

    def describe(self) -> str:
        return f"{self.repo}: write the webhook to {self.url} ({self.why})"

    def apply(self, ctx: ActContext) -> None:
        ctx.gateway.ensure_webhook(
            self.repo, url=self.url, secret=self.secret, events=self.events, rewrite_secret=True
        )


def plan_setup(observed: SetupObserved, *, settings: Settings) -> tuple[Action, ...]:
    """The writes that make one repository's labels and webhook match the settings (pure).

    Raises ``StalledError`` when labels the fleet writes are missing and managing labels is
    switched off: nothing here may fix that, a person must (or turn ``manage_labels`` on).
    """
    actions: list[Action] = []
    specs = tuple(label_specs(settings, roles=observed.roles, capabilities=observed.capabilities))
    have = {label.name: label for label in observed.labels}
    missing = tuple(s.name for s in specs if s.name not in have)
    drifted = tuple(s.name for s in specs if s.name in have and not have[s.name].matches(s))
    if settings.forgejo.manage_labels:
        if missing or drifted:
            actions.append(EnsureLabels(observed.repo, specs, missing, drifted))
    else:
        status = settings.labels
        needed = (
            status.status_todo,
            status.status_doing,
            status.status_review,
            status.status_done,
            status.status_failed,
        )
        absent = [name for name in needed if name not in have]
        if absent:
            raise StalledError(
                f"labels {', '.join(absent)} are missing and forgejo.manage_labels is off"
            )
    secret = settings.webhook.secret
    url = settings.forgejo.webhook_url
    if settings.forgejo.manage_webhooks and url and secret and observed.hooks is not None:
        hook = next((h for h in observed.hooks if h.url == url), None)
        why = ""
        if hook is None:
            why = "missing"
        elif not hook.active or hook.content_type != "json":
            why = "inactive or not JSON"
        elif webhook_events_drifted(hook.events, WEBHOOK_EVENTS):
            why = "events drifted"
        elif not observed.secret_written:
            why = "its secret is written once per start, since Forgejo never shows it"
        if why:
            actions.append(
                EnsureWebhook(
                    observed.repo, str(url), secret.get_secret_value(), WEBHOOK_EVENTS, why
                )
            )
    return tuple(actions)


class RepoSetupController:
    name = SETUP

    def __init__(
        self,
        gateway: ForgejoGateway,
        actuator: Actuator,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        status: RepoSetupStatus,
        agents: Callable[[], Sequence[Agent]] = tuple,
    ) -> None:
        self._gateway = gateway
        self._agents = agents
        self._actuator = actuator
        self._settings = settings
        self._clock = clock
        self.status = status
        # Repositories whose webhook secret this process wrote (soft state: a restart writes
        # it again, which is what a changed secret in the new configuration needs).
        self._secret_written: set[str] = set()
        self._lock = threading.Lock()

    def observe(self, key: Key, *, settings: Settings) -> SetupObserved:
        repo = key.repo
        managed = settings.forgejo.manage_webhooks and settings.forgejo.webhook_url
        with self._lock:
            written = repo.lower() in self._secret_written
        roles, capabilities = fleet_vocabulary(self._agents())
        return SetupObserved(
            repo=repo,
            labels=self._gateway.list_labels(repo),
            hooks=self._gateway.list_hooks(repo) if managed else None,
            secret_written=written,
            roles=roles,
            capabilities=capabilities,
        )

    def reconcile(self, key: Key) -> Result:
        settings = self._settings()
        if key.repo.lower() not in {r.lower() for r in settings.forgejo.repos}:
            return Result()  # no longer watched: nothing to keep set up
        try:
            observed = self.observe(key, settings=settings)
            actions = plan_setup(observed, settings=settings)
            self._actuator.apply(actions)
        except StalledError as exc:
            self.status.record(key.repo, ready=False, detail=exc.reason, at=self._clock())
            raise
        except Exception as exc:
            self.status.record(
                key.repo, ready=False, detail=f"set-up failed: {exc}", at=self._clock()
            )
            raise
        if not self._actuator.dry_run:
            if any(isinstance(a, EnsureWebhook) for a in actions):
                with self._lock:
                    self._secret_written.add(key.repo.lower())
            self.status.record(key.repo, ready=True, detail="set up", at=self._clock())
        if actions:
            log.info("repo.set_up", repo=key.repo, actions=[a.describe() for a in actions])
        return Result()
