"""Benchmark of the Forgejo webhook receiver on loopback: throughput and latency against targets.

Run by hand: ``python bench/webhook.py`` (``--quick`` for a few requests; the smoke test runs
that). Serves, one after the other on the same production server (``webhook.server.HttpServer``,
waitress), the daemon's own app (``webhook.daemon.http_app``: size check, HMAC-SHA256 of the body,
parse, map to a key, enqueue on a real ``WorkQueue``, 202) and a bare Bottle endpoint that does
nothing, and drives both with the same signed ~5 KB ``issues`` delivery over keep-alive
connections. Prints one table with each target and PASS/MISS:

* receiver p99 latency with a few connections (target: <= 5 ms);
* receiver throughput beside the bare endpoint's (target: >= 0.7x);
* receiver p99 with 64 concurrent connections (reported only).

The load comes from a separate process (``http.client``, one thread per connection), forked
before any server starts, so client and server do not share an interpreter lock — but they do
share the machine's cores, and the numbers include the client's own cost. Every request is
bounded; the default run takes well under a minute.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bottle  # type: ignore[import-untyped]  # bottle ships no type information
import httpx

# Importing the harness takes bench/ off sys.path, where this file's name would shadow the
# `webhook` package it measures: it comes before the project's imports (see bench/harness.py).
from harness import (
    ConnectionThreads,
    LoadClient,
    Row,
    percentile_ms,
    print_notes,
    print_table,
    verdict,
)
from pydantic import SecretStr

from controllers.setup import WEBHOOK_EVENTS
from reconciler.engine.logs import configure_logging
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.sandbox import ForgejoSandbox
from reconciler.sandbox.hooks import marshal
from reconciler.settings import ForgejoSettings, Settings, StoreSettings, WebhookSettings
from reconciler.store import Store
from webhook.daemon import build, http_app
from webhook.receiver import WEBHOOK_PATH
from webhook.server import HttpServer

SECRET = "webhook-bench-secret"
# A real delivery recorded from Gitea/Forgejo: the suite's copy, else the shared one; without
# either the in-memory Forgejo renders the delivery.
_RECORDING = "forgejo/examples/webhook-issues-opened.json"
RECORDED = (
    Path(__file__).resolve().parents[1] / "tests/data" / _RECORDING,
    Path(__file__).resolve().parents[2] / "shared" / _RECORDING,
)
DELIVERY_ID = "7d4c9a4e-2f43-4d0b-9a51-3c1e0b8f6a20"

CONNECTIONS = 4
REQUESTS = 10_000  # per server, over all connections and rounds
ROUNDS = 4
WIDE_CONNECTIONS = 64
WIDE_REQUESTS = 3_200
# Seconds for all measured runs together, shared out evenly: on a slow or busy machine a run
# stops early (and the table says so) rather than the bench running past a minute.
BUDGET = 45.0
QUICK = {"requests": 40, "rounds": 1, "connections": 2, "wide_requests": 128}

P99_TARGET_MS = 5.0
THROUGHPUT_TARGET = 0.7

# A fleet issue as people write them: what the payload's issue carries besides the recording.
TASK_TITLE = "Make the retry policy configurable per repository"
TASK_BODY = """## Goal
Let each watched repository override the retry policy (attempts, backoff, cap).

## Constraints
- No change for configurations without the new keys.

