"""Benchmark of Forgejo API calls per resync and per webhook-triggered reconcile, against targets.

Run by hand: ``python bench/resync.py`` (``--quick`` for a small world; the smoke test runs
that). Builds the daemon's assembly (``webhook.daemon.build``) on the in-memory Forgejo,
reached in process, seeds one repository with 1,000 open issues (about 30 % asking for the
fleet) and 200 open pull requests, and counts the gateway's HTTP calls (``calls`` / ``writes``)
for:

* a full resync (target: <= 25 calls — list pages, and the wiki's pages once — 0 writes);
* a full resync over the settled, unchanged forge, with every reconcile it causes (target:
  <= 30 calls, 0 writes: items whose listed ``updated_at`` was already read are not enqueued);
* an incremental resync when nothing changed (target: <= 2 calls per repository, 0 writes);
* the reconcile one issue's webhook triggers, delivered through the real receiver: for a
  settled issue (nothing to do) and for a new labelled issue while an agent that fits is online
  (target: <= 3 calls each).

Call counts do not depend on the machine; the seeding time is printed for information.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

# Importing the harness takes bench/ off sys.path, where bench/webhook.py would shadow the
# `webhook` package: it comes before the project's imports (see bench/harness.py).
from harness import Row, print_notes, print_table, verdict
from pydantic import SecretStr

from controllers.setup import WEBHOOK_EVENTS
from reconciler.engine.logs import configure_logging
from reconciler.fleet.records import Profile
from reconciler.keys import ASSIGNMENT
from reconciler.sandbox import ForgejoSandbox, QueuedWebhook
from reconciler.settings import (
    ForgejoSettings,
    LoopSettings,
    Settings,
    StoreSettings,
    WebhookSettings,
)
from reconciler.store import Store
from webhook.daemon import Assembly, build, http_app, prepare_repos
from webhook.events import keys_for

REPO = "fleet-admin/widgets"
# In-process clients need some base URL; the sandbox is reached through its WSGI app.
FORGE_URL = "http://forgejo.invalid:3000"
SECRET = "resync-bench-secret"
# Deliveries are held by the stopped sandbox and handed to the receiver in process.
HOOK_URL = "http://agent-fleet.invalid:8080/webhooks/forgejo"
ISSUES = 1000
PULLS = 200
FLEET_SHARE = 0.3
QUICK_ISSUES = 40
PERSON = "alice"
QUICK_PULLS = 8

# Labels people put on issues besides the fleet's own vocabulary.
PEOPLE_LABELS = ("bug", "enhancement", "question", "docs")
ROLE_LABELS = ("agent/developer", "agent/review")
CAPABILITY_LABELS = ("needs/code:python", "needs/code:rust", "needs/test")
TOPICS = (
    "the config loader",
    "the CLI help",
    "the retry policy",
    "the parser",
    "the release notes",
    "the metrics endpoint",
    "the webhook docs",
    "the cache",
)


class ManualClock:
    """The one clock of the forge and the reconciler, moved by hand between phases.

    The incremental resync asks for what changed since it last looked (minus an overlap of a
    few seconds); moving the clock a minute between phases makes "nothing changed" exact.
    """

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass(frozen=True)
class Count:
    """Forgejo API calls made during one measured step."""

    reads: int
    writes: int
    operations: tuple[str, ...]

    @property
    def calls(self) -> int:
        return self.reads + self.writes

    def describe(self) -> str:
        ops = ", ".join(_summarise(self.operations))
        return (
            f"{self.calls} ({_plural(self.reads, 'read')}, {_plural(self.writes, 'write')}: "
            f"{ops or 'none'})"
        )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _summarise(operations: tuple[str, ...]) -> list[str]:
    counts: dict[str, int] = {}
    for op in operations:
        counts[op] = counts.get(op, 0) + 1
    return [f"{op} x{n}" if n > 1 else op for op, n in counts.items()]


class CallCounter:
    """Counts the gateway's calls around a step, with the operations from the daemon's metrics.

    ``gateway.calls`` / ``gateway.writes`` give the totals; the per-operation breakdown is read
    from the ``agent_fleet_forgejo_api_calls`` counter the gateway's ``on_call`` feeds.
    """

    def __init__(self, assembly: Assembly) -> None:
        self._gateway = assembly.gateway
        self._metrics = assembly.metrics

    def _by_operation(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for family in self._metrics.forgejo_calls.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    op = sample.labels["operation"]
                    counts[op] = counts.get(op, 0) + int(sample.value)
        return counts

    @contextmanager
    def step(self) -> Iterator[list[Count]]:
        calls, writes, before = self._gateway.calls, self._gateway.writes, self._by_operation()
        out: list[Count] = []
        yield out
        made_writes = self._gateway.writes - writes
        made = self._gateway.calls - calls
        after = self._by_operation()
        operations = tuple(op for op, n in after.items() for _ in range(n - before.get(op, 0)))
        out.append(Count(made - made_writes, made_writes, operations))


@dataclass(frozen=True)
class World:
    """What was seeded, and how long the sandbox took to seed it."""

    issues: int
    fleet_issues: int
    pulls: int
    seconds: float


def seed(forge: ForgejoSandbox, *, issues: int, pulls: int, rng: random.Random) -> World:
    """Open ``issues`` issues and ``pulls`` pull requests, interleaved, through the helpers."""
    for name in (*PEOPLE_LABELS, *ROLE_LABELS, *CAPABILITY_LABELS):
        forge.create_label(REPO, name)
    forge.webhooks_enabled = False  # nothing listens yet; no payload is rendered per item
    start = time.perf_counter()
    made_issues = made_pulls = fleet = 0
    total = issues + pulls
    for n in range(total):
        # Pull requests spread evenly through the number sequence, as they are in a real repo.
        if made_pulls < pulls and (made_issues >= issues or n * pulls // total >= made_pulls):
            branch = (
                f"task/{n}-improve-topic" if rng.random() < 0.5 else f"feature/{n}-improve-topic"
            )
            forge.push(
                REPO,
                branch,
                files={f"src/module_{n}.py": f"VALUE = {n}\n"},
                message=f"Improve module {n}",
            )
            forge.open_pull(
                REPO, branch, title=f"Improve module {n}", body="Small, focused change."
            )
            made_pulls += 1
            continue
        topic = rng.choice(TOPICS)
        labels: list[str] = []
        if rng.random() < FLEET_SHARE:
            fleet += 1
            labels.append("fleet/task")
            if rng.random() < 0.4:
                labels.append(rng.choice(ROLE_LABELS))
            if rng.random() < 0.5:
                labels.append(rng.choice(CAPABILITY_LABELS))
            if rng.random() < 0.3:
                labels.append(rng.choice(("priority/high", "priority/low")))
        elif rng.random() < 0.6:
            labels.append(rng.choice(PEOPLE_LABELS))
        forge.create_issue(
            REPO,
            f"Rework {topic} ({n})",
            body=f"## Goal\nRework {topic}.\n\n## Validation\n`pytest -q` passes.\n",
            labels=labels,
        )
        made_issues += 1
    forge.webhooks_enabled = True
    return World(made_issues, fleet, made_pulls, time.perf_counter() - start)


def deliver(assembly: Assembly, requests: list[QueuedWebhook]) -> list[str]:
    """Hand held webhook requests to the daemon's real receiver; return the keys it enqueued."""
    app = http_app(assembly, readiness=dict)
    keys: list[str] = []
    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://fleet") as client:
        for request in requests:
            response = client.post(
                "/webhooks/forgejo", content=request.payload, headers=request.headers
            )
            if response.status_code == 204:
                continue  # the echo of the daemon's own write: nothing enqueued
            if response.status_code != 202:
                raise SystemExit(
                    f"the receiver answered {response.status_code} to a {request.event_type} "
                    f"delivery: {response.text}"
                )
            # The receiver answers 202 with no body; what it enqueued is what the mapping says.
            keys.extend(str(key) for key in keys_for(request.event, json.loads(request.payload)))
    return keys


