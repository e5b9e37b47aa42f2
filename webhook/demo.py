"""``agent-fleet demo``: agent-fleet on this machine with no outside service.

Starts the embedded Forgejo sandbox on a free loopback port and the real daemon (loop,
webhook receiver, agent API, resync, executor) against it, with a throw-away state store and
one local host that runs tasks with the deterministic demo agent CLI. Two pull agents
register through the agent API and heartbeat. The demo files labelled issues through the
Forgejo gateway as a person would, and prints each task's life as it lands in the store:
created, assigned, running on the local host (a real git worktree, the agent's edit, commit,
push), the pull request opened, in review — while the task nobody can do waits and says why,
and the task that depends on the first issue waits until that issue is closed, then runs.
Then the demo plays the reviewer: it asks for changes once (the agent runs again with the
review in its prompt), approves and merges every pull request, and each task's receipt is
verified against Forgejo before it is done, with status/done and a result comment; a summary
table follows. Then one pull agent goes silent and is seen offline. With ``keep`` (``agent-fleet
demo --keep``) the fleet then stays up, and the URL of its live page is printed, until the
``keep`` callback returns (Ctrl-C at the terminal; the browser tests drive the page from it).
Everything the demo started is stopped before it returns. It lives in the top layer because it assembles the whole process.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from controllers.setup import label_specs
from reconciler.console.views import agents_table
from reconciler.fleet.api import AgentSummary
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import Issue
from reconciler.matrix.notifier import Notifier
from reconciler.matrix.preview import render_room
from reconciler.models import AgentStatus, TaskState, task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    AdapterSettings,
    ApiSettings,
    DashboardSettings,
    ForgejoSettings,
    HostSettings,
    LoopSettings,
    Settings,
    StoreSettings,
    WebhookSettings,
)
from reconciler.store import Store
from reconciler.text import format_duration
from webhook.daemon import Daemon, utc_now

Print = Callable[[str], None]

DEMO_OWNER = "fleet-admin"
DEMO_REPO = "demo"
LOCAL_HOST = "local-dev"
PULL_AGENTS = ("pull-reviewer-1", "pull-reviewer-2")
OPERATOR_TOKEN = secrets.token_hex(16)
REVIEWER = "alice"
REVIEW_TEXT = "Please also say how --version behaves with --help."
WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class DemoFleet:
    """The running demo, handed to a ``keep`` callback: where the page is and how to change
    the world it shows (file issues, review, merge) as a person would."""

    page_url: str
    operator_token: str
    repo: str
    sandbox: ForgejoSandbox
    person: ForgejoGateway
    store: Store
    issues: dict[str, int]


@dataclass(frozen=True)
class DemoIssue:
    title: str
    body: str
    labels: tuple[str, ...]
    runnable: bool = True
    depends_on: int | None = None
    """The demo issue (by number) this one depends on: its task waits until that one closes."""


DEMO_ISSUES = (
    DemoIssue(
        "Add a --version flag to the CLI",
        "## Goal\nPrint the package version and exit.\n\n## Validation\n`demo --version` prints it.",
        ("fleet/task", "agent/developer", "needs/code:python", "priority/high"),
    ),
    DemoIssue(
        "Document the configuration file",
        "## Goal\nDescribe every key of the config file in docs/config.md.",
        ("fleet/task", "agent/documenter", "needs/docs", "priority/low"),
        depends_on=1,
    ),
    DemoIssue(
        "Port the parser to Rust",
        "## Goal\nA Rust port of the parser module.",
        ("fleet/task", "agent/developer", "needs/code:rust"),
        runnable=False,
    ),
)


def demo_settings(url: str, token: str, *, state: Path, work: Path) -> Settings:
    """Settings for the sandbox: the defaults, pointed at the embedded Forgejo, with one local
    host that runs tasks with the deterministic demo agent CLI, and short heartbeats so an
    agent that goes silent is seen offline within seconds."""
    return Settings(
        forgejo=ForgejoSettings(
            url=url,
            token=SecretStr(token),
            repos=(f"{DEMO_OWNER}/{DEMO_REPO}",),
            bot_login=DEMO_OWNER,
        ),
        webhook=WebhookSettings(port=0, secret=SecretStr(secrets.token_hex(16))),
        loop=LoopSettings(workers=2, resync_interval=30, shutdown_grace=10),
        api=ApiSettings(
            operator_token=SecretStr(OPERATOR_TOKEN), heartbeat_interval=1, missed_heartbeats=3
        ),
        store=StoreSettings(path=state),
        # On loopback, the page may update itself every second.
        dashboard=DashboardSettings(refresh_interval=1),
        hosts=(
            HostSettings(
                name=LOCAL_HOST,
                address="localhost",
                agent_type="demo-agent",
                adapter="demo-agent",
                roles=("developer", "documenter"),
                capabilities=("code:python", "docs"),
                max_concurrency=2,
                workdir=str(work),
                health_interval=30,
                min_free_disk_mb=1,
            ),
        ),
        adapters={
            "demo-agent": AdapterSettings(
                command=(sys.executable, "-m", "reconciler.agent.demo_agent", "{prompt}"),
                parser="claude-json",
            )
        },
    )


class _Api:
    """The agent API as a pull agent speaks it (plain HTTP, as any agent would)."""

    def __init__(self, url: str) -> None:
        self._url = url

    def post(self, path: str, body: dict[str, object], *, token: str) -> dict[str, object]:
        request = urllib.request.Request(
            f"{self._url}{path}",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, object] = json.loads(response.read() or b"{}")
            return answer


class _Heartbeats:
    """Sends heartbeats for a set of agents on a thread until each is told to go silent."""

    def __init__(self, api: _Api, tokens: dict[str, str], *, every: float) -> None:
        self._api = api
        self._tokens = dict(tokens)
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-heartbeats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def silence(self, agent_id: str) -> None:
        self._tokens.pop(agent_id, None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for token in list(self._tokens.values()):
                try:
                    self._api.post(
                        "/api/v1/agents/heartbeat", {"load": 0.0, "tasks": []}, token=token
                    )
                except OSError:
                    pass  # the daemon is stopping; the next beat or the end of the demo follows
            self._stop.wait(self._every)


class _Timeline:
    """Prints each task event as it lands in the store: the task's life as it happens."""

    def __init__(self, out: Print, store: Store) -> None:
        self._out = out
        self._store = store
        self._seen: dict[str, int] = {}

    def poll(self, numbers: dict[str, int]) -> None:
        for task_id, number in numbers.items():
            events = self._store.events_for(task_id)
            for event in events[self._seen.get(task_id, 0) :]:
                move = (
                    f"{event.from_state or '·'} → {event.to_state}"
                    if event.to_state
                    else event.kind
                )
                self._out(f"  #{number} {move:<28} {event.reason}")
            self._seen[task_id] = len(events)