## Validation
- `python -m pytest tests/test_settings.py -q` passes, with cases for the override.
"""
TASK_LABELS = (
    ("fleet/task", "1d76db", False),
    ("agent/developer", "5319e7", False),
    ("needs/code:python", "0e8a16", False),
    ("priority/medium", "fbca04", True),
)


# --- the delivery -----------------------------------------------------------------------


def recorded_payload(path: Path) -> bytes:
    """The recorded ``issues``/``opened`` payload, its issue made a fleet task, as Forgejo marshals it."""
    payload = json.loads(path.read_text())
    issue = payload["issue"]
    base = issue["url"].rsplit("/issues/", 1)[0]
    issue.update(
        title=TASK_TITLE,
        body=TASK_BODY,
        labels=[
            {
                "id": n + 1,
                "name": name,
                "exclusive": exclusive,
                "is_archived": False,
                "color": color,
                "description": "",
                "url": f"{base}/labels/{n + 1}",
            }
            for n, (name, color, exclusive) in enumerate(TASK_LABELS)
        ],
    )
    return marshal(payload)


def sandbox_payload() -> bytes:
    """The same delivery rendered by the in-memory Forgejo, for a clone without ../shared."""
    repo = "fleet-admin/widgets"
    forge = ForgejoSandbox()
    forge.create_repo(repo)
    forge.stop()  # a stopped sandbox holds its deliveries instead of sending them
    for name, color, exclusive in TASK_LABELS:
        forge.create_label(repo, name, color=color, exclusive=exclusive)
    with ForgejoGateway(
        "http://forgejo.invalid:3000",
        forge.admin_token,
        transport=httpx.WSGITransport(app=forge.app),
    ) as gateway:
        gateway.ensure_webhook(
            repo, url="http://fleet.invalid/webhooks/forgejo", secret=SECRET, events=WEBHOOK_EVENTS
        )
    forge.create_issue(
        repo, TASK_TITLE, body=TASK_BODY, labels=[name for name, _, _ in TASK_LABELS]
    )
    (delivery,) = [d for d in forge.pending_webhooks() if d.event_type == "issues"]
    return delivery.payload


def forgejo_headers(body: bytes) -> dict[str, str]:
    """The headers Forgejo sends with an ``issues`` delivery (services/webhook/shared)."""
    signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    sha1 = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    headers = {"Content-Type": "application/json", "User-Agent": "Go-http-client/1.1"}
    for prefix in ("X-Forgejo", "X-Gitea", "X-Gogs"):
        headers[f"{prefix}-Delivery"] = DELIVERY_ID
        headers[f"{prefix}-Event"] = "issues"
        headers[f"{prefix}-Event-Type"] = "issues"
    headers.update(
        {
            "X-Forgejo-Signature": signature,
            "X-Gitea-Signature": signature,
            "X-Gogs-Signature": signature,
            "X-Hub-Signature": f"sha1={sha1}",
            "X-Hub-Signature-256": f"sha256={signature}",
            "X-GitHub-Delivery": DELIVERY_ID,
            "X-GitHub-Event": "issues",
            "X-GitHub-Event-Type": "issues",
        }
    )
    return headers


# --- the load generator (runs in the forked client process) -----------------------------


@dataclass(frozen=True)
class Job:
    """One measured run: ``requests`` spread over ``connections`` keep-alive connections."""

    port: int
    body: bytes
    headers: tuple[tuple[str, str], ...]
    connections: int
    requests: int
    warmup: int
    time_limit: float
    host: str = "127.0.0.1"


@dataclass
class Run:
    """What one run measured: a latency per request (seconds), answers and wall time.

    ``sent`` counts warm-up requests too; ``server_cpu`` is the CPU time the serving process
    spent during the whole run, set by the parent.
    """

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    capped: bool = False
    sent: int = 0
    server_cpu: float = 0.0


def drive(job: Job) -> Run:
    """Send the job's requests; each connection warms up, then all start together."""
    together = ConnectionThreads(job.connections)
    shares = [
        job.requests // job.connections + (1 if n < job.requests % job.connections else 0)
        for n in range(job.connections)
    ]
    per_connection: list[list[float]] = [[] for _ in range(job.connections)]
    ends = [0.0] * job.connections
    run = Run()
    lock = threading.Lock()
    headers = dict(job.headers)

    def send(conn: http.client.HTTPConnection) -> int:
        conn.request("POST", WEBHOOK_PATH, body=job.body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status

    def connection(n: int) -> None:
        conn = http.client.HTTPConnection(job.host, job.port, timeout=30)
        try:
            try:
                for _ in range(job.warmup):
                    send(conn)
            finally:
                together.ready()  # a failed warm-up still releases the others
            started = time.perf_counter()
            samples = per_connection[n]
            answers: dict[int, int] = {}
            for _ in range(shares[n]):
                before = time.perf_counter()
                status = send(conn)
                after = time.perf_counter()
                samples.append(after - before)
                answers[status] = answers.get(status, 0) + 1
                if after - started > job.time_limit:
                    with lock:
                        run.capped = True
                    break
            ends[n] = time.perf_counter()
            with lock:
                for status, count in answers.items():
                    run.statuses[status] = run.statuses.get(status, 0) + count
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError) as exc:
            with lock:
                run.errors.append(f"connection {n}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    started = together.run(connection, timeout=job.time_limit + 30)
    run.elapsed = max(ends) - started if any(ends) else time.perf_counter() - started
    run.latencies = [s for samples in per_connection for s in samples]
    run.sent = len(run.latencies) + job.warmup * job.connections
    return run


# --- the servers --------------------------------------------------------------------------


def bare_app() -> Any:
    """A Bottle app whose webhook route does nothing but answer 202."""
    app = bottle.Bottle()

    @app.post(WEBHOOK_PATH)  # type: ignore[untyped-decorator]
    def nothing() -> bottle.HTTPResponse:
        return bottle.HTTPResponse(status=202)

    return app


def same_answer_app() -> Any:
    """A Bottle app that reads and parses the body and answers like the receiver (202).

    It separates the framework's and server's share of the receiver's cost (a body to read,
    an answer to send) from the receiver's own checks (signature, mapping, queue, log).
    """
    app = bottle.Bottle()

    @app.post(WEBHOOK_PATH)  # type: ignore[untyped-decorator]
    def parse_and_answer() -> bottle.HTTPResponse:
        environ = bottle.request.environ
        json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        return bottle.HTTPResponse(status=202)

    return app


@contextmanager
def served(app: Any, *, threads: int) -> Iterator[HttpServer]:
    server = HttpServer(app, host="127.0.0.1", port=0, threads=threads)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- measuring and reporting --------------------------------------------------------------


@dataclass
class Measured:
    """Runs of one server and load, pooled: all latencies, all requests over all wall time."""

    runs: list[Run] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(r.latencies) for r in self.runs)

    @property
    def throughput(self) -> float:
        elapsed = sum(r.elapsed for r in self.runs)
        return self.count / elapsed if elapsed > 0 else 0.0

    def percentile_ms(self, q: int) -> float:
        return percentile_ms((s for r in self.runs for s in r.latencies), q)

    @property
    def cpu_per_request_us(self) -> float:
        sent = sum(r.sent for r in self.runs)
        return sum(r.server_cpu for r in self.runs) / sent * 1e6 if sent else float("nan")

    @property
    def capped(self) -> bool:
        return any(r.capped for r in self.runs)

    def check(self, name: str, *, expected: int) -> None:
        """Refuse to report a run whose answers were not all ``expected``: it measured nothing."""
        errors = [e for r in self.runs for e in r.errors]
        statuses: dict[int, int] = {}
        for r in self.runs:
            for status, n in r.statuses.items():
                statuses[status] = statuses.get(status, 0) + n
        if errors or set(statuses) - {expected}:
            raise SystemExit(f"{name}: unexpected answers {statuses} or errors {errors[:3]}")