def run(issues: int, pulls: int, root: Path) -> tuple[list[Row], World]:
    clock = ManualClock()
    forge = ForgejoSandbox(clock=clock)
    forge.create_repo(REPO)
    settings = Settings(
        forgejo=ForgejoSettings(
            url=FORGE_URL,
            token=SecretStr(forge.admin_token),
            repos=(REPO,),
            bot_login=forge.admin_login,
        ),
        webhook=WebhookSettings(secret=SecretStr(SECRET)),
        loop=LoopSettings(),
        store=StoreSettings(path=root / "state"),
    )
    rows: list[Row] = []
    with Store.open(root / "state") as store:
        assembly = build(
            settings, store=store, clock=clock, transport=httpx.WSGITransport(app=forge.app)
        )
        try:
            counter = CallCounter(assembly)
            prepare_repos(assembly)  # the label vocabulary, as the daemon makes it at start
            world = seed(forge, issues=issues, pulls=pulls, rng=random.Random(42))
            rows.append(
                (
                    f"seed {world.issues} issues + {world.pulls} PRs (sandbox helpers)",
                    f"{world.seconds * 1000:.0f} ms",
                    "(info)",
                    "",
                )
            )

            clock.advance(60)
            with counter.step() as full:
                enqueued = assembly.resync.full()
            # Pages of 50: 20 of issues and 4 of PRs; and the wiki's pages, listed once per
            # repository and process for the shared notes (docs/mcp.md).
            full_limit = 25
            rows.append(
                (
                    f"full resync ({enqueued} keys enqueued)",
                    full[0].describe(),
                    f"<= {full_limit} calls, 0 writes",
                    verdict(full[0].calls <= full_limit and full[0].writes == 0),
                )
            )

            # Settle the world: every fleet issue becomes a task and gets status/todo; the
            # incremental resync then sees those label writes (their echo) and reconciles
            # them once more to nothing.
            with counter.step() as settle:
                settled = assembly.loop.drain()
            issue_outcomes = sum(o.key.controller == ASSIGNMENT for o in settled)
            rows.append(
                (
                    f"settle: {issue_outcomes} issue reconciles (+{len(settled) - issue_outcomes} PR)",
                    settle[0].describe(),
                    "(info)",
                    "",
                )
            )
            clock.advance(60)
            with counter.step() as echo:
                echoed = assembly.resync.incremental()
            rows.append(
                (
                    f"incremental resync, {echoed} keys changed by us",
                    echo[0].describe(),
                    "(info)",
                    "",
                )
            )
            with counter.step() as noop:
                again = assembly.loop.drain()
            rows.append(
                (
                    f"reconciling those {len(again)} keys again",
                    noop[0].describe(),
                    "0 writes",
                    verdict(noop[0].writes == 0),
                )
            )

            clock.advance(60)
            with counter.step() as quiet:
                assembly.resync.incremental()
            repos = len(settings.forgejo.repos)
            rows.append(
                (
                    "incremental resync, nothing changed",
                    quiet[0].describe(),
                    f"<= {2 * repos} calls ({repos} repo), 0 writes",
                    verdict(quiet[0].calls <= 2 * repos and quiet[0].writes == 0),
                )
            )

            # The same full resync over the settled, unchanged forge, with every reconcile it
            # causes: items whose listed updated_at is the one last read are not enqueued.
            clock.advance(60)
            with counter.step() as unchanged:
                again_keys = assembly.resync.full()
                assembly.loop.drain()
            unchanged_limit = 30
            rows.append(
                (
                    f"full resync + its reconciles, nothing changed ({again_keys} keys)",
                    unchanged[0].describe(),
                    f"<= {unchanged_limit} calls, 0 writes",
                    verdict(unchanged[0].calls <= unchanged_limit and unchanged[0].writes == 0),
                )
            )

            # From here on the forge holds its deliveries (a stopped sandbox queues them) and
            # the bench hands them to the daemon's receiver, as Forgejo would post them.
            forge.stop()
            assembly.gateway.ensure_webhook(
                REPO, url=HOOK_URL, secret=SECRET, events=WEBHOOK_EVENTS
            )
            # A person, not the bot: a delivery the bot caused is the echo of its own write.
            forge.create_user(PERSON)
            settled_number = next(
                (o.key.id for o in settled if o.key.controller == ASSIGNMENT and o.actions), None
            )
            if settled_number is None:
                raise SystemExit("no seeded issue asks for the fleet: seed more issues")
            rows += webhook_rows(
                forge,
                assembly,
                counter,
                clock,
                label=f"settled #{settled_number} commented on",
                act=lambda: forge.comment(
                    REPO, int(settled_number), "Any news on this one?", author=PERSON
                ),
            )
            # A fleet at work: an agent that fits is online, so the new issue waits only for
            # it to ask (a short wait for a slot is not said on the issue, timeouts.queue_notice).
            # The reconciles its registration causes run before the measured step.
            assembly.fleet.register(
                Profile(type="claude-code", roles=("developer",), capabilities=("code:python",)),
                agent_id="bench-agent",
                credential=None,
            )
            assembly.loop.drain()
            rows += webhook_rows(
                forge,
                assembly,
                counter,
                clock,
                label="new labelled issue (an agent online)",
                act=lambda: forge.create_issue(
                    REPO,
                    "Add a --version flag",
                    body="## Goal\nPrint the version.\n",
                    labels=["fleet/task", "needs/code:python"],
                ),
            )
            # A daemon that does not manage labels has no label ids cached at its first
            # label write: add_labels looks them up once.
            unmanaged = settings.model_copy(
                update={"forgejo": settings.forgejo.model_copy(update={"manage_labels": False})}
            )
            restarted = build(
                unmanaged, store=store, clock=clock, transport=httpx.WSGITransport(app=forge.app)
            )
            try:
                rows += webhook_rows(
                    forge,
                    restarted,
                    CallCounter(restarted),
                    clock,
                    label="new issue, no label cache",
                    cold=True,
                    act=lambda: forge.create_issue(
                        REPO,
                        "Document the --version flag",
                        body="## Goal\nDocument it.\n",
                        labels=["fleet/task"],
                    ),
                )
            finally:
                restarted.gateway.close()
        finally:
            assembly.gateway.close()
            forge.stop()
    return rows, world


