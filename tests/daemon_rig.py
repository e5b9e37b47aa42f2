"""A daemon assembly wired to the in-memory Forgejo, its webhook pointed at a live HTTP server.

Shared by the flow tests (tests/test_flow.py, tests/test_governance_flow.py): the store, the
assembly and the server are the caller's to stop.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from pydantic import SecretStr

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
