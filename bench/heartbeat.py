"""Benchmark of agent heartbeats on loopback: 1,000 registered agents against the daemon's app.

Run by hand: ``python bench/heartbeat.py`` (``--quick`` for a few agents and a second of load;
the smoke test runs that). Serves the daemon's own Bottle app (``webhook.daemon.http_app``
over the assembly from ``build``: bearer-token lookup, body validation, the Fleet's soft
state, the stop list read from the store) on the production server
(``webhook.server.HttpServer``, waitress), registers the agents through
``POST /api/v1/agents/register`` and gives a fifth of them a task, then drives
``POST /api/v1/agents/heartbeat`` from every agent, each carrying its load, version and the
tasks it runs. Two runs:

* **capacity**: keep-alive connections sending heartbeats back to back, the agents taking
  turns on them — heartbeats per second (target: >= 1,000/s);
* **at 1,000/s**: an open-loop schedule, every agent heartbeating in turn so that 1,000
  heartbeats a second are offered whatever the answers' speed — p99 latency of one
  heartbeat (target: <= 20 ms), and how far the schedule slipped.

The load comes from a separate process forked before any server starts (``http.client``, one
thread per connection), so client and server share no interpreter lock — but they do share
the machine's cores, and the latencies include the client's own time. The table also shows
that no heartbeat wrote to the store: heartbeats are soft state (see reconciler/fleet/agents.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

# Importing the harness takes bench/ off sys.path, where the bench/ scripts' names would shadow
# the packages they measure: it comes before the project's imports (see bench/harness.py).
from harness import (
    ConnectionThreads,
    LoadClient,
    Row,
    percentile_ms,
    print_notes,
    print_table,
    register_agents,
    verdict,
)
from pydantic import SecretStr

from reconciler.engine.logs import configure_logging
from reconciler.fleet import operations
from reconciler.models import AgentId, AgentStatus, RepoName, Task, TaskState, task_id_for
from reconciler.settings import ApiSettings, ForgejoSettings, Settings, StoreSettings
from reconciler.store import Store
from webhook.daemon import build, http_app
from webhook.server import HttpServer

HEARTBEAT_PATH = operations.HEARTBEAT.path
OPERATOR = "bench-operator-token"
ENROLMENT = "bench-enrolment-secret"
REPO = "example/bench"

AGENTS = 1_000
BUSY_SHARE = 5  # one agent in five reports a task it runs
RATE = 1_000.0  # heartbeats per second offered in the open-loop run
OPEN_SECONDS = 10.0
CAPACITY_SECONDS = 5.0
CONNECTIONS = 16
QUICK = {"agents": 20, "open_seconds": 1.0, "capacity_seconds": 0.5, "rate": 200.0}

THROUGHPUT_TARGET = 1_000.0
P99_TARGET_MS = 20.0


# --- the load generator (runs in the forked client process) -------------------------------


@dataclass(frozen=True)
class Job:
    """One measured run. ``rate`` None: back to back; else the open-loop rate per second."""

    port: int
    bodies: tuple[tuple[str, bytes], ...]  # (token, heartbeat body) per agent
    connections: int
    seconds: float
    rate: float | None
    warmup: int = 5
    host: str = "127.0.0.1"


@dataclass
class Run:
    """What one run measured: a latency per heartbeat (seconds), answers, wall time.

    ``lag`` is how late each open-loop send left against its schedule; ``server_cpu`` is the
    CPU time the serving process spent during the run, set by the parent.
    """

    latencies: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    stop_orders: int = 0
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    sent: int = 0
    server_cpu: float = 0.0


def drive(job: Job) -> Run:
    """Send heartbeats on ``job.connections`` keep-alive connections, the agents in turn."""
    together = ConnectionThreads(job.connections)
    run = Run()
    lock = threading.Lock()
    ends = [0.0] * job.connections

    def send(conn: http.client.HTTPConnection, token: str, body: bytes) -> tuple[int, bytes]:
        conn.request(
            "POST",
            HEARTBEAT_PATH,
            body=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        return response.status, response.read()

    def connection(n: int) -> None:
        mine = job.bodies[n :: job.connections] or job.bodies[:1]
        conn = http.client.HTTPConnection(job.host, job.port, timeout=30)
        latencies: list[float] = []
        lags: list[float] = []
        answers: dict[int, int] = {}
        stops = 0
        try:
            try:
                for i in range(job.warmup):
                    send(conn, *mine[i % len(mine)])
            finally:
                together.ready()  # a failed warm-up still releases the others
            started = together.started
            deadline = started + job.seconds
            # Open loop: this connection's share of the rate, staggered against the others.
            period = job.connections / job.rate if job.rate else 0.0
            due = started + (n / job.rate if job.rate else 0.0)
            i = 0
            while True:
                if job.rate:
                    now = time.perf_counter()
                    if due >= deadline:
                        break
                    if due > now:
                        time.sleep(due - now)
                    lags.append(max(time.perf_counter() - due, 0.0))
                    due += period
                elif time.perf_counter() >= deadline:
                    break
                token, body = mine[i % len(mine)]
                i += 1
                before = time.perf_counter()
                status, answer = send(conn, token, body)
                latencies.append(time.perf_counter() - before)
                answers[status] = answers.get(status, 0) + 1
                if status == 200 and json.loads(answer)["stop"]:
                    stops += 1
            ends[n] = time.perf_counter()
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as exc:
            with lock:
                run.errors.append(f"connection {n}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()
            with lock:
                run.latencies.extend(latencies)
                run.lag.extend(lags)
                run.stop_orders += stops
                for status, count in answers.items():
                    run.statuses[status] = run.statuses.get(status, 0) + count

    # Every connection starts on the same schedule, a moment after the threads are launched.
    started = together.run(connection, timeout=job.seconds + 60, lead=0.05)
    run.elapsed = max(ends) - started if any(ends) else job.seconds
    run.sent = len(run.latencies) + job.warmup * job.connections
    return run


# --- the fleet -----------------------------------------------------------------------------


def bench_settings(root: Path) -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url="http://forgejo.invalid:3000",
            token=SecretStr("never-used: heartbeats make no Forgejo call"),
            repos=(REPO,),
            bot_login="fleet-bot",
        ),
        api=ApiSettings(operator_token=SecretStr(OPERATOR), enrolment_secret=SecretStr(ENROLMENT)),
        store=StoreSettings(path=root / "state"),
    )


def registration(n: int) -> dict[str, object]:
    """What the ``n``-th agent tells the API when it registers."""
    return {
        "agent_id": f"agent-{n:04d}",
        "type": ("claude-code", "codex-cli", "hermes")[n % 3],
        "hostname": f"worker-{n // 8:03d}",
        "roles": ["developer"] if n % 4 else ["code-reviewer"],
        "capabilities": ["code:python", "test"],
        "max_concurrency": 2,
        "metadata": {"version": "1.0.0", "llm_model": "claude-sonnet"},
    }


def give_tasks(store: Store, agents: list[tuple[str, str]]) -> dict[str, str]:
    """An assigned task for every BUSY_SHARE-th agent, as placement leaves it; agent → task."""
    now = datetime.now(UTC)
    held: dict[str, str] = {}
    for n, (agent_id, _) in enumerate(agents):
        if n % BUSY_SHARE:
            continue
        task = Task(
            id=task_id_for(REPO, n + 1),
            repo=RepoName(REPO),
            issue_number=n + 1,
            title=f"Task {n + 1}",
            state=TaskState.RUNNING,
            agent_id=AgentId(agent_id),
            lease_generation=1,
            attempt=1,
            created_at=now,
            updated_at=now,
        )
        store.put_task(task)
        held[agent_id] = task.id
    return held


def heartbeat_bodies(
    agents: list[tuple[str, str]], held: dict[str, str]
) -> tuple[tuple[str, bytes], ...]:
    bodies = []
    for n, (agent_id, token) in enumerate(agents):
        tasks = [{"task_id": held[agent_id], "lease_generation": 1}] if agent_id in held else []
        body = {"load": round(0.1 * (n % 10), 1), "version": "1.0.0", "tasks": tasks}
        bodies.append((token, json.dumps(body).encode()))
    return tuple(bodies)


# --- measuring and reporting ---------------------------------------------------------------


def check(run: Run, name: str) -> None:
    """Refuse to report a run whose answers were not all 200: it measured nothing."""
    if run.errors or set(run.statuses) - {200} or not run.latencies:
        raise SystemExit(f"{name}: unexpected answers {run.statuses} or errors {run.errors[:3]}")


@dataclass(frozen=True)
class Options:
    agents: int
    connections: int
    rate: float
    open_seconds: float
    capacity_seconds: float


@dataclass
class Results:
    capacity: Run
    open_loop: Run
    registered: int
    busy: int
    registration_s: float
    online: int
    store_written: bool
    threads: int


def measure(client: LoadClient[Job, Run], options: Options, *, root: Path) -> Results:
    settings = bench_settings(root)
    with Store.open(settings.store.path) as store:
        assembly = build(settings, store=store)
        server = HttpServer(
            http_app(assembly, readiness=dict),
            host="127.0.0.1",
            port=0,
            threads=settings.webhook.threads,
        )
        server.start()
        try:
            started = time.perf_counter()
            agents = register_agents(
                server.port, map(registration, range(options.agents)), enrolment=ENROLMENT
            )
            registration_s = time.perf_counter() - started
            held = give_tasks(store, agents)
            bodies = heartbeat_bodies(agents, held)
            # The live state's snapshot and journal: a write appends to the journal.
            state_files = (store.path / "state.json", store.path / "state.journal")
            before = [path.read_bytes() if path.exists() else b"" for path in state_files]

            def load(*, seconds: float, rate: float | None) -> Run:
                """One run of heartbeats, with the server's CPU time meanwhile."""
                run, run_cpu = client.run(
                    Job(
                        port=server.port,
                        bodies=bodies,
                        connections=options.connections,
                        seconds=seconds,
                        rate=rate,
                    ),
                    timeout=seconds + 90,
                )
                run.server_cpu = run_cpu
                return run

            capacity = load(seconds=options.capacity_seconds, rate=None)
            open_loop = load(seconds=options.open_seconds, rate=options.rate)
            online = len(assembly.fleet.agents(status=AgentStatus.ONLINE))
            written = [
                path.read_bytes() if path.exists() else b"" for path in state_files
            ] != before
        finally:
            server.stop()
            assembly.gateway.close()
    check(capacity, "capacity run")
    check(open_loop, "open-loop run")
    return Results(
        capacity=capacity,
        open_loop=open_loop,
        registered=len(agents),
        busy=len(held),
        registration_s=registration_s,
        online=online,
        store_written=written,
        threads=settings.webhook.threads,
    )


