"""Benchmark of the whole flow: N labelled issues through M pull agents to done, against targets.

Run by hand: ``python bench/flow.py`` (200 issues, 20 agents; ``--quick`` for 6 issues and 3
agents, which the smoke test runs). The pieces:

* the in-memory Forgejo served on loopback in this process, with a counter in front of its
  WSGI app (every HTTP request by method and by who sent it: the daemon's token or anyone else);
* the daemon as its own process (``python bench/flow.py daemon …``), webhooks on, pull agents
  only (no host of its own), so its CPU time is the process's own (``/proc/<pid>/stat``);
* the M pull agents in one more process (``python bench/flow.py agents …``), each a
  :class:`~reconciler.agent.worker.Worker` with one slot running the scripted demo agent CLI
  (``reconciler.agent.demo_agent``), pushing with a Forgejo token of their own;
* a person (this process, through the sandbox's helpers, not over HTTP) who approves and merges
  every task pull request as it appears.

Once the label vocabulary exists and the agents are registered, the N issues are filed with
``fleet/task`` at once (a burst). Printed, each beside its target:

* tasks/min — N over the time from the first issue filed to the last issue's ``status/done``;
* labelled → done p50 / p99 — from an issue's creation to the first ``status/done`` label on
  its timeline (both the sandbox's clock, whole seconds as Forgejo's timestamps; target p50
  <= 10 s);
* daemon CPU per task — the daemon process's user + system time over the same window, over N
  (target <= 50 ms);
* Forgejo reads / writes per task — the daemon's requests counted at the sandbox over the
  window plus a settling time (GET = read, anything else = write; target <= 10 reads,
  <= 5 writes); the agents' own requests (git, their API calls) are printed for information;
* ``status/`` label writes after done — additions of a ``status/`` label on an issue's timeline
  after its first ``status/done`` (target 0).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

# Importing the harness takes bench/ off sys.path, where bench/webhook.py would shadow the
# `webhook` package: it comes before the project's imports (see bench/harness.py).
from harness import (
    Row,
    machine_speed_ms,
    percentile_ms,
    print_notes,
    print_table,
    speed_note,
    verdict,
)
from pydantic import SecretStr

from reconciler.sandbox import ForgejoSandbox

ROOT = Path(__file__).resolve().parent.parent
OWNER = "fleet-admin"
REPO = f"{OWNER}/flow"
REVIEWER = "alice"
AGENT_USER = "agent-bot"
SECRET = "flow-bench-secret"
ENROLMENT = "flow-bench-enrolment"
OPERATOR = "flow-bench-operator"
GIT_IDENTITY = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Flow Bench",
    "GIT_AUTHOR_EMAIL": "flow-bench@example.invalid",
    "GIT_COMMITTER_NAME": "Flow Bench",
    "GIT_COMMITTER_EMAIL": "flow-bench@example.invalid",
}


_NUMBERS = re.compile(r"/\d+(?=/|$)|(?<=/branches/).*")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the counted forge ---------------------------------------------------------------------


class CountedSandbox(ForgejoSandbox):
    """The in-memory Forgejo with every served HTTP request counted by sender and method."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.endpoints: Counter[tuple[str, str, str]] = Counter()
        """(sender, method, path with numbers as {n}) → requests."""
        self.answer_times: list[tuple[str, float]] = []
        """("METHOD path", seconds inside this WSGI app) of each daemon request, in order."""
        self._counting = threading.Lock()
        self.daemon_token = self.admin_token

    def _sender(self, environ: dict[str, Any]) -> str:
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        if header.lower().startswith("basic "):
            try:
                header = base64.b64decode(header[6:]).decode(errors="replace")
            except ValueError:
                pass
        return "daemon" if self.daemon_token in header else "agents"

    def _serve(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        key = (self._sender(environ), str(environ.get("REQUEST_METHOD", "GET")))
        path = _NUMBERS.sub("/{n}", str(environ.get("PATH_INFO", "")))
        with self._counting:
            self.counts[key] += 1
            self.endpoints[(*key, path)] += 1
        started = time.perf_counter()
        answer = super()._serve(environ, start_response)
        if key[0] == "daemon":
            took = time.perf_counter() - started
            with self._counting:
                self.answer_times.append((f"{key[1]} {path}", took))
        return answer

    def snapshot(self) -> Counter[tuple[str, str]]:
        with self._counting:
            return Counter(self.counts)

    def endpoint_snapshot(self) -> Counter[tuple[str, str, str]]:
        with self._counting:
            return Counter(self.endpoints)


def reads_writes(counts: Counter[tuple[str, str]], sender: str) -> tuple[int, int]:
    reads = sum(n for (who, method), n in counts.items() if who == sender and method == "GET")
    writes = sum(n for (who, method), n in counts.items() if who == sender and method != "GET")
    return reads, writes


# --- the processes -------------------------------------------------------------------------


def count_calls_by_caller(path: str) -> None:
    """Count the daemon's Forgejo calls by (who, operation) and write them to ``path`` on exit.

    Who: the thread's role (``reconcile-assignment``, ``resync``, ``http`` for the agent API
    and the webhook receiver, …). Installed in the daemon process for ``--calls`` only: it
    wraps the gateway's counting method, so the product's own path is unchanged otherwise.
    """
    import atexit
    import re

    from reconciler.forgejo.http import ForgejoHttp

    counts: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    original = ForgejoHttp._count

    def counted(self: ForgejoHttp, operation: str, status: int) -> None:
        name = threading.current_thread().name
        who = re.sub(r"-\d+$", "", name)
        who = "http" if who.startswith(("waitress", "Thread")) else who
        with lock:
            counts[(who, operation)] += 1
        original(self, operation, status)

    def dump() -> None:
        with lock:
            rows = [[who, op, n] for (who, op), n in counts.items()]
        Path(path).write_text(json.dumps(rows))

    ForgejoHttp._count = counted  # type: ignore[method-assign]
    atexit.register(dump)


def sample_queue(daemon: Any, out: Path, stop: threading.Event) -> None:
    """Every half second, the keys each controller has ready and in work (``--breakdown``)."""
    queue = daemon.assembly.queue
    with out.open("w") as file:
        while not stop.wait(0.5):
            with queue._lock:
                ready = dict(Counter(key.controller for key in queue._live))
                busy = Counter(key.controller for key in queue._processing)
            file.write(json.dumps({"t": time.time(), "ready": ready, "busy": busy}) + "\n")
            file.flush()


def sample_webhooks(
    forge: ForgejoSandbox, out: list[tuple[float, int]], stop: threading.Event
) -> None:
    """Every half second, how many webhook deliveries wait at the forge (``--breakdown``)."""
    while not stop.wait(0.5):
        out.append((time.time(), len(forge.pending_webhooks())))


def count_enqueues(out: Path) -> None:
    """Count every ``queue.add`` by controller and by what asked (``--breakdown``), and how
    many found the key already waiting; written to ``out`` at exit."""
    import atexit

    from reconciler.engine.workqueue import WorkQueue

    original = WorkQueue.add
    counts: Counter[tuple[str, str, bool]] = Counter()

    def source() -> str:
        frame = sys._getframe(2)
        while frame is not None:
            code = frame.f_code
            if code.co_name == "receive" and code.co_filename.endswith("receiver.py"):
                payload = frame.f_locals.get("payload") or {}
                sender = (payload.get("sender") or {}).get("login", "")
                who = "bot" if sender == OWNER else "person"
                return f"webhook {frame.f_locals.get('event')}/{payload.get('action')} by {who}"
            if code.co_filename.endswith("engine/reconcile.py"):
                return f"{threading.current_thread().name.rsplit('-', 1)[0]} Enqueue"
            if not code.co_filename.endswith(("workqueue.py", "flow.py")):
                return f"{Path(code.co_filename).stem}.{code.co_name}"
            frame = frame.f_back  # type: ignore[assignment]
        return "?"

    def add(queue: WorkQueue, key: Any, *, urgent: bool = False) -> None:
        waiting = key in queue._dirty
        counts[(key.controller, source() + (" (urgent)" if urgent else ""), waiting)] += 1
        original(queue, key, urgent=urgent)

    def dump() -> None:
        rows = [[c, s, w, n] for (c, s, w), n in counts.items()]
        out.write_text(json.dumps(rows))

    WorkQueue.add = add  # type: ignore[method-assign]
    atexit.register(dump)


def run_daemon(forge_url: str, token: str, state: str, port: str) -> None:
    """The daemon process: pull agents only, webhooks from the sandbox, defaults elsewhere."""
    from reconciler.engine.logs import configure_logging

    if os.environ.get("FLOW_BENCH_CALLS"):
        count_calls_by_caller(os.environ["FLOW_BENCH_CALLS"])
    from reconciler.settings import (
        ApiSettings,
        ForgejoSettings,
        LoopSettings,
        Settings,
        StoreSettings,
        WebhookSettings,
    )
    from webhook.daemon import Daemon

    configure_logging(level="warning", json=False)
    settings = Settings(
        forgejo=ForgejoSettings(
            url=forge_url,
            token=SecretStr(token),
            repos=(REPO,),
            bot_login=OWNER,
            webhook_url=f"http://127.0.0.1:{port}/webhooks/forgejo",
            manage_webhooks=True,
        ),
        webhook=WebhookSettings(bind="127.0.0.1", port=int(port), secret=SecretStr(SECRET)),
        loop=LoopSettings(
            shutdown_grace=5,
            **json.loads(os.environ.get("FLOW_BENCH_LOOP", "{}")),  # experiments only
        ),
        api=ApiSettings(operator_token=SecretStr(OPERATOR), enrolment_secret=SecretStr(ENROLMENT)),
        store=StoreSettings(path=Path(state)),
    )
    if os.environ.get("FLOW_BENCH_QUEUE"):
        count_enqueues(Path(os.environ["FLOW_BENCH_QUEUE"] + ".adds"))
    daemon = Daemon(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    daemon.start()
    if os.environ.get("FLOW_BENCH_QUEUE"):
        threading.Thread(
            target=sample_queue,
            args=(daemon, Path(os.environ["FLOW_BENCH_QUEUE"]), stop),
            daemon=True,
        ).start()
    try:
        daemon.wait(stop)
    finally:
        daemon.stop()


def run_agents(
    server: str, forge_token: str, root: str, count: str, kind: str, forge_url: str
) -> None:
    """The agents process: ``count`` agents with one slot each, until SIGTERM."""
    if kind == "instant":
        run_instant_agents(server, forge_token, int(count), forge_url)
        return
    from reconciler.agent.config import WorkerConfig
    from reconciler.agent.worker import Worker
    from reconciler.engine.logs import configure_logging

    configure_logging(level="warning", json=False)
    workers = []
    for n in range(int(count)):
        name = f"flow-agent-{n}"
        config = WorkerConfig.model_validate(
            {
                "server": server,
                "token": ENROLMENT,
                "agent_id": name,
                "agent_type": "demo-agent",
                "adapter": {
                    "command": [sys.executable, "-m", "reconciler.agent.demo_agent", "{prompt}"],
                    "parser": "claude-json",
                },
                "roles": ["developer"],
                "capabilities": ["code:python"],
                "max_concurrency": 1,
                "hostname": f"{name}-box",
                "workdir": str(Path(root) / name / "work"),
                "state_dir": str(Path(root) / name / "state"),
                "forgejo_token": forge_token,
                "poll_interval": 1.0,
            }
        )
        workers.append(Worker(config))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for worker in workers:
        worker.open()
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    stop.wait()
    for worker in workers:
        worker.stop()
    for thread in threads:
        thread.join(timeout=20)
    for worker in workers:
        worker.close()


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("AGENT_FLEET_")},
                **GIT_IDENTITY,
                "PYTHONPATH": str(ROOT),
                **(env or {}),
            },
            start_new_session=True,
        )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class InstantAgent:
    """A pull agent whose work takes no time: it speaks the agent API as the worker does
    (register, heartbeat, dequeue, report running, hand in a receipt) and does its Forgejo part
    over Forgejo's API — one commit made with the contents API on the task's branch, the pull
    request opened — with no agent CLI and no git process. What is left to measure is what
    the fleet costs per task: the daemon, and the forge answering everyone."""

    def __init__(self, name: str, *, server: str, forge_url: str, forge_token: str) -> None:
        from reconciler.agent.client import AgentApi
        from reconciler.forgejo.gateway import ForgejoGateway

        self.name = name
        self.api = AgentApi(server)
        self.forge = ForgejoGateway(forge_url, forge_token)
        self.held: tuple[str, int] | None = None

    def register(self) -> None:
        from reconciler.fleet.api import RegisterRequest

        profile = RegisterRequest(
            agent_id=self.name,
            type="instant",
            hostname=f"{self.name}-box",
            roles=("developer",),
            capabilities=("code:python",),
            max_concurrency=1,
        )
        from reconciler.errors import TransientError

        deadline = time.monotonic() + 120
        while True:  # the daemon starts alongside: ask until it answers
            try:
                self.api.register(profile, credential=ENROLMENT)
                return
            except TransientError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def beat(self, stop: threading.Event) -> None:
        from reconciler.fleet.api import HeldTaskItem

        interval = 10.0
        while not stop.is_set():
            held = self.held
            tasks = [HeldTaskItem(task_id=held[0], lease_generation=held[1])] if held else []
            try:
                interval = self.api.heartbeat(tasks, load=float(bool(held))).heartbeat_interval_s
            except Exception:  # noqa: BLE001 - the next beat tries again
                interval = 1.0
            stop.wait(min(interval / 2, 10.0))

    def work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                handout = self.api.dequeue()
            except Exception:  # noqa: BLE001 - the daemon is busy: ask again
                stop.wait(0.5)
                continue
            if handout is None:
                stop.wait(1.0)  # the worker's poll interval
                continue
            self.held = (handout.task.id, handout.lease_generation)
            try:
                self.take(handout)
            except Exception as exc:  # noqa: BLE001 - said in the log and to the daemon
                print(f"{self.name}: {handout.task.id}: {exc!r}", file=sys.stderr, flush=True)
                with contextlib.suppress(Exception):
                    self.api.report(
                        handout.task.id,
                        lease_generation=handout.lease_generation,
                        failed=True,
                        note=f"bench agent: {exc!r}"[:200],
                    )
            finally:
                self.held = None

    def take(self, handout: Any) -> None:
        from reconciler.fleet.api import ReceiptRequest

        task, lease = handout.task, handout.lease_generation
        started = time.monotonic()
        _again(lambda: self.api.report(task.id, lease_generation=lease, running=True))
        base = handout.base_branch or "main"
        sha = self.forge.create_file(
            handout.repo,
            f"fleet-notes/{task.id}.md",
            content=f"# {task.title}\n".encode(),
            message=f"{task.title}\n\nTask {task.id}, attempt {handout.attempt}.",
            branch=base,
            new_branch=handout.branch,
        )
        pull = self.forge.create_pull(
            handout.repo,
            head=handout.branch,
            base=base,
            title=task.title,
            body=f"Closes #{handout.issue_number}",
        )
        receipt = ReceiptRequest(
            receipt_id=f"{task.id}-l{lease}",
            task_id=task.id,
            lease_generation=lease,
            pr_number=pull.number,
            branch=handout.branch,
            commits=(sha,),
            summary=f"Wrote fleet-notes/{task.id}.md",
            duration_s=round(time.monotonic() - started, 3),
        )
        _again(lambda: self.api.submit_receipt(receipt))


