"""Health checks and restarts of the ``[[hosts]]``, on threads of their own beside the loop.

An ssh health check can take up to ``timeouts.dispatch`` seconds (and a restart as long); run
inside a reconcile, a few slow hosts would hold the loop's workers. So the daemon runs one
:class:`HostProbes` (built by ``webhook.daemon.build``, started with the loop): a scheduler
thread starts a check of every configured host each ``health_interval``, each check on a
thread of its own (at most ``loop.health_check_workers`` at once, never two of one host), and
records what it found. Each result enqueues the host's registry key; the registry controller
(``controllers/registry.py``) only reads the results — every one exactly once, by its
sequence number — and decides. A restart the registry asks for (:meth:`HostProbes.restart`)
runs the same way and its outcome is read on the registry's next pass.

Results are soft state: after a restart of the process every host is checked at once.
:meth:`HostProbes.run_due` runs the due checks in the calling thread instead (tests, one-shot
runs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import structlog

from reconciler.keys import Key, agent_key
from reconciler.settings import HostSettings, Settings

log = structlog.get_logger(__name__)

# The scheduler looks at the clock at least this often (seconds): a host added by a reload,
# or a clock moved by a test, is noticed within it.
TICK = 1.0


class HealthReport(Protocol):
    """What a host health check found (``reconciler.run.hosts.HostHealth``)."""

    @property
    def healthy(self) -> bool: ...

    @property
    def problems(self) -> tuple[str, ...]: ...


class RestartReport(Protocol):
    """What running a host's restart command did (``reconciler.run.hosts.RestartOutcome``)."""

    @property
    def ok(self) -> bool: ...

    @property
    def exit_code(self) -> int | None: ...

    @property
    def output(self) -> str: ...


class HostCheck(Protocol):
    def __call__(self, host: HostSettings, *, command: str, timeout: float) -> HealthReport: ...


class HostRestart(Protocol):
    def __call__(self, host: HostSettings, *, timeout: float) -> RestartReport: ...


def check_host(host: HostSettings, *, command: str, timeout: float) -> HealthReport:
    """The real health check over ssh (imported on first use: it pulls in fabric)."""
    from reconciler.run import hosts

    return hosts.check_host(host, command=command, timeout=timeout)


def restart_host(host: HostSettings, *, timeout: float) -> RestartReport:
    """The real restart over ssh (imported on first use: it pulls in fabric)."""
    from reconciler.run import hosts

    return hosts.restart_host(host, timeout=timeout)


@dataclass(frozen=True)
class Probe:
    """One finished health check; ``seq`` grows with every check of the host."""

    seq: int
    checked_at: datetime
    health: HealthReport


@dataclass(frozen=True)
class Restarted:
    """One finished restart; ``seq`` grows with every restart of the host."""

    seq: int
    at: datetime
    outcome: RestartReport