def report(results: Results, options: Options) -> list[Row]:
    capacity, open_loop = results.capacity, results.open_loop
    throughput = len(capacity.latencies) / capacity.elapsed if capacity.elapsed else 0.0
    achieved = len(open_loop.latencies) / open_loop.elapsed if open_loop.elapsed else 0.0
    p99 = percentile_ms(open_loop.latencies, 99)
    c = options.connections
    sent = capacity.sent + open_loop.sent
    cpu = (capacity.server_cpu + open_loop.server_cpu) / sent * 1e6 if sent else float("nan")
    return [
        (
            "agents registered through the API",
            f"{results.registered:,} ({results.busy:,} running a task)",
            "(info)",
            "",
        ),
        (
            "registration, one durable write each",
            f"{results.registration_s:.1f} s ({results.registration_s / results.registered * 1000:.1f} ms each)",
            "(info)",
            "",
        ),
        (
            f"capacity, {c} conns back to back: heartbeats/s",
            f"{throughput:,.0f}/s",
            f">= {THROUGHPUT_TARGET:,.0f}/s",
            verdict(throughput >= THROUGHPUT_TARGET),
        ),
        (
            f"capacity, {c} conns: p50 / p99",
            f"{percentile_ms(capacity.latencies, 50):.2f} / {percentile_ms(capacity.latencies, 99):.2f} ms",
            "(info: queueing)",
            "",
        ),
        (
            f"open loop, {options.rate:,.0f}/s offered: achieved",
            f"{achieved:,.0f}/s over {open_loop.elapsed:.1f} s",
            "(info)",
            "",
        ),
        (
            f"open loop, {options.rate:,.0f}/s offered: p50",
            f"{percentile_ms(open_loop.latencies, 50):.2f} ms",
            "(info)",
            "",
        ),
        (
            f"open loop, {options.rate:,.0f}/s offered: p99",
            f"{p99:.2f} ms",
            f"<= {P99_TARGET_MS:g} ms",
            verdict(p99 <= P99_TARGET_MS),
        ),
        (
            "open loop: send late against schedule, p99 / max",
            f"{percentile_ms(open_loop.lag, 99):.2f} / {max(open_loop.lag, default=0) * 1000:.2f} ms",
            "(info: client keeping up)",
            "",
        ),
        ("server CPU per heartbeat", f"{cpu:.0f} us", "(info)", ""),
        (
            "after the runs",
            (
                f"{results.online:,} online, "
                f"{capacity.stop_orders + open_loop.stop_orders} stop orders, "
                f"state file {'WRITTEN' if results.store_written else 'untouched'}"
            ),
            "(info: soft state)",
            "",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=AGENTS, help="agents to register")
    parser.add_argument(
        "--connections", type=int, default=CONNECTIONS, help="keep-alive connections"
    )
    parser.add_argument("--rate", type=float, default=RATE, help="heartbeats/s offered (open loop)")
    parser.add_argument("--seconds", type=float, default=OPEN_SECONDS, help="open-loop run length")
    parser.add_argument(
        "--capacity-seconds", type=float, default=CAPACITY_SECONDS, help="back-to-back run length"
    )
    parser.add_argument("--quick", action="store_true", help="a few agents: check the bench runs")
    args = parser.parse_args()
    options = Options(
        agents=int(QUICK["agents"]) if args.quick else args.agents,
        connections=min(args.connections, 4) if args.quick else args.connections,
        rate=QUICK["rate"] if args.quick else args.rate,
        open_seconds=QUICK["open_seconds"] if args.quick else args.seconds,
        capacity_seconds=QUICK["capacity_seconds"] if args.quick else args.capacity_seconds,
    )
    if (
        min(options.agents, options.connections) < 1
        or min(options.rate, options.open_seconds, options.capacity_seconds) <= 0
    ):
        parser.error("--agents, --connections, --rate and the run lengths must be positive")

    # The daemon logs as in production (one line per registration): rendered, then discarded.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    configure_logging(level="info", json=True, stream=devnull)
    load = os.getloadavg()[0]
    client = LoadClient(drive, name="heartbeat-bench-client")  # before any server thread starts
    root = Path(tempfile.mkdtemp(prefix="agent-fleet-heartbeat-bench-"))
    started = time.perf_counter()
    try:
        results = measure(client, options, root=root)
    finally:
        client.close()
        shutil.rmtree(root, ignore_errors=True)
        devnull.close()
    print_table(report(results, options))
    cores, end_load, took = os.cpu_count(), os.getloadavg()[0], time.perf_counter() - started
    notes = (
        (
            f"Heartbeats: {results.registered:,} agents in turn, each body with load, version "
            f"and (one agent in {BUSY_SHARE}) the task it runs, so every such heartbeat reads "
            "that task from the store to decide whether the agent must stop it."
        ),
        (
            f"Server: the daemon's app on waitress, {results.threads} threads, loopback, logging "
            "at info into /dev/null. Heartbeats are soft state: no durable write per heartbeat."
        ),
        (
            f"Client: one forked process, http.client, {options.connections} keep-alive "
            "connections with a thread each. Capacity: back to back. Open loop: each connection "
            "sends on a fixed schedule whatever the answers' speed; latency is from send to "
            f"answer. Client and server share this machine's {cores} cores (load average "
            f"{load:.2f} at start, {end_load:.2f} at the end; other work moves these numbers)."
        ),
        f"The run took {took:.1f} s, registration included.",
    )
    print_notes(notes)


if __name__ == "__main__":
    main()
