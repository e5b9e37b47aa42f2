"""The daemon: one process with the reconcile loop, the resync timer and the HTTP server.

``agent-fleet run --config FILE`` builds a :class:`Daemon` from the settings, starts it and
waits for SIGTERM/SIGINT. :func:`build` assembles the pieces — this is the one place that
lists the controllers, in one explicit tuple — and is shared with ``agent-fleet reconcile
--once`` and the demo.

Stopping: the HTTP server stops accepting, the resync timer stops, the loop stops taking keys
and finishes the ones in flight (up to ``loop.shutdown_grace``), then the store is closed.

Configuration reload: the config file is watched; a valid change replaces the settings the
controllers and the resync read on their next pass and triggers a resync; an invalid change
is refused with a logged error and the old settings keep running. Settings that shape the
process itself (bind address, port, store path, workers, webhook secret) are reported as
needing a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from controllers.assignment import AssignmentController
from controllers.knowledge import KnowledgeController
from controllers.receipts import ReceiptsController
from controllers.registry import RegistryController
from controllers.review import ReviewController
from controllers.setup import RepoSetupController, RepoSetupStatus
from reconciler.engine.loop import Loop
from reconciler.engine.metrics import Metrics
from reconciler.engine.reconcile import ActContext, Actuator, Controller
from reconciler.engine.resync import Resync, ResyncTimer
from reconciler.engine.workqueue import WorkQueue
from reconciler.errors import ConfigError, FleetError
from reconciler.fleet.agents import Fleet
from reconciler.fleet.knowledge import KnowledgeBook, KnowledgeTopics
from reconciler.fleet.queue import PullQueue
from reconciler.fleet.tasktokens import TaskTokens
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.keys import ASSIGNMENT, REVIEW, Key, setup_key
from reconciler.matrix.client import MatrixService, failpoint_after_send
from reconciler.matrix.metrics import MatrixMetrics
from reconciler.run.probes import HostCheck, HostProbes, check_host
from reconciler.run.ssh import HostExecutor
from reconciler.settings import Settings, load_settings
from reconciler.store import Store
from reconciler.text import format_duration
from webhook.agents_api import install_agent_api
from webhook.app import Check, install_health, make_app
from webhook.dashboard import install_dashboard
from webhook.events import is_own_echo, note_merge
from webhook.mcp_api import install_mcp_api
from webhook.openapi import install_openapi
from webhook.receiver import install_forgejo_webhook
from webhook.server import http_server
from webhook.tasks_api import install_tasks_api

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]

# Settings that shape the running process; a change to them is applied only by a restart.
RESTART_ONLY = (
    ("webhook", "bind"),
    ("webhook", "port"),
    ("webhook", "threads"),
    ("webhook", "secret"),
    ("webhook", "max_body_bytes"),
    ("webhook", "connection_limit"),
    ("webhook", "channel_timeout"),
    ("webhook", "cleanup_interval"),
    ("store", "path"),
    ("loop", "workers"),
    ("loop", "controller_workers"),
    ("loop", "health_check_workers"),
    ("forgejo", "url"),
    ("forgejo", "token"),
    ("dashboard", "enabled"),
    ("dashboard", "path"),
)


# The hook events agent-fleet subscribes a repository to (see docs/webhooks.md). Forgejo
# expands "issues" and "pull_request" to every issue and pull-request sub-event, reviews included.


def utc_now() -> datetime:
    return datetime.now(UTC)


class SettingsHolder:
    """The current settings; replaced whole on a valid reload, read by reference on each pass."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()

    def __call__(self) -> Settings:
        return self._settings

    def replace(self, settings: Settings) -> Settings:
        with self._lock:
            old, self._settings = self._settings, settings
        return old


@dataclass
class Assembly:
    """Everything one agent-fleet process is made of, wired together."""

    settings: SettingsHolder
    store: Store
    gateway: ForgejoGateway
    queue: WorkQueue
    loop: Loop
    resync: Resync
    metrics: Metrics
    controllers: tuple[Controller, ...]
    fleet: Fleet
    pull_queue: PullQueue
    probes: HostProbes
    enqueue: Callable[[Key], None]
    executor: HostExecutor | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    setup: RepoSetupController | None = None
    """Keeps each watched repository's labels and webhook; its ``status`` feeds /readyz."""
    tokens: TaskTokens = field(default_factory=TaskTokens)
    """Issues and checks the task tokens of the runs' MCP servers (docs/mcp.md)."""
    knowledge: KnowledgeBook | None = None
    """Queues the notes agents share and answers ``context`` (reconciler/fleet/knowledge.py)."""