@dataclass(frozen=True)
class Options:
    connections: int
    requests: int
    rounds: int
    wide_connections: int
    wide_requests: int
    time_limit: float


def receiver_settings(root: Path) -> Settings:
    return Settings(
        forgejo=ForgejoSettings(
            url="http://forgejo.invalid:3000",
            token=SecretStr("never-used: the receiver makes no Forgejo call"),
            repos=("example/example",),
            bot_login="fleet-bot",
        ),
        webhook=WebhookSettings(secret=SecretStr(SECRET)),
        store=StoreSettings(path=root / "state"),
    )


@dataclass
class Results:
    bare: Measured = field(default_factory=Measured)
    same_answer: Measured = field(default_factory=Measured)
    receiver: Measured = field(default_factory=Measured)
    wide: Measured = field(default_factory=Measured)
    queued: int = 0
    threads: int = 0


def measure(client: LoadClient[Job, Run], options: Options, *, body: bytes, root: Path) -> Results:
    """Drive the three servers in alternating rounds, then the receiver with many connections."""
    headers = tuple(forgejo_headers(body).items())
    settings = receiver_settings(root)
    threads = settings.webhook.threads
    per_round = max(options.requests // options.rounds, options.connections)
    warmup = min(20, max(1, per_round // options.connections // 10))
    results = Results(threads=threads)

    def load(port: int, *, connections: int, requests: int, warm: int) -> Run:
        """One run against the server on ``port``, with the server's CPU time meanwhile."""
        run, cpu = client.run(
            Job(
                port=port,
                body=body,
                headers=headers,
                connections=connections,
                requests=requests,
                warmup=warm,
                time_limit=options.time_limit,
            ),
            timeout=options.time_limit + 40,
        )
        run.server_cpu = cpu
        return run

    with Store.open(root / "state") as store:
        # The daemon's assembly; its loop is never started, so nothing drains the queue, and
        # the queue's deduplication keeps it at one key however many deliveries arrive.
        assembly = build(settings, store=store)
        try:
            receiver = http_app(assembly, readiness=dict)
            servers = (
                (bare_app(), results.bare),
                (same_answer_app(), results.same_answer),
                (receiver, results.receiver),
            )
            # Rounds alternate the servers so a burst of other work on the machine does not
            # land on one of them only.
            for _ in range(options.rounds):
                for app, measured in servers:
                    with served(app, threads=threads) as server:
                        measured.runs.append(
                            load(
                                server.port,
                                connections=options.connections,
                                requests=per_round,
                                warm=warmup,
                            )
                        )
            with served(receiver, threads=threads) as server:
                results.wide.runs.append(
                    load(
                        server.port,
                        connections=options.wide_connections,
                        requests=options.wide_requests,
                        warm=2,
                    )
                )
            results.queued = assembly.queue.depth()
        finally:
            assembly.gateway.close()
    results.bare.check("bare endpoint", expected=202)
    results.same_answer.check("same-answer endpoint", expected=202)
    results.receiver.check("receiver", expected=202)
    results.wide.check("receiver, many connections", expected=202)
    return results


def report(results: Results, options: Options) -> list[Row]:
    bare, same, receiver, wide = (
        results.bare,
        results.same_answer,
        results.receiver,
        results.wide,
    )
    c = options.connections
    ratio = receiver.throughput / bare.throughput if bare.throughput else 0.0
    same_ratio = receiver.throughput / same.throughput if same.throughput else 0.0
    p99 = receiver.percentile_ms(99)
    rows = [
        (f"bare endpoint, {c} conns: throughput", f"{bare.throughput:,.0f} req/s", "baseline", ""),
        (
            f"bare endpoint, {c} conns: p50 / p99",
            f"{bare.percentile_ms(50):.2f} / {bare.percentile_ms(99):.2f} ms",
            "baseline",
            "",
        ),
        (
            f"receiver, {c} conns: throughput",
            f"{receiver.throughput:,.0f} req/s ({ratio:.2f}x bare)",
            f">= {THROUGHPUT_TARGET:g}x bare",
            verdict(ratio >= THROUGHPUT_TARGET),
        ),
        (f"receiver, {c} conns: p50", f"{receiver.percentile_ms(50):.2f} ms", "(reported)", ""),
        (
            f"receiver, {c} conns: p99",
            f"{p99:.2f} ms",
            f"<= {P99_TARGET_MS:g} ms",
            verdict(p99 <= P99_TARGET_MS),
        ),
        (
            f"receiver, {options.wide_connections} conns: throughput",
            f"{wide.throughput:,.0f} req/s",
            "(info)",
            "",
        ),
        (
            f"receiver, {options.wide_connections} conns: p50 / p99",
            f"{wide.percentile_ms(50):.2f} / {wide.percentile_ms(99):.2f} ms",
            "(info)",
            "",
        ),
        (
            f"same-answer endpoint, {c} conns: throughput",
            f"{same.throughput:,.0f} req/s (receiver {same_ratio:.2f}x)",
            "(info)",
            "",
        ),
        (
            "server CPU/request: bare, same-answer, receiver",
            ", ".join(f"{m.cpu_per_request_us:.0f}" for m in (bare, same, receiver)) + " us",
            "(info)",
            "",
        ),
        (
            f"work queue after {receiver.count + wide.count:,} deliveries",
            f"{results.queued} key(s) waiting",
            "(info: deduplicated)",
            "",
        ),
    ]
    if any(m.capped for m in (bare, same, receiver, wide)):
        rows.append(
            (
                "a run hit its share of the time budget",
                f"{options.time_limit:.1f} s",
                "(fewer requests measured)",
                "",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--connections", type=int, default=CONNECTIONS, help="keep-alive connections"
    )
    parser.add_argument("--requests", type=int, default=REQUESTS, help="requests per server")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds")
    parser.add_argument(
        "--wide-requests",
        type=int,
        default=WIDE_REQUESTS,
        help=f"requests over {WIDE_CONNECTIONS} conns",
    )
    parser.add_argument(
        "--budget", type=float, default=BUDGET, help="seconds at most for all runs together"
    )
    parser.add_argument(
        "--payload", type=Path, default=None, help="a recorded issues payload (JSON file)"
    )
    parser.add_argument(
        "--rendered",
        action="store_true",
        help="send the delivery the in-memory Forgejo renders instead of a recorded one",
    )
    parser.add_argument("--quick", action="store_true", help="a few requests: check the bench runs")
    args = parser.parse_args()
    options = Options(
        connections=QUICK["connections"] if args.quick else args.connections,
        requests=QUICK["requests"] if args.quick else args.requests,
        rounds=QUICK["rounds"] if args.quick else args.rounds,
        wide_connections=WIDE_CONNECTIONS,
        wide_requests=QUICK["wide_requests"] if args.quick else args.wide_requests,
        # Each round runs three servers; the many-connections run comes last.
        time_limit=args.budget / (3 * (QUICK["rounds"] if args.quick else args.rounds) + 1),
    )
    if min(options.connections, options.requests, options.rounds, options.wide_requests) < 1:
        parser.error("--connections, --requests, --rounds and --wide-requests must be >= 1")
    if args.budget <= 0:
        parser.error("--budget must be > 0")
    if args.payload is not None and not args.payload.is_file():
        parser.error(f"--payload {args.payload}: no such file")

    # The receiver logs one line per delivery, as in production: rendered, then discarded.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    configure_logging(level="info", json=True, stream=devnull)
    load = os.getloadavg()[0]
    client = LoadClient(drive, name="webhook-bench-client")  # before any server thread starts
    root = Path(tempfile.mkdtemp(prefix="agent-fleet-webhook-bench-"))
    started = time.perf_counter()
    try:
        recording = args.payload or next((p for p in RECORDED if p.is_file()), None)
        if recording is not None and not args.rendered:
            body, source = recorded_payload(recording), f"recorded {recording.name}"
        else:
            body, source = sandbox_payload(), "rendered by the in-memory Forgejo"
        results = measure(client, options, body=body, root=root)
    finally:
        client.close()
        shutil.rmtree(root, ignore_errors=True)
        devnull.close()
    print_table(report(results, options))
    cores, end_load, took = os.cpu_count(), os.getloadavg()[0], time.perf_counter() - started
    notes = (
        f"Payload: {len(body):,} bytes ({source}, a fleet issue), HMAC-SHA256 signed.",
        (
            f"Servers: waitress, {results.threads} threads, loopback. The receiver is the daemon's "
            "app with logging at info level into /dev/null (accepted deliveries log at debug; the "
            "metrics count them). The "
            "bare endpoint answers 202 and nothing else; the same-answer one reads and parses the "
            "body and answers 202 as the receiver does."
        ),
        (
            "Client: one forked process, http.client, one thread per keep-alive connection, each "
            "request sent when the previous answer arrived. Client and server share this "
            f"machine's {cores} cores (load average {load:.2f} at start, {end_load:.2f} at the "
            "end; other work on the machine moves these numbers)."
        ),
        f"{options.rounds} alternating round(s); the run took {took:.1f} s.",
    )
    print_notes(notes)


if __name__ == "__main__":
    main()
