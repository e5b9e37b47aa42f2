"""Repository set-up is reconciled state (issue 11, finding 2).

Labels and the webhook are kept by the set-up controller: a write that fails, or a forge that
is down at first start, leaves the repository marked not set up (which ``/readyz`` reports)
and the set-up key with the loop, which retries it until the repository is set up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from controllers.setup import (
    EnsureLabels,
    EnsureWebhook,
    RepoSetupStatus,
    SetupObserved,
    label_specs,
    plan_setup,
)
from reconciler.engine.reconcile import ActContext, AddLabels
from reconciler.errors import ForgejoNotFound, ForgejoServerError, StalledError
from reconciler.fleet.records import Profile
from reconciler.keys import Key, setup_key
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, Settings, StoreSettings, WebhookSettings
from reconciler.store import Store
from tests.sandbox_fixtures import DEMO_REPO, IN_PROCESS_URL, ManualClock
from webhook.daemon import Assembly, build, prepare_repos

pytest_plugins = ("tests.sandbox_fixtures",)

HOOK_URL = "http://fleet.invalid/webhooks/forgejo"


def settings_for(forge: ForgejoSandbox, tmp_path: Path, **forgejo: object) -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url=IN_PROCESS_URL,
            token=SecretStr(forge.admin_token),
            repos=(DEMO_REPO,),
            bot_login="fleet-admin",
            read_retries=0,
            **forgejo,  # type: ignore[arg-type]
        ),
        webhook=WebhookSettings(secret=SecretStr("s3cret")),
        store=StoreSettings(path=tmp_path / "state"),
    )


class Switchable(httpx.BaseTransport):
    """The sandbox behind a switch: ``fault(request)`` may answer instead of it, or raise."""

    def __init__(self, forge: ForgejoSandbox) -> None:
        self.inner = httpx.WSGITransport(app=forge.app)
        self.fault: Callable[[httpx.Request], httpx.Response | None] = lambda request: None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.fault(request)
        return answer if answer is not None else self.inner.handle_request(request)


@pytest.fixture
def transport(forge: ForgejoSandbox) -> Switchable:
    return Switchable(forge)


@pytest.fixture
def assembly(
    forge: ForgejoSandbox, forge_clock: ManualClock, tmp_path: Path, transport: Switchable
) -> Iterator[Assembly]:
    settings = settings_for(forge, tmp_path, manage_webhooks=True, webhook_url=HOOK_URL)
    with Store.open(tmp_path / "state") as store:
        built = build(settings, store=store, clock=forge_clock, transport=transport)
        yield built
        built.gateway.close()


def queued(assembly: Assembly) -> list[Key]:
    keys = []
    while (key := assembly.queue.get(timeout=0.0)) is not None:
        keys.append(key)
        assembly.queue.done(key)
    return keys


def label_names(assembly: Assembly) -> set[str]:
    return {label.name for label in assembly.gateway.list_labels(DEMO_REPO)}


def test_a_failed_label_write_leaves_the_repo_not_ready_and_its_key_queued(
    forge: ForgejoSandbox, assembly: Assembly, transport: Switchable
) -> None:
    """One 500 on a label create: not set up (with why), key queued; the retry sets it up."""
    left = [1]

    def one_500(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST" and request.url.path.endswith("/labels") and left[0]:
            left[0] -= 1
            return httpx.Response(500, json={"message": "database is locked"})
        return None

    transport.fault = one_500
    prepare_repos(assembly)
    setup = assembly.setup
    assert setup is not None
    ready, detail = setup.status.check([DEMO_REPO])
    assert not ready and "database is locked" in detail
    assert queued(assembly) == [setup_key(DEMO_REPO)]
    setup.reconcile(setup_key(DEMO_REPO))  # what the loop does after the backoff
    assert setup.status.check([DEMO_REPO])[0]
    assert {s.name for s in label_specs(assembly.settings())} <= label_names(assembly)
    assert [h.url for h in assembly.gateway.list_hooks(DEMO_REPO)] == [HOOK_URL]


def test_a_forge_down_at_first_start_is_set_up_once_it_answers(
    forge: ForgejoSandbox, assembly: Assembly, transport: Switchable
) -> None:
    """Connection refused at start: nothing set up, readiness says so; later it heals."""

    def refuse(request: httpx.Request) -> httpx.Response | None:
        raise httpx.ConnectError("connection refused", request=request)

    transport.fault = refuse
    prepare_repos(assembly)
    setup = assembly.setup
    assert setup is not None
    assert not setup.status.check([DEMO_REPO])[0]
    with pytest.raises(ForgejoServerError):
        setup.reconcile(setup_key(DEMO_REPO))
    transport.fault = lambda request: None
    setup.reconcile(setup_key(DEMO_REPO))
    assert setup.status.check([DEMO_REPO]) == (True, "1 repository set up")
    assert "status/doing" in label_names(assembly)


def test_a_second_pass_over_a_set_up_repo_writes_nothing(
    forge: ForgejoSandbox, assembly: Assembly
) -> None:
    """Labels and hook in place, secret written once by this process: zero writes."""
    prepare_repos(assembly)
    writes = assembly.gateway.writes
    assert assembly.setup is not None
    assembly.setup.reconcile(setup_key(DEMO_REPO))
    assert assembly.gateway.writes == writes


def test_the_full_resync_asks_for_every_repos_set_up_even_with_forgejo_down(
    assembly: Assembly, transport: Switchable
) -> None:
    """The set-up keys are enqueued before the listing that fails."""

    def refuse(request: httpx.Request) -> httpx.Response | None:
        raise httpx.ConnectError("connection refused", request=request)

    transport.fault = refuse
    with pytest.raises(ForgejoServerError):
        assembly.resync.full()
    assert queued(assembly) == [setup_key(DEMO_REPO)]


def test_a_label_deleted_by_hand_makes_the_set_up_run_again(
    forge: ForgejoSandbox, assembly: Assembly
) -> None:
    """Adding a label the repo lacks fails, and asks for the repository's set-up key."""
    prepare_repos(assembly)
    number = forge.create_issue(DEMO_REPO, "work", labels=["fleet/task"])
    doing = next(x.id for x in assembly.gateway.list_labels(DEMO_REPO) if x.name == "status/doing")
    with httpx.Client(transport=httpx.WSGITransport(app=forge.app)) as person:
        gone = person.delete(
            f"{IN_PROCESS_URL}/api/v1/repos/{DEMO_REPO}/labels/{doing}",
            headers={"Authorization": f"token {forge.admin_token}"},
        )
    assert gone.status_code == 204
    assembly.gateway.list_labels(DEMO_REPO)  # the gateway's cache knows it is gone
    queued(assembly)
    context = ActContext(gateway=assembly.gateway, store=assembly.store, enqueue=assembly.enqueue)
    with pytest.raises(ForgejoNotFound):
        AddLabels(DEMO_REPO, number, ("status/doing",)).apply(context)
    assert queued(assembly) == [setup_key(DEMO_REPO)]
    assert assembly.setup is not None
    assembly.setup.reconcile(setup_key(DEMO_REPO))
    assert "status/doing" in label_names(assembly)