def build(
    settings: Settings,
    *,
    store: Store,
    clock: Clock = utc_now,
    dry_run: bool = False,
    transport: object | None = None,
    host_check: HostCheck = check_host,
) -> Assembly:
    """Wire store, gateway, queue, controllers, loop and resync for one process."""
    holder = SettingsHolder(settings)
    metrics = Metrics()
    gateway = ForgejoGateway(
        settings.forgejo.url,
        settings.forgejo.token.get_secret_value(),
        timeout=settings.forgejo.timeout,
        read_retries=settings.forgejo.read_retries,
        on_call=metrics.count_forgejo_call,
        transport=transport,
        permission_cache=settings.forgejo.permission_cache,
    )
    queue = WorkQueue(
        backoff_initial=settings.loop.backoff_initial,
        backoff_max=settings.loop.backoff_max,
        # A dry run changes nothing, not even the local record of failures.
        backoff_store=None if dry_run else store,
        # A fresh look at an issue (a webhook, the resync, a person) reads it; follow-ups of
        # work under way (urgent keys) take it as last read plus our own label writes.
        on_add=lambda key: _fresh_look(gateway, key),
    )
    # Every kind of key webhooks and executors name has its controller in the tuple below;
    # a key for no controller is reported by the loop.
    enqueue = queue.add
    # One key for the task tokens of pull workers' runs and of ssh runs.
    tokens = task_tokens(settings)
    fleet = Fleet(store, settings=holder, clock=clock, enqueue=enqueue, follow_up=queue.add_urgent)
    fleet.bind_metrics(metrics)
    # Pull agents (over the agent API) and the ssh executor's runs (in process) report their
    # work through this one queue and its fleet. What they report (a task taken, a receipt, a
    # run ended) and what a reconcile asks of the next controller carry work under way
    # through: urgent keys, ahead of webhooks' and resyncs' (see the work queue).
    pull_queue = PullQueue(
        store, fleet=fleet, settings=holder, clock=clock, enqueue=queue.add_urgent
    )
    # A dry run dispatches nothing, so it has no executor.
    executor = (
        None
        if dry_run
        else HostExecutor(
            store=store,
            reports=pull_queue,
            gateway=gateway,
            settings=holder,
            clock=clock,
            enqueue=queue.add_urgent,
            log_dir=Path(settings.store.path) / "logs",
            tokens=tokens,
        )
    )
    # ssh health checks and restarts run beside the loop; the registry reads their results.
    probes = HostProbes(settings=holder, clock=clock, enqueue=enqueue, check=host_check)
    actuator = Actuator(
        ActContext(gateway=gateway, store=store, enqueue=queue.add_urgent, executor=executor),
        dry_run=dry_run,
    )
    setup = RepoSetupController(
        gateway,
        actuator,
        settings=holder,
        clock=clock,
        status=RepoSetupStatus(),
        agents=store.list_agents,
    )
    controllers: tuple[Controller, ...] = (
        setup,
        AssignmentController(
            gateway, store, actuator, settings=holder, clock=clock, executor=executor
        ),
        RegistryController(store, fleet, actuator, settings=holder, clock=clock, probes=probes),
        ReviewController(gateway, store, actuator, settings=holder, clock=clock, executor=executor),
        ReceiptsController(gateway, store, actuator, settings=holder, clock=clock),
        KnowledgeController(gateway, store, actuator, settings=holder, clock=clock),
    )
    loop = Loop(
        controllers,
        queue,
        workers={c.name: settings.loop.workers_of(c.name) for c in controllers},
        metrics=metrics,
    )
    resync = Resync(
        gateway,
        store,
        enqueue,
        settings=holder,
        clock=clock,
        metrics=metrics,
        record=not dry_run,
        repo_keys=(KnowledgeTopics(gateway, store),),
    )
    return Assembly(
        settings=holder,
        store=store,
        gateway=gateway,
        queue=queue,
        loop=loop,
        resync=resync,
        metrics=metrics,
        controllers=controllers,
        fleet=fleet,
        pull_queue=pull_queue,
        probes=probes,
        enqueue=enqueue,
        executor=executor,
        setup=setup,
        tokens=tokens,
        knowledge=KnowledgeBook(store, settings=holder, clock=clock, enqueue=enqueue),
        # Runs first: a run still going when the gateway closes could not open its PR.
        closers=[
            *(
                [lambda: executor.shutdown(timeout=settings.loop.shutdown_grace)]
                if executor
                else []
            ),
            gateway.close,
        ],
    )