class HostProbes:
    """The hosts' latest health checks and restarts, made off the loop."""

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        enqueue: Callable[[Key], None] | None = None,
        check: HostCheck = check_host,
        restart: HostRestart = restart_host,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._enqueue = enqueue
        self._check = check
        self._restart = restart
        self._lock = threading.Lock()
        self._probes: dict[str, Probe] = {}
        self._restarts: dict[str, Restarted] = {}
        self._in_flight: set[str] = set()
        self._slots = threading.BoundedSemaphore(settings().loop.health_check_workers)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._scheduler: threading.Thread | None = None

    # --- what the registry reads ---------------------------------------------------------

    def latest(self, name: str) -> Probe | None:
        """The host's last finished check, or None before its first."""
        with self._lock:
            return self._probes.get(name)

    def restarted(self, name: str) -> Restarted | None:
        """The host's last finished restart, or None."""
        with self._lock:
            return self._restarts.get(name)

    def in_flight(self, name: str) -> bool:
        """Whether a check or restart of the host is running now."""
        with self._lock:
            return name in self._in_flight

    # --- running checks ------------------------------------------------------------------

    def due(self) -> list[HostSettings]:
        """The configured hosts whose check is due and not already running."""
        now = self._clock()
        with self._lock:
            return [
                host
                for host in self._settings().hosts
                if host.name not in self._in_flight
                and (
                    (probe := self._probes.get(host.name)) is None
                    or (now - probe.checked_at).total_seconds() >= host.health_interval
                )
            ]

    def run_due(self) -> list[str]:
        """Check every due host in the calling thread; the names checked."""
        hosts = self.due()
        for host in hosts:
            with self._lock:
                self._in_flight.add(host.name)
            self._probe(host)
        return [host.name for host in hosts]

    def restart(self, host: HostSettings, *, timeout: float) -> None:
        """Run the host's restart command: on a thread of its own once started, else here.
        The outcome is read with :meth:`restarted`; the host's key is enqueued."""
        with self._lock:
            self._in_flight.add(host.name)
        if self._scheduler is None:
            self._restart_now(host, timeout)
        else:
            self._spawn(f"restart-{host.name}", lambda: self._restart_now(host, timeout))

    def _probe(self, host: HostSettings) -> None:
        settings = self._settings()
        started = self._clock()
        try:
            command = settings.adapter_for(host).command[0]
            health = self._check(host, command=command, timeout=settings.timeouts.dispatch)
        except Exception:  # a check never raises for a sick host; this is a bug, logged
            log.exception("host.check_crashed", host=host.name)
            with self._lock:
                self._in_flight.discard(host.name)
            return
        with self._lock:
            previous = self._probes.get(host.name)
            seq = previous.seq + 1 if previous is not None else 1
            self._probes[host.name] = Probe(seq=seq, checked_at=started, health=health)
            self._in_flight.discard(host.name)
        if not health.healthy:
            log.info("host.check_failed", host=host.name, problems=list(health.problems))
        self._notify(host.name)

    def _restart_now(self, host: HostSettings, timeout: float) -> None:
        try:
            outcome = self._restart(host, timeout=timeout)
        except Exception:  # a restart never raises; this is a bug, logged
            log.exception("host.restart_crashed", host=host.name)
            with self._lock:
                self._in_flight.discard(host.name)
            return
        (log.info if outcome.ok else log.warning)(
            "host.restarted",
            host=host.name,
            ok=outcome.ok,
            exit_code=outcome.exit_code,
            output=outcome.output[-500:],
        )
        with self._lock:
            previous = self._restarts.get(host.name)
            seq = previous.seq + 1 if previous is not None else 1
            self._restarts[host.name] = Restarted(seq=seq, at=self._clock(), outcome=outcome)
            self._in_flight.discard(host.name)
        self._notify(host.name)

    def _notify(self, name: str) -> None:
        if self._enqueue is not None:
            self._enqueue(agent_key(name))

    # --- the scheduler -------------------------------------------------------------------

    def start(self) -> None:
        """Check every host now, and each again when its interval has passed."""
        if self._scheduler is not None:
            raise RuntimeError("the host probes are already running")
        self._scheduler = threading.Thread(target=self._schedule, name="host-probes", daemon=True)
        self._scheduler.start()

    def wake(self) -> None:
        """Look for due checks now (the hosts changed)."""
        self._wake.set()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop starting checks; wait up to ``timeout`` for the scheduler. A check still
        running is left to finish on its own (daemon threads)."""
        self._stop.set()
        self._wake.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout)

    def _schedule(self) -> None:
        while not self._stop.is_set():
            for host in self.due():
                if not self._slots.acquire(blocking=False):
                    break  # every slot is busy: the rest wait for the next tick
                with self._lock:
                    self._in_flight.add(host.name)
                self._spawn(f"probe-{host.name}", self._checked(host))
            self._wake.wait(self._next_tick())
            self._wake.clear()

    def _checked(self, host: HostSettings) -> Callable[[], None]:
        def run() -> None:
            try:
                self._probe(host)
            finally:
                self._slots.release()

        return run

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()

    def _next_tick(self) -> float:
        """Seconds until the next check falls due, at most :data:`TICK`."""
        now = self._clock()
        waits = [TICK]
        with self._lock:
            for host in self._settings().hosts:
                probe = self._probes.get(host.name)
                if probe is not None and host.name not in self._in_flight:
                    left = host.health_interval - (now - probe.checked_at).total_seconds()
                    waits.append(max(left, 0.0))
        return min(waits)
