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
import json
import os
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
from harness import Row, percentile_ms, print_notes, print_table, verdict
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
        with self._counting:
            self.counts[key] += 1
        return super()._serve(environ, start_response)

    def snapshot(self) -> Counter[tuple[str, str]]:
        with self._counting:
            return Counter(self.counts)


def reads_writes(counts: Counter[tuple[str, str]], sender: str) -> tuple[int, int]:
    reads = sum(n for (who, method), n in counts.items() if who == sender and method == "GET")
    writes = sum(n for (who, method), n in counts.items() if who == sender and method != "GET")
    return reads, writes


# --- the processes -------------------------------------------------------------------------


def run_daemon(forge_url: str, token: str, state: str, port: str) -> None:
    """The daemon process: pull agents only, webhooks from the sandbox, defaults elsewhere."""
    from reconciler.engine.logs import configure_logging
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
        loop=LoopSettings(shutdown_grace=5),
        api=ApiSettings(operator_token=SecretStr(OPERATOR), enrolment_secret=SecretStr(ENROLMENT)),
        store=StoreSettings(path=Path(state)),
    )
    daemon = Daemon(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    daemon.start()
    try:
        daemon.wait(stop)
    finally:
        daemon.stop()


def run_agents(server: str, forge_token: str, root: str, count: str) -> None:
    """The agents process: ``count`` workers with one slot each, until SIGTERM."""
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


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def get_json(url: str, token: str) -> Any:
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


# --- the run -------------------------------------------------------------------------------


class Flow:
    """One run: the forge, the two processes, the person, and what they saw."""

    def __init__(self, forge: CountedSandbox, root: Path, *, issues: int, agents: int) -> None:
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
        )
        self.agent_procs = spawn(
            ["agents", f"http://127.0.0.1:{self.port}", agent_token, str(root), str(agents)],
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


def measure(issues: int, agents: int, *, timeout: float, settle: float) -> list[Row]:
    with (
        tempfile.TemporaryDirectory(prefix="agent-fleet-flow-") as scratch,
        CountedSandbox() as forge,
    ):
        flow = Flow(forge, Path(scratch), issues=issues, agents=agents)
        try:
            flow.wait_ready(timeout=120)
            time.sleep(1.0)  # the start-up resync's reconciles finish before the count starts
            counts_before = forge.snapshot()
            cpu_before = cpu_seconds(flow.daemon.pid)
            started = time.monotonic()
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
            time.sleep(settle)  # late writes (a flap, a trickle of resyncs) are counted too
            counts = forge.snapshot() - counts_before
            late = flow.status_writes_after_done()
        finally:
            flow.close()
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
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=200)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for all issues")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds counted after done")
    parser.add_argument("--quick", action="store_true", help="6 issues, 3 agents (CI)")
    parser.add_argument("mode", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        role, *rest = args.mode
        {"daemon": run_daemon, "agents": run_agents}[role](*rest)
        return
    issues, agents = (6, 3) if args.quick else (args.issues, args.agents)
    rows = measure(issues, agents, timeout=args.timeout, settle=args.settle)
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
        ]
    )


if __name__ == "__main__":
    main()
