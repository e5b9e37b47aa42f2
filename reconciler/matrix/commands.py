"""``!fleet`` commands: the parser (pure) and the runner, which writes Forgejo only.

The Matrix thread (:mod:`reconciler.matrix.client`) hands every ``!fleet`` message from the
room to :meth:`CommandRunner.run` (on a worker thread: the gateway is synchronous) and queues
the answer in a thread of the command.

Commands change the desired state in Forgejo — the pin label, ``fleet/retry``, ``fleet/hold``,
closing the issue — through the gateway, never the local state, and leave one comment on the
issue saying which Matrix user asked (found again by a hidden marker holding the Matrix event
id, so a command replayed after a crash does not comment twice). Read-only commands (``status``,
``agents``, ``why``) read the local store.

Permission: the sender must be in ``matrix.allowed_users``; when ``matrix.forgejo_logins``
maps the sender to a Forgejo login, that login's write access to the repo is checked before a
command that writes. Anyone else gets a polite refusal and nothing changes.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from reconciler.errors import FleetError
from reconciler.fleet.placement import active_load
from reconciler.fleet.vocabulary import assign_spec
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.keys import Key, issue_key
from reconciler.matrix import format as fmt
from reconciler.matrix.notifier import is_stuck
from reconciler.models import TERMINAL_STATES, AgentStatus
from reconciler.settings import Settings
from reconciler.store import Store

PREFIX = "!fleet"
USAGE = (
    "usage: !fleet help | status | agents | why #N | assign <agent> #N | retry #N | "
    "cancel #N | hold #N | release #N  (#N, or owner/repo#N when several repos are watched)"
)
_ISSUE = re.compile(r"(?:(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+))?#(?P<number>[1-9][0-9]{0,9})")
_AGENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}")
_NO_ARGS = ("help", "status", "agents")
_ISSUE_ONLY = ("why", "retry", "cancel", "hold", "release")
WRITES = frozenset({"assign", "retry", "cancel", "hold", "release"})


class UsageError(ValueError):
    """The command is unknown or its arguments are wrong: the answer is the usage line."""


@dataclass(frozen=True)
class Command:
    name: str
    repo: str | None = None
    number: int | None = None
    agent: str | None = None

    def text(self) -> str:
        where = f" {self.repo or ''}#{self.number}" if self.number is not None else ""
        agent = f" {self.agent}" if self.agent else ""
        return f"{PREFIX} {self.name}{agent}{where}"


def is_command(body: str) -> bool:
    stripped = body.strip()
    return stripped == PREFIX or stripped.startswith(PREFIX + " ")


def parse(body: str) -> Command:
    """Parse one ``!fleet …`` message; :class:`UsageError` for anything not understood."""
    words = body.split()
    if not words or words[0] != PREFIX:
        raise UsageError("not a !fleet command")
    if len(words) == 1:
        raise UsageError("no command given")
    name, args = words[1].lower(), words[2:]
    if name in _NO_ARGS:
        if args:
            raise UsageError(f"{name} takes no arguments")
        return Command(name)
    if name in _ISSUE_ONLY:
        if len(args) != 1:
            raise UsageError(f"{name} takes one issue (#N)")
        repo, number = _issue(args[0])
        return Command(name, repo=repo, number=number)
    if name == "assign":
        if len(args) != 2 or not _AGENT.fullmatch(args[0]):
            raise UsageError("assign takes an agent id and an issue (#N)")
        repo, number = _issue(args[1])
        return Command(name, repo=repo, number=number, agent=args[0])
    raise UsageError(f"unknown command {name!r}")


def _issue(text: str) -> tuple[str | None, int]:
    match = _ISSUE.fullmatch(text)
    if match is None:
        raise UsageError(f"{text!r} is not an issue (#N or owner/repo#N)")
    return match.group("repo"), int(match.group("number"))


@dataclass(frozen=True)
class Outcome:
    """What a command did: ``outcome`` for metrics (ok, refused, usage, error) and the answer."""

    name: str
    outcome: str
    lines: tuple[str, ...]


class CommandRunner:
    """Runs parsed commands for one process (see the module docstring)."""

    def __init__(
        self,
        gateway: ForgejoGateway,
        store: Store,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        enqueue: Callable[[Key], None] = lambda key: None,
    ) -> None:
        self._gateway = gateway
        self._store = store
        self._settings = settings
        self._clock = clock
        self._enqueue = enqueue

    def run(self, sender: str, body: str, *, event_id: str) -> Outcome:
        """Run the command in ``body`` sent by ``sender`` as Matrix event ``event_id``."""
        settings = self._settings()
        if sender not in settings.matrix.allowed_users:
            return Outcome(
                "refused",
                "refused",
                (f"Sorry {sender}, you are not allowed to give agent-fleet commands.",),
            )
        try:
            command = parse(body)
        except UsageError as exc:
            return Outcome("invalid", "usage", (f"{exc}.", USAGE))
        try:
            return self._run(command, sender, event_id=event_id)
        except UsageError as exc:
            return Outcome(command.name, "usage", (f"{exc}.", USAGE))
        except FleetError as exc:
            return Outcome(command.name, "error", (f"{command.text()} failed: {exc}",))

    def _run(self, command: Command, sender: str, *, event_id: str) -> Outcome:
        name = command.name
        if name == "help":
            return Outcome(name, "ok", (USAGE,))
        if name == "status":
            return Outcome(name, "ok", tuple(self._status()))
        if name == "agents":
            return Outcome(name, "ok", tuple(self._agents()))
        repo = self._repo(command.repo)
        assert command.number is not None
        if name == "why":
            return Outcome(name, "ok", (self._why(repo, command.number),))
        refusal = self._check_write_access(sender, repo)
        if refusal is not None:
            return Outcome(name, "refused", (refusal,))
        return Outcome(name, "ok", (self._write(command, repo, sender, event_id=event_id),))

    # --- reading --------------------------------------------------------------------------

    def _status(self) -> list[str]:
        agents = self._store.list_agents()
        tasks = self._store.list_tasks()
        live = [t for t in tasks if t.state not in TERMINAL_STATES]
        load = active_load(live)
        by_status = Counter(a.status.value for a in agents)
        capacity = sum(a.max_concurrency for a in agents if a.status is AgentStatus.ONLINE)
        busy = sum(load.get(a.id, 0) for a in agents if a.status is AgentStatus.ONLINE)
        lines = [
            "agents: "
            + (", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) or "none")
            + f" · load {busy}/{capacity}",
            "tasks: "
            + (
                ", ".join(
                    f"{n} {s}" for s, n in sorted(Counter(t.state.value for t in tasks).items())
                )
                or "none"
            ),
        ]
        stuck = [t for t in live if t.wait_reason and is_stuck(t.wait_reason)]
        limit = self._settings().matrix.max_text_length
        for task in stuck[:10]:
            lines.append(
                f"stuck: {task.repo}#{task.issue_number} — {fmt.clean(task.wait_reason, limit=limit)}"
            )
        return lines

    def _agents(self) -> list[str]:
        agents = sorted(self._store.list_agents(), key=lambda a: a.id)
        if not agents:
            return ["no agents are registered"]
        load = active_load(t for t in self._store.list_tasks() if t.state not in TERMINAL_STATES)
        return [
            f"{a.id} · {a.type} · {a.status.value} · {load.get(a.id, 0)}/{a.max_concurrency}"
            + (f" · {a.hostname}" if a.hostname else "")
            for a in agents
        ]

    def _why(self, repo: str, number: int) -> str:
        task = self._store.task_for_issue(repo, number)
        ref = f"{repo}#{number}"
        if task is None:
            return f"{ref} is not a task agent-fleet knows (not labelled for the fleet, or not seen yet)"
        limit = self._settings().matrix.max_text_length
        words = fmt.STATE_WORDS[task.state]
        detail = task.failure_reason if task.state in TERMINAL_STATES else task.wait_reason
        if task.on_hold:
            detail = task.wait_reason or "on hold"
        agent = (
            f" on {task.agent_id}" if task.agent_id and task.state not in TERMINAL_STATES else ""
        )
        text = f"{ref} is {words}{agent}"
        return text + (f": {fmt.clean(detail, limit=limit)}" if detail else "")

    # --- writing (Forgejo only) -----------------------------------------------------------

    def _repo(self, named: str | None) -> str:
        repos = self._settings().forgejo.repos
        if named is None:
            if len(repos) != 1:
                raise UsageError(
                    f"several repos are watched ({', '.join(repos)}): name one as owner/repo#N"
                )
            return repos[0]
        for repo in repos:
            if repo.casefold() == named.casefold():
                return repo
        raise UsageError(f"{named} is not a watched repo")

    def _check_write_access(self, sender: str, repo: str) -> str | None:
        login = self._settings().matrix.forgejo_logins.get(sender)
        if login is None:
            return None
        permission = self._gateway.get_permission(repo, login)
        if permission.can_push:
            return None
        return (
            f"Sorry {sender}, your Forgejo account {login} cannot write to {repo} "
            f"({permission.permission}); nothing was changed."
        )

    def _write(self, command: Command, repo: str, sender: str, *, event_id: str) -> str:
        labels = self._settings().labels
        number = command.number
        assert number is not None
        issue = self._gateway.get_issue(repo, number)
        ref = f"{repo}#{number}"
        if issue.is_pull:
            raise UsageError(f"{ref} is a pull request, not an issue")
        name = command.name
        if name == "retry":
            self._gateway.add_labels(repo, number, [labels.retry], current=issue.labels)
            done = f"added {labels.retry} to {ref}"
        elif name == "hold":
            self._gateway.add_labels(repo, number, [labels.hold], current=issue.labels)
            done = f"added {labels.hold} to {ref}"
        elif name == "release":
            if labels.hold in issue.labels:
                self._gateway.remove_label(repo, number, labels.hold)
            done = f"removed {labels.hold} from {ref}"
        elif name == "cancel":
            if issue.state != "closed":
                self._gateway.edit_issue(repo, number, state="closed")
            done = f"closed {ref}"
        elif name == "assign":
            assert command.agent is not None
            if self._store.find_agent(command.agent) is None:
                raise UsageError(f"no agent {command.agent!r} is registered")
            pin = labels.assign_prefix + command.agent
            self._gateway.ensure_labels(
                repo,
                [assign_spec(labels, command.agent)],
            )
            for other in issue.labels:
                if other.startswith(labels.assign_prefix) and other != pin:
                    self._gateway.remove_label(repo, number, other)
            self._gateway.add_labels(repo, number, [pin], current=issue.labels)
            done = f"pinned {ref} to {command.agent} ({pin})"
        else:  # pragma: no cover - parse() admits no other writing command
            raise UsageError(f"unknown command {name!r}")
        self._gateway.upsert_marker_comment(
            repo,
            number,
            marker=f"matrix-command:{hashlib.sha256(event_id.encode()).hexdigest()[:16]}",
            body=f"{sender} asked on Matrix: `{command.text()}` — agent-fleet {done}.",
        )
        self._enqueue(issue_key(repo, number))
        return f"Done: {done} (asked by {sender})."