def _fresh_look(gateway: ForgejoGateway, key: Key) -> None:
    """An issue or pull request key added for a fresh look: its reconcile reads the issue or
    the pull request, not a kept copy."""
    if key.controller in (ASSIGNMENT, REVIEW) and key.id.isdigit():
        gateway.seen.invalidate(key.repo, int(key.id))


def task_tokens(settings: Settings) -> TaskTokens:
    """The task tokens under ``api.task_token_secret`` (a random key when it is unset)."""
    secret = settings.api.task_token_secret
    return TaskTokens(secret.get_secret_value().encode() if secret else None)


def http_app(assembly: Assembly, *, readiness: Callable[[], Mapping[str, Check]]) -> Any:
    """The daemon's Bottle app: webhook receiver, agent API and its OpenAPI document, health,
    metrics, and the fleet page."""
    settings = assembly.settings()
    app = make_app()
    secret = settings.webhook.secret
    install_forgejo_webhook(
        app,
        secret=secret.get_secret_value() if secret else None,
        enqueue=assembly.enqueue,
        max_body_bytes=settings.webhook.max_body_bytes,
        on_delivery=assembly.metrics.count_webhook,
        is_echo=lambda event, payload: is_own_echo(
            event,
            payload,
            seen=assembly.gateway.seen,
            bot_login=assembly.settings().forgejo.bot_login,
        ),
        note=lambda event, payload: note_merge(event, payload, seen=assembly.gateway.seen),
    )
    install_agent_api(
        app,
        fleet=assembly.fleet,
        settings=assembly.settings,
        max_body_bytes=settings.webhook.max_body_bytes,
    )
    install_tasks_api(
        app,
        queue=assembly.pull_queue,
        max_body_bytes=settings.webhook.max_body_bytes,
        tokens=assembly.tokens,
    )
    install_mcp_api(
        app,
        fleet=assembly.fleet,
        tokens=assembly.tokens,
        max_body_bytes=settings.webhook.max_body_bytes,
        knowledge=assembly.knowledge,
    )
    install_openapi(app)
    install_health(app, readiness=readiness, metrics=assembly.metrics)
    if settings.dashboard.enabled:
        install_dashboard(
            app, fleet=assembly.fleet, store=assembly.store, settings=assembly.settings
        )
    return app


