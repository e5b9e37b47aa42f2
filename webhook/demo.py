"""``agent-fleet demo``: agent-fleet on this machine with no outside service.

Starts the embedded Forgejo sandbox on a free loopback port, creates a demo repository with
the label vocabulary and a few labelled issues through the real Forgejo gateway (over HTTP,
as against a real Forgejo), reads them back and prints them, then stops everything it
started. It lives in the top layer because it assembles the whole process, as the daemon does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from reconciler.forgejo import ForgejoGateway
from reconciler.forgejo_types import LabelSpec
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, Settings

Print = Callable[[str], None]

DEMO_OWNER = "fleet-admin"
DEMO_REPO = "demo"


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


def demo_settings(url: str, token: str) -> Settings:
    """Settings for the sandbox: the defaults, pointed at the embedded Forgejo."""
    return Settings(
        forgejo=ForgejoSettings(
            url=url,
            token=SecretStr(token),
            repos=(f"{DEMO_OWNER}/{DEMO_REPO}",),
            bot_login=DEMO_OWNER,
        )
    )


def run_demo(*, out: Print = print) -> int:
    """Run the demo, printing what happens; returns the process exit code."""
    with ForgejoSandbox() as sandbox:
        url = sandbox.url
        out(f"▶ Forgejo sandbox listening on {url}")
        settings = demo_settings(url, sandbox.admin_token)
        repo = settings.forgejo.repos[0]
        with ForgejoGateway(url, sandbox.admin_token) as gateway:
            out(f"▶ Forgejo {gateway.version()}, signed in as {gateway.bot_login()}")
            gateway.create_repo(DEMO_REPO, default_branch="main", auto_init=True)
            specs = [
                LabelSpec(name=s.name, color=s.color, description=s.description, exclusive=s.exclusive)
                for s in settings.label_specs()
            ]
            # The demo issues ask for roles and capabilities no host declares; create those too.
            extra = sorted({n for i in DEMO_ISSUES for n in i.labels} - {s.name for s in specs})
            specs += [
                LabelSpec(name=n, color=settings.labels.color_capability, description="demo")
                for n in extra
            ]
            labels = gateway.ensure_labels(repo, specs)
            exclusive = sorted({lb.scope for lb in labels if lb.exclusive and lb.scope})
            out(f"▶ created {repo} with {len(labels)} labels (exclusive scopes: {', '.join(exclusive)})")
            for demo_issue in DEMO_ISSUES:
                gateway.create_issue(
                    repo, title=demo_issue.title, body=demo_issue.body, labels=demo_issue.labels
                )
            out(f"▶ filed {len(DEMO_ISSUES)} labelled issues; reading them back:")
            for issue in gateway.list_issues(repo, state="open", kind="issues"):
                out(f"  #{issue.number} {issue.title}")
                out(f"      labels: {', '.join(sorted(issue.labels))}")
    out("▶ sandbox stopped; nothing left running")
    return 0
