"""The scripted flow the crash and fault trials run, and the invariants they check.

One trial: the in-memory Forgejo served on loopback with a few labelled issues; the daemon
as its own process (``python bench/trials.py daemon …``) with the local host running the
deterministic demo agent; a person who approves and merges every task's pull request. The
trial scripts disturb that flow (``crash_trials.py``: SIGKILL at random points and restart;
``fault_trials.py``: a fault-injecting proxy between daemon and Forgejo) and then check what
Forgejo and the store hold:

* one status comment and one result comment per issue (no duplicate, no stale one);
* one pull request and one branch per task (nothing dispatched twice);
* every issue done (``status/done``), no repository left without its labels;
* every completed task has its receipt (none lost).

Used by ``bench/crash_trials.py``, ``bench/fault_trials.py`` and ``tests/test_trials.py``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import SecretStr

from controllers.assignment import COMMENT_MARKER
from controllers.receipts import RESULT_MARKER
from reconciler.forgejo.gateway import ForgejoGateway, marker_tag
from reconciler.models import TaskState, task_id_for
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import ForgejoSettings, LoopSettings, WebhookSettings
from reconciler.store import Store

OWNER = "fleet-admin"
NAME = "trial"
REPO = f"{OWNER}/{NAME}"
REVIEWER = "alice"
SECRET = "trial-webhook-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Violations:
    """What a trial found wrong, by invariant."""

    duplicate_comments: list[str] = field(default_factory=list)
    stale_comments: list[str] = field(default_factory=list)
    double_dispatch: list[str] = field(default_factory=list)
    not_done: list[str] = field(default_factory=list)
    lost_receipts: list[str] = field(default_factory=list)
    stuck_repos: list[str] = field(default_factory=list)

    def total(self) -> int:
        return sum(len(v) for v in vars(self).values())

    def unsafe(self) -> int:
        """Violations of safety (duplicates, stale text, double dispatch, lost receipts, stuck
        repositories) — everything except an issue not yet done by the trial's deadline."""
        return self.total() - len(self.not_done)

    def lines(self) -> list[str]:
        return [f"{k}: {v}" for k, v in vars(self).items() if v]