def prepare_repos(assembly: Assembly) -> None:
    """Set up each watched repository now (labels, webhook: the set-up controller's pass).

    A repository that cannot be set up now (Forgejo down, a 500, a timeout) is logged and its
    set-up key handed to the loop, which keeps retrying it with backoff; until it succeeds
    ``/readyz`` reports that repository as not set up.
    """
    setup = assembly.setup
    assert setup is not None
    for repo in assembly.settings().forgejo.repos:
        key = setup_key(repo)
        try:
            setup.reconcile(key)
        except FleetError as exc:
            log.warning("repo.setup_failed", repo=repo, error=str(exc), retry="with backoff")
            assembly.enqueue(key)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        clock: Clock = utc_now,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self._config_path = config_path
        self._env = env
        self._clock = clock
        self._store = Store.open(settings.store.path)
        try:
            self.assembly = build(settings, store=self._store, clock=clock)
        except BaseException:
            self._store.close()
            raise
        # Matrix runs beside the loop on its own thread; a Matrix problem never stops reconciling.
        self.matrix = (
            MatrixService(
                self._store,
                self.assembly.gateway,
                settings=self.assembly.settings,
                clock=clock,
                enqueue=self.assembly.enqueue,
                metrics=MatrixMetrics(self.assembly.metrics.registry),
                after_send=failpoint_after_send(env),
            )
            if settings.matrix.enabled
            else None
        )
        self._timer = ResyncTimer(
            self.assembly.resync,
            interval=settings.loop.resync_interval,
            full_interval=settings.loop.full_resync_interval,
            jitter=settings.loop.resync_jitter,
            monotonic=time.monotonic,
        )
        app = http_app(self.assembly, readiness=self.readiness)
        self.app = app
        self._http = http_server(app, settings.webhook)
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._forgejo_check: tuple[float, Check] | None = None
        self.stopped = threading.Event()

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def settings(self) -> Settings:
        return self.assembly.settings()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        settings = self.settings
        if settings.webhook.secret is None:
            log.warning(
                "webhook.no_secret",
                message="webhook.secret is not set: every webhook delivery will be refused; "
                "the periodic resync still picks up every change",
            )
        self._http.start()
        prepare_repos(self.assembly)
        if self.matrix is not None:
            # Before the loop: the notifier's starting point must precede the first event.
            self.matrix.start()
        self.assembly.loop.start()
        self.assembly.probes.start()
        self._timer.start()  # its first tick is a full resync: the start-up enqueue
        if self._config_path is not None:
            self._watcher = threading.Thread(target=self._watch, name="config-watch", daemon=True)
            self._watcher.start()
        log.info(
            "daemon.started",
            url=self.url,
            repos=list(settings.forgejo.repos),
            workers={c.name: settings.loop.workers_of(c.name) for c in self.assembly.controllers},
            store=str(settings.store.path),
        )

    def stop(self) -> bool:
        """Stop everything; True when in-flight reconciles all finished within the grace."""
        log.info("daemon.stopping")
        self._watch_stop.set()
        self._http.stop()
        self._timer.stop()
        self.assembly.probes.stop()
        drained = self.assembly.loop.stop(grace=self.settings.loop.shutdown_grace)
        if self.matrix is not None:
            self.matrix.stop()
        for close in self.assembly.closers:
            close()
        self._store.close()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.stopped.set()
        log.info("daemon.stopped", drained=drained)
        return drained

    # --- readiness ----------------------------------------------------------------------

    def readiness(self) -> dict[str, Check]:
        settings = self.settings
        checks = {"store": Check(not self._store.closed, str(settings.store.path))}
        checks["forgejo"] = self._check_forgejo()
        loop = self.assembly.loop.health(stuck_after=settings.loop.stuck_after)
        checks["loop"] = Check(loop.ok, loop.describe())
        setup = self.assembly.setup
        assert setup is not None
        ready, detail = setup.status.check(settings.forgejo.repos)
        checks["repos"] = Check(ready, detail)
        last = self.assembly.resync.last_resync()
        limit = timedelta(seconds=max(3 * settings.loop.resync_interval, 120))
        if last is None:
            checks["resync"] = Check(False, "no resync has completed yet")
        else:
            age = self._clock() - last
            checks["resync"] = Check(
                age <= limit, f"last resync {format_duration(age.total_seconds())} ago"
            )
        if self.matrix is not None:
            # Degraded, not unready: notifications wait in the outbox, reconciling goes on.
            status = self.matrix.status()
            checks["matrix"] = Check(status.ok, status.detail, required=False)
        return checks

    def _check_forgejo(self) -> Check:
        # Cached for a few seconds: a readiness probe must not hammer Forgejo.
        now = time.monotonic()
        if self._forgejo_check is not None and now - self._forgejo_check[0] < 10:
            return self._forgejo_check[1]
        try:
            check = Check(True, f"Forgejo {self.assembly.gateway.version()}")
        except FleetError as exc:
            check = Check(False, str(exc))
        self._forgejo_check = (now, check)
        return check

    # --- configuration reload -----------------------------------------------------------

    def _watch(self) -> None:
        import watchfiles

        assert self._config_path is not None
        path = self._config_path.resolve()
        announced = False
        # Watch the directory: editors replace files by rename, which a file watch can miss.
        # yield_on_timeout makes the watcher yield an empty set once it is watching, so the
        # log can say from when on an edit is picked up.
        for changes in watchfiles.watch(
            path.parent,
            stop_event=self._watch_stop,
            debounce=200,
            rust_timeout=500,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if not announced:
                announced = True
                log.info("config.watching", path=str(path))
            if any(Path(p).resolve() == path for _, p in changes):
                self.reload()

    def reload(self) -> bool:
        """Load the config file again; apply it if valid. Returns whether it was applied."""
        assert self._config_path is not None
        try:
            new = load_settings(self._config_path, env=self._env)
        except ConfigError as exc:
            log.error(
                "config.rejected",
                path=str(self._config_path),
                problems=[f"{p}: {m}" for p, m in exc.problems],
                message="the previous configuration keeps running",
            )
            return False
        old = self.assembly.settings.replace(new)
        restart = [
            f"{section}.{name}"
            for section, name in RESTART_ONLY
            if getattr(getattr(old, section), name) != getattr(getattr(new, section), name)
        ]
        if restart:
            log.warning("config.restart_required", fields=restart)
        log.info("config.reloaded", path=str(self._config_path))
        prepare_repos(self.assembly)
        # Hosts added, changed or removed: the registry creates, updates or retires them now.
        self.assembly.fleet.enqueue_hosts()
        self.assembly.probes.wake()
        self._timer.request()
        return True

    def wait(self, stop: threading.Event) -> None:
        stop.wait()