def _settled(store: Store, ids: dict[str, int], *, expect_review: set[str]) -> bool:
    for task_id in ids:
        task = store.find_task(task_id)
        if task is None:
            return False
        if task_id in expect_review:
            if task.state is not TaskState.REVIEW_PENDING:
                return False
        elif not task.wait_reason:
            return False
    return True


class UntilInterrupted:
    """The ``keep`` of ``agent-fleet demo --keep``: returns on Ctrl-C or SIGTERM.

    Its handlers are installed by :meth:`arm`, which ``run_demo`` calls before it announces the
    page: a signal sent as soon as the announcement is read is not lost, and SIGINT is heard
    even by a process that inherited it ignored (a background job of a shell without job
    control), where Python would never raise KeyboardInterrupt."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._previous: dict[int, signal._HANDLER] = {}

    def arm(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, lambda *_: self._stop.set())

    def __call__(self, fleet: DemoFleet) -> None:
        if not self._previous:
            self.arm()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)


def run_demo(
    *,
    out: Print = print,
    keep: Callable[[DemoFleet], None] | None = None,
    ready: Callable[[], None] | None = None,
) -> int:
    """Run the demo, printing what happens; returns the process exit code. With ``keep``,
    the fleet stays up with its page served while ``keep`` runs; ``ready`` is called just
    before the page is announced."""
    with (
        tempfile.TemporaryDirectory(prefix="agent-fleet-demo-") as scratch,
        ForgejoSandbox() as sandbox,
    ):
        out(f"▶ Forgejo sandbox listening on {sandbox.url}")
        root = Path(scratch)
        settings = demo_settings(
            sandbox.url, sandbox.admin_token, state=root / "state", work=root / "agent-work"
        )
        repo = settings.forgejo.repos[0]
        with ForgejoGateway(sandbox.url, sandbox.admin_token) as person:
            person.create_repo(DEMO_REPO, default_branch="main", auto_init=True)
            # The demo issues ask for capabilities no agent has; create those labels too.
            known = {spec.name for spec in label_specs(settings)}
            for name in sorted({n for i in DEMO_ISSUES for n in i.labels} - known):
                sandbox.create_label(repo, name, color="c5def5", description="demo")

            daemon = Daemon(settings)
            hooked = settings.forgejo.model_copy(
                update={"webhook_url": f"{daemon.url}/webhooks/forgejo", "manage_webhooks": True}
            )
            daemon.assembly.settings.replace(settings.model_copy(update={"forgejo": hooked}))
            store = daemon.assembly.store
            api = _Api(daemon.url)
            beats: _Heartbeats | None = None
            try:
                daemon.start()
                out(f"▶ agent-fleet daemon on {daemon.url}, watching {repo}")
                labels = person.list_labels(repo)
                scopes = sorted({lb.scope for lb in labels if lb.exclusive and lb.scope})
                out(f"▶ {repo} has {len(labels)} labels (exclusive scopes: {', '.join(scopes)})")

                out("▶ two pull agents register through the agent API and heartbeat:")
                tokens: dict[str, str] = {}
                for agent_id in PULL_AGENTS:
                    answer = api.post(
                        "/api/v1/agents/register",
                        {
                            "agent_id": agent_id,
                            "type": "claude-code",
                            "hostname": "demo",
                            "roles": ["code-reviewer"],
                            "capabilities": ["review"],
                            "mode": "pull",
                        },
                        token="",
                    )
                    tokens[agent_id] = str(answer["token"])
                    out(f"  + {agent_id} registered (token issued once, stored hashed)")
                beats = _Heartbeats(api, tokens, every=0.3)
                beats.start()
                if not _wait(lambda: _local_online(daemon), WAIT_SECONDS):
                    out(
                        f"✗ the local host {LOCAL_HOST} did not come online: {_agent_line(daemon, LOCAL_HOST)}"
                    )
                    return 1
                out(
                    f"  ✓ {LOCAL_HOST} (ssh-style host on this machine) passed its health check: online"
                )

                out(f"▶ filing {len(DEMO_ISSUES)} labelled issues; the task's life as it happens:")
                ids: dict[str, int] = {}
                for demo_issue in DEMO_ISSUES:
                    issue = _file(person, repo, demo_issue)
                    ids[task_id_for(repo, issue.number)] = issue.number
                    after = (
                        f" — depends on #{demo_issue.depends_on}" if demo_issue.depends_on else ""
                    )
                    out(
                        f"  + #{issue.number} {issue.title}  [{', '.join(sorted(issue.labels))}]"
                        f"{after}"
                    )
                timeline = _Timeline(out, store)
                runnable = {t for t, n in ids.items() if DEMO_ISSUES[n - 1].runnable}
                # A task whose dependency is open waits first; it runs once that issue closes.
                first_round = {t for t in runnable if DEMO_ISSUES[ids[t] - 1].depends_on is None}

                def progressed() -> bool:
                    timeline.poll(ids)
                    return _settled(store, ids, expect_review=first_round)

                done = _wait(progressed, WAIT_SECONDS)
                timeline.poll(ids)
                if not done:
                    out(f"✗ the tasks did not settle within {format_duration(WAIT_SECONDS)}")
                    return 1

                out("▶ pull requests the agent opened:")
                for task_id, number in ids.items():
                    task = store.get_task(task_id)
                    if task.pr_number is None:
                        out(f"  #{number} waits: {task.wait_reason} (also said on the issue)")
                        continue
                    pull = person.get_pull(repo, task.pr_number)
                    files = ", ".join(f.filename for f in person.list_pull_files(repo, pull.number))
                    [receipt] = store.receipts_for(task_id)[-1:]
                    out(
                        f"  #{number} → PR #{pull.number} from {pull.head_branch}: {files} "
                        f"({len(receipt.commits)} commit, {receipt.tokens} tokens)"
                    )

                if not _review(out, sandbox, person, store, repo, ids, runnable, timeline):
                    return 1

                silent = PULL_AGENTS[-1]
                out(f"▶ {silent} stops heartbeating; after 3 missed intervals it is offline:")
                beats.silence(silent)
                if not _wait(lambda: _status(daemon, silent) == AgentStatus.OFFLINE, WAIT_SECONDS):
                    out(f"✗ {silent} was not marked offline")
                    return 1
                views = daemon.assembly.fleet.agents()
                table = agents_table([AgentSummary.of(v) for v in views], now=utc_now())
                for line in table.splitlines():
                    out(f"  {line}")
                _matrix_preview(out, daemon)
                if keep is not None:
                    if ready is not None:
                        ready()
                    page = f"{daemon.url}{settings.dashboard.path}"
                    out(f"▶ the fleet page: {page}")
                    out(f"  sign in with the demo's operator token: {OPERATOR_TOKEN}")
                    out("  the fleet keeps running; Ctrl-C stops everything")
                    keep(DemoFleet(page, OPERATOR_TOKEN, repo, sandbox, person, store, ids))
            finally:
                if beats is not None:
                    beats.stop()
                daemon.stop()
    out("▶ daemon and sandbox stopped; nothing left running")
    return 0


def _review(
    out: Print,
    sandbox: ForgejoSandbox,
    person: ForgejoGateway,
    store: Store,
    repo: str,
    ids: dict[str, int],
    runnable: set[str],
    timeline: _Timeline,
) -> bool:
    """Play the reviewer: ask for changes once, then approve and merge every pull request;
    each task goes through its verified receipt to done. False when something did not happen."""
    sandbox.create_user(REVIEWER)
    person.add_collaborator(repo, REVIEWER, permission="write")
    first = min(runnable, key=lambda t: ids[t])
    task = store.get_task(first)
    assert task.pr_number is not None
    out(f"▶ {REVIEWER} reviews PR #{task.pr_number} and asks for changes; the agent runs again:")
    sandbox.review(repo, task.pr_number, "REQUEST_CHANGES", body=REVIEW_TEXT, author=REVIEWER)

    def rerun_in_review() -> bool:
        timeline.poll(ids)
        again = store.get_task(first)
        return again.review_count == 1 and again.state is TaskState.REVIEW_PENDING

    if not _wait(rerun_in_review, WAIT_SECONDS):
        out(f"✗ the task of PR #{task.pr_number} did not come back to review after the rerun")
        return False
    timeline.poll(ids)
    notes = [f.filename for f in person.list_pull_files(repo, task.pr_number)]
    out(
        f"  PR #{task.pr_number} now has {len(person.list_pull_commits(repo, task.pr_number))} commits ({', '.join(notes)})"
    )

    out(f"▶ {REVIEWER} approves and merges every PR; the receipts are checked against Forgejo:")
    for task_id in sorted(runnable, key=ids.__getitem__):
        number = ids[task_id]

        def in_review(task_id: str = task_id) -> bool:
            timeline.poll(ids)
            return store.get_task(task_id).state is TaskState.REVIEW_PENDING

        if not _wait(in_review, WAIT_SECONDS):
            out(f"✗ #{number} did not reach review")
            return False
        pr = store.get_task(task_id).pr_number
        assert pr is not None
        sandbox.review(repo, pr, "APPROVED", body="Looks good.", author=REVIEWER)
        sandbox.merge(repo, pr, author=REVIEWER)
        waiting = [n for n in sorted(ids.values()) if DEMO_ISSUES[n - 1].depends_on == number]
        if waiting:
            # The PR says "Closes #N": merging it closed the issue, which releases its waiters.
            shown = ", ".join(f"#{n}" for n in waiting)
            out(f"  merging PR #{pr} closed #{number}; {shown}, waiting for it, starts now:")

    def all_done() -> bool:
        timeline.poll(ids)
        return all(store.get_task(t).state is TaskState.COMPLETED for t in runnable)

    if not _wait(all_done, WAIT_SECONDS):
        out("✗ not every merged task was completed")
        return False
    timeline.poll(ids)
    out("▶ summary:")
    rows = [("ISSUE", "STATE", "ATTEMPTS", "REVIEWS", "PR", "COMMITS", "TOKENS", "LABEL", "RESULT")]
    for task_id, number in ids.items():
        done = store.get_task(task_id)
        issue = person.get_issue(repo, number)
        status = next((n for n in issue.labels if n.startswith("status/")), "-")
        receipts = store.receipts_for(task_id)
        comment = next(
            (c for c in person.list_comments(repo, number) if "agent-fleet:result" in c.body), None
        )
        rows.append(
            (
                f"#{number}",
                done.state.value,
                str(done.attempt),
                str(done.review_count),
                f"#{done.pr_number}" if done.pr_number else "-",
                str(len(receipts[-1].commits)) if receipts else "-",
                str(sum(r.tokens for r in receipts)) if receipts else "-",
                status,
                (_plain(comment.body.split("\n")[1])[:60] if comment else done.wait_reason or "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return True


def _file(person: ForgejoGateway, repo: str, demo_issue: DemoIssue) -> Issue:
    """Open a demo issue as a person would; one that depends on another gets its dependency
    before its fleet labels, so its task never starts ahead of it."""
    if demo_issue.depends_on is None:
        return person.create_issue(
            repo, title=demo_issue.title, body=demo_issue.body, labels=demo_issue.labels
        )
    issue = person.create_issue(repo, title=demo_issue.title, body=demo_issue.body)
    person.add_dependency(repo, issue.number, on=demo_issue.depends_on)
    person.add_labels(repo, issue.number, demo_issue.labels)
    return person.get_issue(repo, issue.number)


def _plain(markdown: str) -> str:
    """A comment line as text: links to their labels, no emphasis."""
    return re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown).replace("**", "")


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return True
        pause.wait(0.1)
    return condition()


def _status(daemon: Daemon, agent_id: str) -> AgentStatus | None:
    agent = daemon.assembly.store.find_agent(agent_id)
    return agent.status if agent else None


def _local_online(daemon: Daemon) -> bool:
    return _status(daemon, LOCAL_HOST) is AgentStatus.ONLINE


def _agent_line(daemon: Daemon, agent_id: str) -> str:
    agent = daemon.assembly.store.find_agent(agent_id)
    return f"{agent.status}: {agent.status_reason}" if agent else "not registered"


def _matrix_preview(out: Print, daemon: Daemon) -> None:
    """The fleet room as the Matrix thread would have posted it: same notifier, same outbox."""
    store = daemon.assembly.store
    Notifier(store, settings=daemon.assembly.settings, clock=utc_now).scan()
    out("▶ PREVIEW (no homeserver here) — the Matrix fleet room after this run:")
    for line in render_room(store):
        out(f"  {line}")