def _again(call: Callable[[], object], attempts: int = 5) -> None:
    """``call``, tried again as the worker does when the daemon says to send it again (the
    task changed meanwhile) or cannot be reached."""
    from reconciler.errors import ConflictError, TransientError

    for attempt in range(attempts):
        try:
            call()
            return
        except (ConflictError, TransientError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def run_instant_agents(server: str, forge_token: str, count: int, forge_url: str) -> None:
    """``count`` :class:`InstantAgent` threads (and their heartbeats), until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agents = [
        InstantAgent(f"flow-agent-{n}", server=server, forge_url=forge_url, forge_token=forge_token)
        for n in range(count)
    ]
    for agent in agents:
        agent.register()
    threads = [
        threading.Thread(target=target, args=(stop,), daemon=True)
        for agent in agents
        for target in (agent.beat, agent.work)
    ]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(timeout=20)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def other_cpu(agents: int) -> tuple[float, float, float]:
    """CPU seconds of this process, of the agents process, and of the agents' finished
    children (their CLIs and git)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    fields = Path(f"/proc/{agents}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (
        usage.ru_utime + usage.ru_stime,
        (int(fields[11]) + int(fields[12])) / ticks,
        (int(fields[13]) + int(fields[14])) / ticks,
    )


def get_json(url: str, token: str) -> Any:
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


# --- the run -------------------------------------------------------------------------------


class Flow:
    """One run: the forge, the two processes, the person, and what they saw."""

    def __init__(
        self,
        forge: CountedSandbox,
        root: Path,
        *,
        issues: int,
        agents: int,
        kind: str = "instant",
        daemon_env: dict[str, str] | None = None,
    ) -> None:
        self.forge = forge
        self.root = root
        self.issues = issues
        self.agents = agents
        self.port = free_port()
        self.numbers: list[int] = []
        self.filed: dict[int, datetime] = {}
        self.merge_failures = 0
        forge.create_repo(REPO)
        forge.create_user(REVIEWER)
        agent_token = forge.create_user(AGENT_USER)
        with forge.state.lock:
            repo = forge.state.repos[REPO]
        self._repo = repo
        with forge.state.lock:
            admin = forge.state.user_named(OWNER)
            for login in (REVIEWER, AGENT_USER):
                forge.state.add_collaborator(repo, admin, login, permission="write")
        self.daemon = spawn(
            ["daemon", forge.url, forge.admin_token, str(root / "state"), str(self.port)],
            root / "daemon.log",
            daemon_env,
        )
        self.agent_procs = spawn(
            [
                "agents",
                f"http://127.0.0.1:{self.port}",
                agent_token,
                str(root),
                str(agents),
                kind,
                forge.url,
            ],
            root / "agents.log",
        )

    def wait_ready(self, timeout: float) -> None:
        """Until the daemon made the label vocabulary and every agent registered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process, name in ((self.daemon, "daemon"), (self.agent_procs, "agents")):
                if process.poll() is not None:
                    raise SystemExit(f"the {name} process exited:\n{self.log_tail(name)}")
            with self.forge.state.lock:
                labels = {label.name for label in self._repo.labels.values()}
            if "fleet/task" in labels and self.registered() >= self.agents:
                return
            time.sleep(0.2)
        raise SystemExit(f"not ready after {timeout:.0f}s:\n{self.log_tail('daemon')}")

    def registered(self) -> int:
        try:
            answer = get_json(f"http://127.0.0.1:{self.port}/api/v1/agents", OPERATOR)
        except OSError:
            return 0
        items = answer.get("agents", answer) if isinstance(answer, dict) else answer
        return len(items) if isinstance(items, list) else 0

    def file_issues(self) -> None:
        for n in range(self.issues):
            number = self.forge.create_issue(
                REPO,
                f"Add note {n}",
                body=f"## Goal\nWrite note {n}.",
                labels=["fleet/task"],
                author=REVIEWER,
            )
            self.numbers.append(number)
            with self.forge.state.lock:
                self.filed[number] = self._repo.issues[number].created_at

    def merge_open_pulls(self) -> None:
        """The person approves and merges every open task pull request."""
        with self.forge.state.lock:
            pulls = [
                issue.number
                for issue in self._repo.issues.values()
                if issue.pull is not None
                and issue.state == "open"
                and issue.pull.head.startswith("task/")
            ]
        for number in pulls:
            try:
                self.forge.review(REPO, number, "APPROVED", body="ok", author=REVIEWER)
                self.forge.merge(REPO, number, author=REVIEWER)
            except Exception:  # noqa: BLE001 - a race with a push: the next round merges it
                self.merge_failures += 1

    def done_at(self) -> dict[int, datetime]:
        """Each issue's first ``status/done`` on its timeline."""
        found: dict[int, datetime] = {}
        with self.forge.state.lock:
            for number in self.numbers:
                for change in self._repo.issues[number].label_changes:
                    if change.added and change.label.name == "status/done":
                        found[number] = change.created_at
                        break
        return found

    def stages(self) -> dict[str, list[float]]:
        """Seconds from each issue's creation to the first time it reached each stage."""
        found: dict[str, list[float]] = {}
        with self.forge.state.lock:
            pulls = {
                int(issue.pull.head.split("/")[1].split("-")[0]): issue
                for issue in self._repo.issues.values()
                if issue.pull is not None and issue.pull.head.startswith("task/")
            }
            for number in self.numbers:
                issue = self._repo.issues[number]
                at: dict[str, datetime] = {}
                for change in issue.label_changes:
                    if change.added and change.label.name.startswith("status/"):
                        at.setdefault(change.label.name, change.created_at)
                pull = pulls.get(number)
                if pull is not None and pull.pull is not None:
                    at["pull opened"] = pull.created_at
                    if pull.pull.merged_at is not None:
                        at["pull merged"] = pull.pull.merged_at
                for comment in issue.comments:
                    if comment.body.startswith("<!-- agent-fleet:task -->"):
                        at["status comment"] = comment.created_at
                for stage, when in at.items():
                    found.setdefault(stage, []).append((when - issue.created_at).total_seconds())
        return found

    def status_paths(self) -> Counter[str]:
        """How many issues went through each sequence of ``status/`` labels (``--breakdown``)."""
        paths: Counter[str] = Counter()
        with self.forge.state.lock:
            for number in self.numbers:
                path = [
                    change.label.name.removeprefix("status/")
                    for change in self._repo.issues[number].label_changes
                    if change.added and change.label.name.startswith("status/")
                ]
                paths[" > ".join(path)] += 1
        return paths

    def status_writes_after_done(self) -> int:
        late = 0
        with self.forge.state.lock:
            for number in self.numbers:
                seen_done = False
                for change in self._repo.issues[number].label_changes:
                    if seen_done and change.added and change.label.name.startswith("status/"):
                        late += 1
                    if change.added and change.label.name == "status/done":
                        seen_done = True
        return late

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        stop_process(self.agent_procs)
        stop_process(self.daemon)


def measure(
    issues: int,
    agents: int,
    *,
    timeout: float,
    settle: float,
    kind: str = "instant",
    breakdown: bool = False,
    profile: Path | None = None,
) -> list[Row]:
    """Run the burst; print the table's rows (and with ``breakdown``, where the calls went)."""
    with (
        tempfile.TemporaryDirectory(prefix="agent-fleet-flow-") as scratch,
        CountedSandbox() as forge,
    ):
        calls_file = Path(scratch) / "calls.json"
        queue_file = Path(scratch) / "queue.jsonl"
        env = (
            {"FLOW_BENCH_CALLS": str(calls_file), "FLOW_BENCH_QUEUE": str(queue_file)}
            if breakdown
            else None
        )
        flow = Flow(forge, Path(scratch), issues=issues, agents=agents, kind=kind, daemon_env=env)
        spy: subprocess.Popen[bytes] | None = None
        backlog: list[tuple[float, int]] = []
        sampling = threading.Event()
        try:
            flow.wait_ready(timeout=120)
            time.sleep(1.0)  # the start-up resync's reconciles finish before the count starts
            counts_before = forge.snapshot()
            answers_before = len(forge.answer_times)
            endpoints_before = forge.endpoint_snapshot()
            deliveries_before = len(forge.deliveries)
            if profile is not None:
                spy = start_profiler(flow.daemon.pid, profile)
            cpu_before = cpu_seconds(flow.daemon.pid)
            others_before = other_cpu(flow.agent_procs.pid)
            started, wall_started = time.monotonic(), time.time()
            if breakdown:
                threading.Thread(
                    target=sample_webhooks, args=(forge, backlog, sampling), daemon=True
                ).start()
            flow.file_issues()
            deadline = started + timeout
            done: dict[int, datetime] = {}
            while time.monotonic() < deadline:
                flow.merge_open_pulls()
                done = flow.done_at()
                if len(done) == issues:
                    break
                if flow.daemon.poll() is not None:
                    raise SystemExit(f"the daemon exited:\n{flow.log_tail('daemon')}")
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(flow.daemon.pid) - cpu_before
            others = [
                b - a for a, b in zip(others_before, other_cpu(flow.agent_procs.pid), strict=True)
            ]
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            time.sleep(settle)  # late writes (a flap, a trickle of resyncs) are counted too
            counts = forge.snapshot() - counts_before
            endpoints = forge.endpoint_snapshot() - endpoints_before
            answers = forge.answer_times[answers_before:]
            hooks = Counter(
                f"{d.event_type}/{_action(d.payload)}" for d in forge.deliveries[deliveries_before:]
            )
            late = flow.status_writes_after_done()
            said = flow.log_tail("agents").strip()
            if said:
                print(f"the agents said:\n{said}", file=sys.stderr)
            stages = flow.stages()
            paths = flow.status_paths()
        finally:
            sampling.set()
            if spy is not None and spy.poll() is None:
                spy.kill()
            flow.close()
        if breakdown:
            print_breakdown(endpoints, calls_file, per=max(len(done), 1))
            print_answer_times(answers)
            print("\nWebhook deliveries per task by event and action (same window):")
            for event, n in hooks.most_common():
                print(f"  {n / max(len(done), 1):7.2f}  {event}")
            print(
                f"\nCPU seconds over the window: daemon {cpu:.1f}, this process (the forge, the "
                f"person) {others[0]:.1f}, agents {others[1]:.1f}, their CLIs and git "
                f"{others[2]:.1f}; wall {elapsed:.1f} s on {os.cpu_count()} cores"
            )
            print_queue(queue_file, since=wall_started, webhooks=backlog)
            print(
                "\nSeconds from an issue's creation to each stage (first time; p50 / p90 / count):"
            )
            for stage, seconds in sorted(
                stages.items(), key=lambda item: sorted(item[1])[len(item[1]) // 2]
            ):
                p50s, p90s = percentile_ms(seconds, 50) / 1000, percentile_ms(seconds, 90) / 1000
                print(f"  {stage:16} {p50s:6.1f} {p90s:6.1f}  {len(seconds)}")
            print("\nIssues by the status/ labels they were given, in order:")
            for path, n in paths.most_common():
                print(f"  {n:5}  {path}")
    finished = len(done)
    if finished < issues:
        print(f"only {finished} of {issues} issues done within {timeout:.0f}s", file=sys.stderr)
        print(flow.log_tail("daemon"), file=sys.stderr)
    latencies = [(done[n] - flow.filed[n]).total_seconds() for n in done]
    per = max(finished, 1)
    reads, writes = reads_writes(counts, "daemon")
    agent_reads, agent_writes = reads_writes(counts, "agents")
    rate = finished / elapsed * 60
    p50 = percentile_ms(latencies, 50) / 1000
    p99 = percentile_ms(latencies, 99) / 1000
    cpu_ms = cpu / per * 1000
    answer_s = [seconds for _, seconds in answers]
    return [
        ("issues done", f"{finished} of {issues} ({agents} agents)", f"{issues}", verdict(finished == issues)),
        ("tasks/min", f"{rate:.0f}", "", ""),
        ("labelled -> done: p50", f"{p50:.1f} s", "<= 10 s", verdict(p50 <= 10)),
        ("labelled -> done: p99 (min)", f"{p99:.1f} s ({min(latencies, default=0):.1f} s)", "", ""),
        ("daemon CPU per task", f"{cpu_ms:.0f} ms", "<= 50 ms", verdict(cpu_ms <= 50)),
        ("Forgejo reads per task (daemon)", f"{reads / per:.1f}", "<= 10", verdict(reads / per <= 10)),
        ("Forgejo writes per task (daemon)", f"{writes / per:.1f}", "<= 5", verdict(writes / per <= 5)),
        ("Forgejo reads / writes per task (agents)", f"{agent_reads / per:.1f} / {agent_writes / per:.1f}", "", ""),
        ("status/ label writes after done", f"{late}", "0", verdict(late == 0)),
        ("Forgejo answer time (daemon): p50 / p90", f"{percentile_ms(answer_s, 50):.1f} / {percentile_ms(answer_s, 90):.1f} ms", "", ""),
    ]  # fmt: skip


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy (if installed) sampling the daemon until SIGINT, writing a flame graph."""
    return subprocess.Popen(
        ["py-spy", "record", "--pid", str(pid), "--output", str(out), "--rate", "200", "--gil",
         "--format", {".json": "speedscope", ".svg": "flamegraph"}.get(out.suffix, "raw")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def _action(payload: bytes) -> str:
    try:
        return str(json.loads(payload).get("action") or "-")
    except ValueError:
        return "?"


def print_breakdown(
    endpoints: Counter[tuple[str, str, str]], calls_file: Path, *, per: int
) -> None:
    """The daemon's requests per task by endpoint (the window), and by caller (its lifetime)."""
    print("\nDaemon requests per task by endpoint (counted at the sandbox, same window):")
    rows = sorted(
        ((n, method, path) for (who, method, path), n in endpoints.items() if who == "daemon"),
        reverse=True,
    )
    for n, method, path in rows:
        print(f"  {n / per:7.2f}  {method:6} {path}")
    if calls_file.exists():
        print("\nDaemon calls per task by caller and operation (its whole life, start-up too):")
        found = sorted(((n, who, op) for who, op, n in json.loads(calls_file.read_text())),
                       reverse=True)  # fmt: skip
        for n, who, op in found:
            print(f"  {n / per:7.2f}  {who:24} {op}")


def print_answer_times(answers: list[tuple[str, float]]) -> None:
    """How long the in-memory Forgejo took to answer the daemon, by endpoint (same window).

    The time inside its WSGI app, waiting for its one state lock included: a read waits
    there while git work (a merge, an agent's commit) holds it, which a real Forgejo's
    database does not make it do."""
    by_endpoint: dict[str, list[float]] = {}
    for endpoint, seconds in answers:
        by_endpoint.setdefault(endpoint, []).append(seconds)
    print(
        "\nForgejo answer time for the daemon by endpoint (ms; p50 / p90 / total s; same window):"
    )
    for endpoint, times in sorted(by_endpoint.items(), key=lambda item: -sum(item[1])):
        print(
            f"  {percentile_ms(times, 50):7.1f} {percentile_ms(times, 90):7.1f} "
            f"{sum(times):6.1f}  {endpoint}"
        )


def print_queue(
    samples: Path, *, since: float, webhooks: list[tuple[float, int]] | None = None
) -> None:
    """Each controller's ready / in-work keys and the webhook deliveries waiting at the forge,
    every 2 s from the first issue filed; and what added keys (the daemon's whole life)."""
    adds = Path(str(samples) + ".adds")
    if adds.exists():
        print("\nKeys added, by controller and source (added / already waiting):")
        table: dict[tuple[str, str], list[int]] = {}
        for controller, source, waiting, n in json.loads(adds.read_text()):
            table.setdefault((controller, source), [0, 0])[int(waiting)] += n
        for (controller, source), (fresh, waiting) in sorted(
            table.items(), key=lambda i: -sum(i[1])
        ):
            print(f"  {fresh + waiting:6d} {waiting:6d}  {controller:11} {source}")
    if not samples.exists():
        return
    print("\nKeys ready / in work per controller (s after the first issue filed):")
    last = -2.0
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        at = sample["t"] - since
        if at < 0 or at - last < 2:
            continue
        last = at
        names = sorted(set(sample["ready"]) | set(sample["busy"]))
        text = "  ".join(
            f"{n} {sample['ready'].get(n, 0)}/{sample['busy'].get(n, 0)}" for n in names
        )
        waiting = [n for t, n in webhooks or () if t <= sample["t"]]
        hooks = f"webhooks waiting {waiting[-1]:4d}  " if waiting else ""
        print(f"  {at:5.0f}  {hooks}{text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=200)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for all issues")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds counted after done")
    parser.add_argument("--quick", action="store_true", help="6 issues, 3 agents (CI)")
    parser.add_argument(
        "--agents-kind",
        choices=("instant", "worker"),
        default="instant",
        help="instant (default): agents whose work takes no time — the agent API and a commit "
        "through Forgejo's contents API, no CLI, no git; worker: the real pull worker running "
        "the demo agent CLI, with git clones and pushes, all on this machine",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also print the daemon's requests per task by endpoint and by caller",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample the daemon's Python (holding the GIL) with py-spy, if installed, into this "
        "file: a flame graph (.svg), speedscope (.json), or collapsed stacks (other names)",
    )
    parser.add_argument("mode", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        role, *rest = args.mode
        {"daemon": run_daemon, "agents": run_agents}[role](*rest)
        return
    issues, agents = (6, 3) if args.quick else (args.issues, args.agents)
    speed_before = machine_speed_ms()
    rows = measure(
        issues,
        agents,
        timeout=args.timeout,
        settle=args.settle,
        kind=args.agents_kind,
        breakdown=args.breakdown,
        profile=args.profile,
    )
    speed_after = machine_speed_ms()
    print_table(rows)
    print_notes(
        [
            (
                "Daemon CPU is its process's user + system time (/proc) from the first issue filed "
                "to the last status/done; the agents run in a process of their own. Forgejo requests "
                "are counted at the sandbox by token (the daemon's or the agents') over the same "
                "window plus the settling time; GET is a read, any other method a write."
            ),
            (
                "Daemon, agents, their demo agent CLIs and the sandbox share this machine's "
                f"{os.cpu_count()} cores: tasks/min and latencies depend on it."
            ),
            speed_note(speed_before, speed_after),
        ]
    )


if __name__ == "__main__":
    main()
