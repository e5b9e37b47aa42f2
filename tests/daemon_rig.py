"""A daemon assembly wired to the in-memory Forgejo, its webhook pointed at a live HTTP server.

Shared by the flow tests (tests/test_flow.py, tests/test_governance_flow.py,
tests/test_budget_flow.py): the store, the assembly and the server are the caller's to stop.
``FlowWorld`` is what the governance and budget flows drive: the forge, the assembly, the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

from reconciler.fleet.placement import next_task_for
from reconciler.models import AgentId, Task, task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import (
    ForgejoSettings,
    LoopSettings,
    Settings,
    StoreSettings,
    WebhookSettings,
)
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL, ManualClock
from webhook.daemon import Assembly, build, http_app, prepare_repos
from webhook.server import HttpServer


def hooked_daemon(
    forge: ForgejoSandbox, clock: ManualClock, state: Path, *, secret: str
) -> tuple[Store, Assembly, HttpServer]:
    """Build the daemon on ``state``, serve it, register its webhook and run a first full resync."""
    store = Store.open(state)
    settings = Settings(
        forgejo=ForgejoSettings(
            url=IN_PROCESS_URL,
            token=SecretStr(forge.admin_token),
            repos=(DEMO_REPO,),
            bot_login="fleet-admin",
        ),
        webhook=WebhookSettings(secret=SecretStr(secret), port=1),
        loop=LoopSettings(resync_interval=3600),
        store=StoreSettings(path=state),
    )
    assembly = build(
        settings, store=store, clock=clock, transport=httpx.WSGITransport(app=forge.app)
    )
    server = HttpServer(http_app(assembly, readiness=dict), host="127.0.0.1", port=0)
    server.start()
    hooked = settings.model_copy(
        update={
            "forgejo": settings.forgejo.model_copy(
                update={"webhook_url": f"{server.url}/webhooks/forgejo", "manage_webhooks": True}
            )
        }
    )
    assembly.settings.replace(hooked)
    prepare_repos(assembly)
    assembly.resync.full()  # nothing there yet: remembers when it last looked
    return store, assembly, server


@dataclass
class FlowWorld:
    """The in-memory Forgejo, a hooked daemon's assembly and the injected clock."""

    forge: ForgejoSandbox
    assembly: Assembly
    clock: ManualClock

    def task(self, number: int) -> Task:
        return self.assembly.store.get_task(task_id_for(DEMO_REPO, number))

    def settle(self) -> None:
        """Deliver pending webhooks and run every key they (and the writes) enqueue."""
        for _ in range(10):
            self.forge.flush_webhooks()
            if not self.assembly.loop.drain():
                return

    def handed_out(self) -> Task | None:
        """What a free pull agent named ``puller`` would be given now."""
        agent = self.assembly.store.get_agent(AgentId("puller"))
        return next_task_for(agent, tasks=self.assembly.store.list_tasks(), now=self.clock())

    def status_comment(self, number: int) -> str:
        """The body of the task's status comment on issue ``number``."""
        comments = self.assembly.gateway.list_comments(DEMO_REPO, number)
        return "\n".join(c.body for c in comments if "agent-fleet:task" in c.body)
