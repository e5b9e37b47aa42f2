"""The periodic resync: what makes agent-fleet correct when webhooks are lost.

Forgejo never retries a failed webhook delivery, so the loop cannot depend on them. Every
``resync_interval`` (jittered) an *incremental* resync asks each watched repository for what
changed since the last one (``issues?state=all&since=…``, one call when little changed) and
enqueues the keys; every ``full_resync_interval`` a *full* resync lists every open issue and
pull request, and every unfinished task the store still tracks, to catch anything missed, and
what the ``repo_keys`` sources name (the topics of the shared notes,
``reconciler/fleet/knowledge.py``). At start-up the loop runs a full resync. A listed item is
enqueued only when it changed since this process last read it one by one or wrote its labels
(``reconciler.forgejo.seen``: ``is_settled``); a held task is looked at every full resync. A
resync over an unchanged forge costs its list calls and no per-item reads. Enqueueing is cheap:
the work queue deduplicates keys and controllers are idempotent, so overlap between webhooks and
resyncs costs nothing but a reconcile.

Called by the daemon's resync thread, ``agent-fleet reconcile --once`` and the demo.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

import structlog

from reconciler.engine.metrics import Metrics
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import Issue, IssueState
from reconciler.keys import Key, agent_key, branch_key, issue_key, pull_key, setup_key
from reconciler.models import TaskState
from reconciler.settings import LabelsSettings, Settings
from reconciler.store import Store
from reconciler.text import describe_error

log = structlog.get_logger(__name__)

# Forgejo compares `since` with `>=` on whole seconds; overlapping by a few seconds makes sure
# an update in the same second as the previous listing is seen (seeing it twice is harmless).
SINCE_OVERLAP = timedelta(seconds=5)


def is_fleet_issue(issue: Issue, labels: LabelsSettings) -> bool:
    """Whether an issue asks for the fleet: the trigger label or any ``agent/<role>`` label.

    Checked here, not with the API's ``labels=`` filter: Forgejo requires ALL listed labels
    and silently drops unknown names, so it cannot express "any of these".
    """
    return any(
        name == labels.trigger or name.startswith(labels.role_prefix) for name in issue.labels
    )


class Resync:
    def __init__(
        self,
        gateway: ForgejoGateway,
        store: Store,
        enqueue: Callable[[Key], None],
        *,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        metrics: Metrics | None = None,
        record: bool = True,
        repo_keys: Sequence[Callable[[str], Iterable[Key]]] = (),
    ) -> None:
        """``repo_keys``: more keys a full resync enqueues per repository, each source called
        with the repository (the knowledge controller's topics)."""
        self._gateway = gateway
        self._store = store
        self._enqueue = enqueue
        self._settings = settings
        self._clock = clock
        self._metrics = metrics
        # False in a dry run: nothing is written, not even when the last resync happened.
        self._record = record
        self._repo_keys = tuple(repo_keys)

    @property
    def _repos(self) -> tuple[str, ...]:
        return tuple(self._settings().forgejo.repos)

    @property
    def _labels(self) -> LabelsSettings:
        return self._settings().labels

    def _remember(self, repo: str, started: datetime) -> None:
        if self._record:
            self._store.set_meta(self._meta_name(repo), started.isoformat())

    def _meta_name(self, repo: str) -> str:
        return f"resync.since:{repo}"

    def last_resync(self) -> datetime | None:
        """When the oldest of the watched repositories was last resynced (None: never)."""
        times = [self._store.get_meta(self._meta_name(r)) for r in self._repos]
        if not times or any(t is None for t in times):
            return None
        return min(datetime.fromisoformat(str(t)) for t in times)

    def _tracked_numbers(self, repo: str) -> set[int]:
        return {t.issue_number for t in self._store.list_tasks(repo=repo)}

    def _moved(self, repo: str, number: int, updated_at: datetime | None) -> bool:
        """Whether a listed item changed since this process last read it one by one."""
        return not self._gateway.seen.is_unchanged(repo, number, updated_at)

    def _keys_for(self, repo: str, issues: Sequence[Issue], tracked: set[int]) -> list[Key]:
        keys: list[Key] = []
        for issue in issues:
            if self._gateway.seen.is_settled(
                repo,
                issue.number,
                labels=issue.labels,
                state=str(issue.state),
                updated_at=issue.updated_at,
            ):
                # Its reconcile read exactly this version: the list answer says nothing new.
                continue
            if issue.is_pull:
                keys.append(pull_key(repo, issue.number))
            elif (
                issue.number in tracked
                or is_fleet_issue(issue, self._labels)
                # A closed issue may block fleet issues: its reconcile looks them up and
                # enqueues them, so a dependency that closed unseen is caught up here.
                or issue.state is IssueState.CLOSED
            ):
                keys.append(issue_key(repo, issue.number))
        return keys

    def incremental(self) -> int:
        """Enqueue what changed since the last resync of each repository; return the count."""
        total = 0
        for repo in self._repos:
            since_text = self._store.get_meta(self._meta_name(repo))
            if since_text is None:
                total += self._full_repo(repo)
                continue
            started = self._clock()
            since = datetime.fromisoformat(str(since_text)) - SINCE_OVERLAP
            changed = self._gateway.list_issues(repo, state="all", since=since)
            keys = self._keys_for(repo, changed, self._tracked_numbers(repo))
            for key in keys:
                self._enqueue(key)
            self._remember(repo, started)
            total += len(keys)
            log.debug("resync.incremental", repo=repo, changed=len(changed), enqueued=len(keys))
        self._mark("incremental")
        return total

    def full(self) -> int:
        """Enqueue every open fleet issue and PR, every task the store tracks, and every agent
        (registered, or declared in ``[[hosts]]``)."""
        # Each repository's set-up (labels, webhook) first, and even when Forgejo is down:
        # a label deleted by hand, or a set-up that failed, is put right within one period.
        for repo in self._repos:
            self._enqueue(setup_key(repo))
        total = sum(self._full_repo(repo) for repo in self._repos)
        total += sum(self._more_keys(repo) for repo in self._repos)
        total += self._all_agents()
        if self._record:
            # Keep the live store to the working set: finished tasks move to the archive.
            keep = timedelta(seconds=self._settings().store.archive_after)
            archived = self._store.archive_terminal(self._clock() - keep)
            if archived:
                log.info("store.archived", tasks=archived)
        self._mark("full")
        return total

    def _more_keys(self, repo: str) -> int:
        """The keys the ``repo_keys`` sources name for ``repo`` (e.g. shared-notes topics)."""
        count = 0
        for source in self._repo_keys:
            for key in source(repo):
                self._enqueue(key)
                count += 1
        return count

    def _all_agents(self) -> int:
        agents: set[str] = {a.id for a in self._store.list_agents()}
        agents |= {host.name for host in self._settings().hosts}
        for agent_id in sorted(agents):
            self._enqueue(agent_key(agent_id))
        return len(agents)

    def _full_repo(self, repo: str) -> int:
        started = self._clock()
        issues = self._gateway.list_issues(repo, state="open", kind="issues")
        pulls = self._gateway.list_pulls(repo, state="open")
        tasks = self._store.list_tasks(repo=repo)
        tracked = {t.issue_number for t in tasks}
        keys = self._keys_for(repo, issues, tracked)
        # Every pull request has review keys of its own, and these listings are what stand in
        # for its lost webhooks: here every open PR that moved, in `incremental` every PR
        # changed since the last resync (open, merged or closed). The review controller's
        # branch keys rely on it and read only the branch's tip, never its PR.
        keys += [
            pull_key(repo, pr.number) for pr in pulls if self._moved(repo, pr.number, pr.updated_at)
        ]
        # Tasks whose issue was closed are no longer in the open list: their keys make the
        # controller notice and cancel them. A listed issue was judged by its updated_at above
        # (losing its label moved it); a finished task has nothing left to notice. A held task
        # is looked at every time: what releases it (a blocker closing, perhaps in a repository
        # not watched here) does not move its own issue's updated_at.
        listed = {i.number for i in issues}
        keys += [
            issue_key(repo, n)
            for n in sorted(
                {
                    t.issue_number
                    for t in tasks
                    if t.on_hold or (not t.is_terminal and t.issue_number not in listed)
                }
            )
        ]
        # A pull request merged or closed while no webhook arrived (or the daemon was down) is
        # no longer in the open list: its task's review key makes the review controller look.
        # A task in review with no pull request recorded was rebuilt from its status label
        # after the local state was lost: its branch key is the one branch key that looks for
        # the branch's pull request (`controllers/review.py`).
        keys += [
            pull_key(repo, t.pr_number) if t.pr_number else branch_key(repo, t.branch)
            for t in self._store.list_tasks(repo=repo, state=TaskState.REVIEW_PENDING)
        ]
        for key in keys:
            self._enqueue(key)
        self._remember(repo, started)
        log.info("resync.full", repo=repo, issues=len(issues), pulls=len(pulls), enqueued=len(keys))
        return len(keys)

    def _mark(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.last_resync.labels(kind=kind).set(self._clock().timestamp())


class ResyncTimer:
    """A thread that runs incremental resyncs on a jittered interval and full ones less often."""

    def __init__(
        self,
        resync: Resync,
        *,
        interval: float,
        full_interval: float,
        jitter: float = 0.1,
        monotonic: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self._resync = resync
        self._interval = interval
        self._full_interval = full_interval
        self._jitter = jitter
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_full: float | None = None  # None: the first tick is a full resync

    def next_delay(self) -> float:
        spread = self._interval * self._jitter
        return max(self._interval + self._rng.uniform(-spread, spread), 0.0)

    def request(self) -> None:
        """Run a resync now (the config was reloaded, or an operator asked)."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="resync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def run_once(self) -> None:
        """One tick: a full resync when one is due, an incremental one otherwise."""
        try:
            if (
                self._last_full is None
                or self._monotonic() - self._last_full >= self._full_interval
            ):
                started = self._monotonic()
                self._resync.full()
                # Only a full resync that finished counts: a failed one is tried again next tick.
                self._last_full = started
            else:
                self._resync.incremental()
        except Exception as exc:  # noqa: BLE001 -- a failed resync must not kill the thread
            log.warning("resync.failed", error=describe_error(exc), error_type=type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._wake.wait(self.next_delay())
            self._wake.clear()