def webhook_rows(
    forge: ForgejoSandbox,
    assembly: Assembly,
    counter: CallCounter,
    clock: ManualClock,
    *,
    label: str,
    act: Callable[[], object],
    cold: bool = False,
) -> list[Row]:
    """The reconcile one webhook delivery triggers, then the one its own echo triggers.

    ``cold``: the process has not looked at the repository's labels yet, so its first label
    write looks them up once; shown for information, the target is the steady state.
    """
    clock.advance(60)
    held = len(forge.pending_webhooks())
    act()
    acted = len(forge.pending_webhooks())
    keys = deliver(assembly, forge.pending_webhooks()[held:acted])
    with counter.step() as first:
        outcomes = assembly.loop.drain()
    if (
        [str(o.key) for o in outcomes] != keys
        or len(keys) != 1
        or outcomes[0].key.controller != ASSIGNMENT
    ):
        raise SystemExit(f"expected one assignment key from the webhook, got {keys} / {outcomes}")
    rows = [
        (
            f"webhook reconcile, {label}",
            first[0].describe(),
            "(info: + one label lookup per repo and process)" if cold else "<= 3 calls",
            "" if cold else verdict(first[0].calls <= 3),
        )
    ]
    # The label write we made fires a webhook too: its reconcile must find nothing to do.
    echo_requests = forge.pending_webhooks()[acted:]
    if echo_requests:
        deliver(assembly, echo_requests)
        with counter.step() as echo:
            assembly.loop.drain()
        rows.append(
            (
                "  its echo (webhook of our label write)",
                echo[0].describe(),
                "0 calls (answered as an echo)",
                verdict(echo[0].calls == 0),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issues", type=int, default=ISSUES, help="open issues to seed")
    parser.add_argument("--pulls", type=int, default=PULLS, help="open pull requests to seed")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a small world ({QUICK_ISSUES} issues, {QUICK_PULLS} PRs) to check the bench runs",
    )
    args = parser.parse_args()
    issues, pulls = (QUICK_ISSUES, QUICK_PULLS) if args.quick else (args.issues, args.pulls)
    if issues < 1 or pulls < 0:
        parser.error("--issues must be >= 1 and --pulls >= 0")
    # The reconciles log a line each (and an error per PR key: no review controller yet).
    configure_logging(level="critical", json=True)
    root = Path(tempfile.mkdtemp(prefix="agent-fleet-resync-bench-"))
    try:
        rows, world = run(issues, pulls, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    notes = (
        (
            f"{REPO}: {world.issues} open issues ({world.fleet_issues} asking for the fleet) and "
            f"{world.pulls} open PRs in the in-memory Forgejo, reached in process; lists page 50 "
            "at a time. Targets are for 1,000 issues + 200 PRs."
        ),
        (
            "Calls count every HTTP attempt of the daemon's gateway. PR keys have no controller "
            "yet: their reconciles make no call here. Webhook rows go through the daemon's real "
            "receiver; the label write is status/todo, whose own webhook comes back as the echo."
        ),
    )
    print_notes(notes)


if __name__ == "__main__":
    main()