class DaemonProcess:
    """The daemon as a process of its own, killable with SIGKILL."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.process = subprocess.Popen(
            # As a module from the checkout: run as a file, bench/webhook.py would shadow the
            # webhook package.
            [sys.executable, "-m", "bench.trials", "daemon", *self.args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            start_new_session=True,  # its agent runs die with it (the whole group is killed)
        )
        out.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class Trial:
    """One run of the flow: the forge, the daemon process, the person."""

    sandbox: ForgejoSandbox
    root: Path
    forge_url: str
    """Where the daemon reaches Forgejo (the sandbox itself, or a proxy in front of it)."""
    issues: int = 3
    timeout: float = 30.0
    daemon_port: int = field(default_factory=free_port)
    numbers: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.person = ForgejoGateway(self.sandbox.url, self.sandbox.admin_token)
        self.daemon = DaemonProcess(
            [
                self.forge_url,
                self.sandbox.admin_token,
                str(self.root / "state"),
                str(self.root / "work"),
                str(self.daemon_port),
                str(self.timeout),
            ],
            self.root / "daemon.log",
        )

    def file_issues(self) -> None:
        self.person.create_repo(NAME, default_branch="main", auto_init=True)
        self.sandbox.create_user(REVIEWER)
        self.person.add_collaborator(REPO, REVIEWER, permission="write")
        for n in range(self.issues):
            # Labels are the daemon's to create: the issue carries none until it exists.
            issue = self.person.create_issue(REPO, title=f"Add note {n}", body=f"Write note {n}.")
            self.numbers.append(issue.number)

    def label_issues(self) -> bool:
        """Ask for the fleet once the daemon made the labels; False while they do not exist."""
        names = {label.name for label in self.person.list_labels(REPO)}
        if "fleet/task" not in names:
            return False
        for number in self.numbers:
            if "fleet/task" not in self.person.get_issue(REPO, number).labels:
                self.person.add_labels(REPO, number, ["fleet/task"])
        return True

    def review(self) -> None:
        """The person approves and merges every open task pull request."""
        for pull in self.person.list_pulls(REPO, state="open"):
            if pull.head_branch.startswith("task/"):
                try:
                    self.sandbox.review(REPO, pull.number, "APPROVED", body="ok", author=REVIEWER)
                    self.sandbox.merge(REPO, pull.number, author=REVIEWER)
                except Exception as exc:  # noqa: BLE001 - a race with a push: next round
                    print(f"    (merge of #{pull.number} deferred: {exc})", flush=True)

    def all_done(self) -> bool:
        return all("status/done" in self.person.get_issue(REPO, n).labels for n in self.numbers)

    def drive(self, *, until: float, disturb: Callable[[], None] = lambda: None) -> bool:
        """Run the flow until every issue is done or the deadline passes."""
        labelled = False
        while time.monotonic() < until:
            disturb()
            try:
                labelled = labelled or self.label_issues()
                if labelled:
                    self.review()
                    if self.all_done():
                        return True
            except Exception as exc:  # noqa: BLE001 - the person retries, as a person would
                print(f"    (person: {exc})", flush=True)
            time.sleep(0.3)
        return False

    def check(self, *, settle: float = 3.0) -> Violations:
        """The invariants, after the daemon had ``settle`` seconds to finish its writes."""
        time.sleep(settle)
        found = Violations()
        login = self.person.bot_login()
        labels = {label.name for label in self.person.list_labels(REPO)}
        if not {"status/todo", "status/doing", "status/done"} <= labels:
            found.stuck_repos.append(REPO)
        pulls = self.person.list_pulls(REPO, state="all")
        branches = [b for b in self.sandbox_branches() if b.startswith("task/")]
        for number in self.numbers:
            issue = self.person.get_issue(REPO, number)
            if "status/done" not in issue.labels:
                found.not_done.append(f"#{number} {sorted(issue.labels)}")
                continue  # its comments are checked once it is done
            mine = [c for c in self.person.list_comments(REPO, number) if c.author == login]
            for marker in (COMMENT_MARKER, RESULT_MARKER):
                tagged = [c for c in mine if marker_tag(marker) in c.body]
                if len(tagged) > 1:
                    found.duplicate_comments.append(f"#{number} {marker} ×{len(tagged)}")
                if marker == RESULT_MARKER and not tagged:
                    found.stale_comments.append(f"#{number} has no result comment")
                if marker == COMMENT_MARKER and any("🤖 Taken" not in c.body for c in tagged):
                    found.stale_comments.append(
                        f"#{number} status comment does not say who took it"
                    )
            task_id = task_id_for(REPO, number)
            prefix = f"task/{task_id}-"
            own_pulls = [p for p in pulls if p.head_branch.startswith(prefix)]
            own_branches = [b for b in branches if b.startswith(prefix)]
            if len(own_pulls) != 1 or len(own_branches) > 1:
                found.double_dispatch.append(
                    f"#{number}: {len(own_pulls)} PRs, branches {own_branches}"
                )
        self.daemon.stop()  # the store has one owner at a time
        with Store.open(self.root / "state") as store:
            for number in self.numbers:
                task = store.find_task(task_id_for(REPO, number))
                if task is None:
                    continue  # archived or not rebuilt: the issue labels were checked above
                if task.state is TaskState.COMPLETED and not store.receipts_for(task.id):
                    found.lost_receipts.append(task.id)
        return found

    def sandbox_branches(self) -> list[str]:
        with self.sandbox.state.lock:
            return list(self.sandbox.state.repos[REPO].git.branches)

    def log_tail(self, lines: int = 25) -> str:
        """The daemon log's warnings and errors (what explains a violation), then its end."""
        text = self.daemon.log.read_text(errors="replace") if self.daemon.log.exists() else ""
        every = text.splitlines()
        problems = [line for line in every if "[warning" in line or "[error" in line]
        return "\n".join([*problems[-40:], "  ...", *every[-lines:]])

    def close(self) -> None:
        self.daemon.stop()
        self.person.close()


@contextmanager
def trial_forge() -> Iterator[tuple[ForgejoSandbox, Path]]:
    with (
        tempfile.TemporaryDirectory(prefix="agent-fleet-trial-") as scratch,
        ForgejoSandbox() as sandbox,
    ):
        yield sandbox, Path(scratch)


def run_daemon(forge_url: str, token: str, state: str, work: str, port: str, timeout: str) -> None:
    """The daemon process of a trial: the demo's settings, pointed at ``forge_url``."""
    from webhook.daemon import Daemon
    from webhook.demo import demo_settings

    settings = demo_settings(forge_url, token, state=Path(state), work=Path(work))
    settings = settings.model_copy(
        update={
            "forgejo": ForgejoSettings(
                url=forge_url,
                token=SecretStr(token),
                repos=(REPO,),
                bot_login=OWNER,
                timeout=float(timeout),
                read_retries=1,
                webhook_url=f"http://127.0.0.1:{port}/webhooks/forgejo",
                manage_webhooks=True,
            ),
            "webhook": WebhookSettings(port=int(port), secret=SecretStr(SECRET)),
            "loop": LoopSettings(
                workers=2,
                resync_interval=5,
                full_resync_interval=10,
                backoff_initial=0.5,
                backoff_max=4,
                shutdown_grace=5,
            ),
        }
    )
    daemon = Daemon(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    daemon.start()
    try:
        daemon.wait(stop)
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("daemon", help="run one trial's daemon (used by the trial scripts)")
    for name in ("forge_url", "token", "state", "work", "port", "timeout"):
        d.add_argument(name)
    args = parser.parse_args()
    run_daemon(args.forge_url, args.token, args.state, args.work, args.port, args.timeout)


if __name__ == "__main__":
    main()