def test_unmanaged_labels_that_are_missing_stall_the_set_up(tmp_path: Path) -> None:
    """manage_labels off and status/ labels absent: nothing may fix it here, so it stalls."""
    forge = ForgejoSandbox()
    settings = settings_for(forge, tmp_path, manage_labels=False)
    observed = SetupObserved(repo=DEMO_REPO, labels=(), hooks=None, secret_written=False)
    with pytest.raises(StalledError, match="status/todo"):
        plan_setup(observed, settings=settings)


def test_plan_creates_what_is_missing_and_writes_the_hook_secret_once(tmp_path: Path) -> None:
    """Plan table: empty repo → labels and hook; the secret is rewritten only once a process."""
    forge = ForgejoSandbox()
    settings = settings_for(forge, tmp_path, manage_webhooks=True, webhook_url=HOOK_URL)
    empty = SetupObserved(repo=DEMO_REPO, labels=(), hooks=(), secret_written=False)
    kinds = [type(a) for a in plan_setup(empty, settings=settings)]
    assert kinds == [EnsureLabels, EnsureWebhook]


def test_readiness_names_each_repo_that_is_not_set_up() -> None:
    """The status says which repositories are not set up and why; unknown ones count too."""
    status = RepoSetupStatus()
    now = datetime(2026, 1, 1, tzinfo=UTC)
    status.record("org/a", ready=True, detail="set up", at=now)
    status.record("org/b", ready=False, detail="set-up failed: 500", at=now)
    ready, detail = status.check(["org/a", "org/b", "org/c"])
    assert not ready
    assert detail == "org/b: set-up failed: 500; org/c: not set up yet"


def test_a_registered_agents_roles_and_capabilities_get_their_labels(
    forge: ForgejoSandbox, assembly: Assembly
) -> None:
    """A pull agent registering with a new role and capability enqueues the set-up keys; the
    pass creates ``agent/documenter`` and ``needs/docs``; registering again with the same
    profile enqueues nothing, and a second pass writes nothing."""
    prepare_repos(assembly)
    queued(assembly)
    assert "agent/documenter" not in label_names(assembly)
    profile = Profile(type="codex-cli", roles=("documenter",), capabilities=("docs",))
    first = assembly.fleet.register(profile, agent_id="doc-1", credential=None)
    assert setup_key(DEMO_REPO) in queued(assembly)
    setup = assembly.setup
    assert setup is not None
    setup.reconcile(setup_key(DEMO_REPO))
    assert {"agent/documenter", "needs/docs"} <= label_names(assembly)
    observed = setup.observe(setup_key(DEMO_REPO), settings=assembly.settings())
    assert observed.roles == ("documenter",) and observed.capabilities == ("docs",)
    assert plan_setup(observed, settings=assembly.settings()) == ()
    again = assembly.fleet.register(profile, agent_id="doc-1", credential=first.token)
    assert again.created is False
    assert setup_key(DEMO_REPO) not in queued(assembly)
