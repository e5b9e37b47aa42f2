"""``agent-fleet demo``: agent-fleet on this machine with no outside service.

Starts the embedded Forgejo sandbox on a free loopback port and the real daemon (loop,
webhook receiver, resync) against it, with a throw-away state store. The demo files labelled
issues through the Forgejo gateway as a person would; Forgejo delivers signed webhooks to the
daemon, which picks each issue up under its assignment key and writes the task's status label
back. Everything the demo started is stopped before it returns. It lives in the top layer
because it assembles the whole process, as the daemon does.
"""

from __future__ import annotations

import secrets
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from reconciler.forgejo import ForgejoGateway
from reconciler.keys import ASSIGNMENT
from reconciler.loop import Outcome
from reconciler.models import task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    ForgejoSettings,
    LoopSettings,
    Settings,
    StoreSettings,
    WebhookSettings,
)
from webhook.daemon import Daemon, label_specs

Print = Callable[[str], None]

DEMO_OWNER = "fleet-admin"
DEMO_REPO = "demo"
WAIT_SECONDS = 20.0


@dataclass(frozen=True)
class DemoIssue:
    title: str
    body: str
    labels: tuple[str, ...]


DEMO_ISSUES = (
    DemoIssue(
        "Add a --version flag to the CLI",
        "## Goal\nPrint the package version and exit.\n\n## Validation\n`demo --version` prints it.",
        ("fleet/task", "agent/developer", "needs/code:python", "priority/high"),
    ),
    DemoIssue(
        "Document the configuration file",
        "## Goal\nDescribe every key of the config file in docs/config.md.",
        ("fleet/task", "agent/documenter", "priority/low"),
    ),
    DemoIssue(
        "Port the parser to Rust",
        "## Goal\nA Rust port of the parser module.",
        ("fleet/task", "agent/developer", "needs/code:rust"),
    ),
)


def demo_settings(url: str, token: str, *, state: Path) -> Settings:
    """Settings for the sandbox: the defaults, pointed at the embedded Forgejo."""
    return Settings(
        forgejo=ForgejoSettings(
            url=url,
            token=SecretStr(token),
            repos=(f"{DEMO_OWNER}/{DEMO_REPO}",),
            bot_login=DEMO_OWNER,
        ),
        webhook=WebhookSettings(port=0, secret=SecretStr(secrets.token_hex(16))),
        loop=LoopSettings(workers=2, resync_interval=30, shutdown_grace=10),
        store=StoreSettings(path=state),
    )


class _Progress:
    """Collects the loop's outcomes for the demo's issues and wakes the demo when all are in."""

    def __init__(self, out: Print, repo: str) -> None:
        self._out = out
        self._repo = repo
        self._wanted: set[int] = set()
        self._done: set[int] = set()
        self._changed = threading.Condition()

    def expect(self, number: int) -> None:
        with self._changed:
            self._wanted.add(number)

    def __call__(self, outcome: Outcome) -> None:
        if outcome.key.controller != ASSIGNMENT:
            return
        number = int(outcome.key.id)
        if outcome.actions:
            self._out(f"  ⟳ {outcome.key} ({outcome.outcome}, {outcome.duration * 1000:.0f} ms)")
            for action in outcome.actions:
                self._out(f"      {action}")
        elif outcome.outcome != "ok":
            self._out(f"  ⟳ {outcome.key}: {outcome.outcome} {outcome.error}")
        with self._changed:
            if outcome.outcome == "ok":
                self._done.add(number)
            self._changed.notify_all()

    def missing(self) -> list[int]:
        with self._changed:
            return sorted(self._wanted - self._done)

    def wait(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._wanted <= self._done, timeout=timeout)


def run_demo(*, out: Print = print) -> int:
    """Run the demo, printing what happens; returns the process exit code."""
    with tempfile.TemporaryDirectory(prefix="agent-fleet-demo-") as scratch, ForgejoSandbox() as sandbox:
        out(f"▶ Forgejo sandbox listening on {sandbox.url}")
        settings = demo_settings(sandbox.url, sandbox.admin_token, state=Path(scratch) / "state")
        repo = settings.forgejo.repos[0]
        with ForgejoGateway(sandbox.url, sandbox.admin_token) as person:
            person.create_repo(DEMO_REPO, default_branch="main", auto_init=True)
            # The demo issues ask for roles and capabilities no host declares; create those too.
            known = {spec.name for spec in label_specs(settings)}
            wanted = sorted({n for i in DEMO_ISSUES for n in i.labels} - known)
            for name in wanted:
                sandbox.create_label(repo, name, color="c5def5", description="demo")

            daemon = Daemon(settings)
            hooked = settings.forgejo.model_copy(
                update={"webhook_url": f"{daemon.url}/webhooks/forgejo", "manage_webhooks": True}
            )
            daemon.assembly.settings.replace(settings.model_copy(update={"forgejo": hooked}))
            progress = _Progress(out, repo)
            daemon.assembly.loop.on_outcome(progress)
            try:
                daemon.start()
                out(f"▶ agent-fleet daemon on {daemon.url}, watching {repo}")
                labels = person.list_labels(repo)
                scopes = sorted({lb.scope for lb in labels if lb.exclusive and lb.scope})
                out(f"▶ {repo} has {len(labels)} labels (exclusive scopes: {', '.join(scopes)})")
                out(f"▶ filing {len(DEMO_ISSUES)} labelled issues; Forgejo sends a webhook for each:")
                numbers = []
                for demo_issue in DEMO_ISSUES:
                    issue = person.create_issue(
                        repo, title=demo_issue.title, body=demo_issue.body, labels=demo_issue.labels
                    )
                    numbers.append(issue.number)
                    progress.expect(issue.number)
                    out(f"  + #{issue.number} {issue.title}  [{', '.join(sorted(issue.labels))}]")
                settled = progress.wait(WAIT_SECONDS)
                sandbox.flush_webhooks()
                received = [d for d in sandbox.deliveries if d.ok]
                out(f"▶ {len(received)} webhook deliveries answered 2xx by the daemon")
                out("▶ the issues as Forgejo and the task store now show them:")
                for number in numbers:
                    issue = person.get_issue(repo, number)
                    task = daemon.assembly.store.find_task(task_id_for(repo, number))
                    state = task.state if task else "—"
                    needs = ", ".join(task.required_capabilities if task else ()) or "—"
                    out(
                        f"  #{number:<3} task {task.id if task else '—':<12} {state:<10} "
                        f"role={task.required_role if task else '—'} needs={needs} "
                        f"labels={', '.join(sorted(issue.labels))}"
                    )
                if not settled:
                    out(f"✗ not every issue was reconciled within {WAIT_SECONDS:.0f} s: {progress.missing()}")
                    return 1
                for number in numbers:
                    task = daemon.assembly.store.find_task(task_id_for(repo, number))
                    if task is not None and task.wait_reason:
                        out(f"  #{number} waits: {task.wait_reason} (also said in a comment on the issue)")
            finally:
                daemon.stop()
    out("▶ daemon and sandbox stopped; nothing left running")
    return 0
