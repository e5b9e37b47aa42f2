"""Running tasks on ssh hosts (and ``localhost``): the executor behind the assignment controller.

A dispatch starts a thread that does on the host what a pull worker does on its own machine:

1. prepare: a per-host bare clone of the repository (``<workdir>/repos/<owner>/<name>.git``,
   fetched under a lock) and a fresh git worktree for the task on ``task/<id>-<slug>``
   (``<workdir>/tasks/<task-id>``), from the task branch if it exists, else the default branch;
2. run the adapter's CLI in the worktree with the prompt built from the issue, under the
   host's ``timeout`` (the remote process is killed at the deadline, not just abandoned);
3. finish: commit whatever the agent left uncommitted, list the commits the branch adds, push;
4. open (or find) the pull request, store the receipt, and move the task to
   ``review_pending`` — or to ``failed`` with the reason, which the assignment controller
   retries with backoff.

Every write to the task presents the lease the dispatch was given: if the task was cancelled
or given to someone else meanwhile, the run's results are dropped. Three ssh round trips per
run (prepare, CLI, finish) keep the overhead to a fraction of a second.
"""

from __future__ import annotations

import base64
import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import structlog

from reconciler.errors import FleetError
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import IssueState
from reconciler.keys import Key, issue_key, pull_key
from reconciler.models import (
    AgentId,
    Receipt,
    ReceiptId,
    Task,
    TaskEvent,
    TaskId,
    TaskState,
    transition,
)
from reconciler.run.adapters import RunOutput, parse_output, render_command, render_env
from reconciler.run.hosts import RemoteResult, run_remote
from reconciler.settings import HostSettings, Settings
from reconciler.store import Store

log = structlog.get_logger(__name__)

RunRemote = Callable[..., RemoteResult]

_PREPARE = r"""
set -eu
cache="$WORKDIR/repos/$REPO.git"
wt="$WORKDIR/tasks/$TASK"
mkdir -p "$(dirname "$cache")" "$WORKDIR/tasks"
prepare() {
  if [ ! -d "$cache" ]; then git clone --quiet --bare "$CLONE_URL" "$cache"; fi
  git -C "$cache" fetch --quiet --prune origin '+refs/heads/*:refs/remotes/origin/*'
  # A stopped or crashed run leaves its worktree (and its stop marker) behind: remove them.
  rm -rf "$wt" "$wt.stop" "$wt.pid"
  git -C "$cache" worktree prune
  if git -C "$cache" rev-parse -q --verify "refs/remotes/origin/$BRANCH" >/dev/null; then
    start="refs/remotes/origin/$BRANCH"
  else
    start="refs/remotes/origin/$BASE"
  fi
  git -C "$cache" worktree add --quiet -B "$BRANCH" "$wt" "$start"
}
# Tasks of one repository share the clone: one fetch or worktree change at a time.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache.lock"
  flock 9
fi
prepare
echo "WORKTREE=$wt"
"""

_RUN = r"""
cd "$WT"
# The CLI runs under timeout(1), which makes itself a process group leader: killing that group
# stops the CLI and everything it started. A stop is asked for by creating $WT.stop; a watcher
# then signals the group until it is gone — it retries, because a signal sent in the instant
# before timeout(1) has made its group finds no group yet (and must not kill timeout alone,
# which would orphan the CLI). `kill -TERM -PID` (no `--`: dash's kill does not take it).
timeout -k 10 "$LIMIT" "$@" &
pid=$!
echo "$pid" > "$WT.pid"
(
  while [ ! -f "$WT.stop" ]; do sleep 0.2; done
  while kill -0 "$pid" 2>/dev/null; do
    kill -TERM "-$pid" 2>/dev/null
    sleep 0.1
  done
) >/dev/null 2>&1 &
watcher=$!
status=0
wait "$pid" || status=$?
kill "$watcher" 2>/dev/null
rm -f "$WT.pid"
exit $status
"""

_FINISH = r"""
set -eu
cd "$WT"
git add -A
if ! git diff --cached --quiet; then
  git -c user.name="$AUTHOR" -c user.email="$EMAIL" commit --quiet -m "$MESSAGE"
fi
echo "COMMITS-BEGIN"
git rev-list "refs/remotes/origin/$BASE..HEAD"
echo "COMMITS-END"
if [ -n "$(git rev-list "refs/remotes/origin/$BASE..HEAD")" ]; then
  git push --quiet origin "HEAD:refs/heads/$BRANCH"
fi
cd /
git -C "$WORKDIR/repos/$REPO.git" worktree remove --force "$WT" || true
"""

STOP_ATTEMPTS = 50
STOP_PAUSE = 0.2

_STOP = r"""
touch "$WT.stop"
if [ -f "$WT.pid" ]; then kill -TERM "-$(cat "$WT.pid")" 2>/dev/null || true; fi
"""


class RunFailed(FleetError):
    """A step of a run failed; ``retryable`` says whether another attempt may do better."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


@dataclass
class _Run:
    task_id: TaskId
    agent_id: AgentId
    lease_generation: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    host: HostSettings | None = None
    worktree: str = ""
    cli_started: threading.Event = field(default_factory=threading.Event)


class HostExecutor:
    """Runs dispatched tasks on their hosts, one thread per run."""

    def __init__(
        self,
        *,
        store: Store,
        gateway: ForgejoGateway,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        enqueue: Callable[[Key], None],
        log_dir: Path,
        run_remote: RunRemote = run_remote,
        prompt_for: Callable[[Task], str] | None = None,
    ) -> None:
        self._store = store
        self._gateway = gateway
        self._settings = settings
        self._clock = clock
        self._enqueue = enqueue
        self._log_dir = log_dir
        self._run_remote = run_remote
        self._prompt_for = prompt_for or self._default_prompt
        self._runs: dict[TaskId, _Run] = {}
        self._threads: dict[TaskId, threading.Thread] = {}
        self._lock = threading.Lock()

    # --- the Executor protocol -----------------------------------------------------------

    def dispatch(self, task_id: TaskId, agent_id: AgentId, *, lease_generation: int) -> None:
        with self._lock:
            if task_id in self._runs:
                raise RunFailed(f"task {task_id} is already running here", retryable=False)
            run = _Run(task_id, agent_id, lease_generation)
            run.thread = threading.Thread(
                target=self._execute, args=(run,), name=f"run-{task_id}", daemon=True
            )
            self._runs[task_id] = run
            self._threads[task_id] = run.thread
            # Started before anyone else can see it, so wait() never joins an unstarted thread.
            run.thread.start()
        log.info("task.dispatched", task=task_id, agent=agent_id, lease=lease_generation)

    def stop(self, task_id: TaskId, *, reason: str) -> bool:
        with self._lock:
            run = self._runs.get(task_id)
        if run is None:
            return False
        run.cancelled.set()
        # Leave the stop on the host once the worktree exists (the run's watcher acts on it
        # whenever the CLI starts); before that, the cancelled flag stops the run before its
        # CLI. Then wait, bounded, for the run's thread to end.
        asked = False
        for _ in range(STOP_ATTEMPTS):
            if not asked and run.host is not None and run.worktree:
                try:
                    self._run_remote(run.host, _STOP, timeout=30, env={"WT": run.worktree})
                    asked = True
                except FleetError as exc:
                    log.warning("task.stop_failed", task=task_id, error=str(exc))
            if run.thread is None or not run.thread.is_alive():
                break
            run.thread.join(STOP_PAUSE)
        log.info("task.stopped", task=task_id, reason=reason)
        return True

    def wait(self, task_id: TaskId, *, timeout: float) -> bool:
        """Wait for the task's run to end; True if it has (tests, shutdown)."""
        with self._lock:
            thread = self._threads.get(task_id)
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def wait_started(self, task_id: TaskId, *, timeout: float) -> bool:
        """Wait until the task's CLI has been started on its host."""
        with self._lock:
            run = self._runs.get(task_id)
        return run is not None and run.cli_started.wait(timeout)

    def is_running(self, task_id: TaskId) -> bool:
        with self._lock:
            return task_id in self._runs

    def running(self) -> list[TaskId]:
        with self._lock:
            return list(self._runs)

    def shutdown(self, *, timeout: float) -> None:
        """Stop every run (their processes too) and wait for the threads, at most ``timeout``."""
        for task_id in self.running():
            self.stop(task_id, reason="agent-fleet is stopping")
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [r.thread for r in self._runs.values() if r.thread is not None]
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.1))

    # --- one run -------------------------------------------------------------------------

    def _execute(self, run: _Run) -> None:
        task: Task | None = None
        try:
            task = self._start(run)
            if task is not None:
                self._finish_ok(run, task, self._work(run, task))
        except RunFailed as exc:
            self._finish_failed(run, str(exc), retryable=exc.retryable)
        except FleetError as exc:
            self._finish_failed(run, f"{type(exc).__name__}: {exc}", retryable=True)
        except Exception as exc:
            log.exception("task.run_crashed", task=run.task_id)
            self._finish_failed(
                run, f"the run crashed: {type(exc).__name__}: {exc}", retryable=True
            )
        finally:
            # The task's new state is written before the run stops counting as running.
            with self._lock:
                self._runs.pop(run.task_id, None)
            if task is not None:
                self._enqueue(issue_key(task.repo, task.issue_number))

    def _host(self, agent_id: AgentId) -> HostSettings:
        for host in self._settings().hosts:
            if host.name == agent_id:
                return host
        raise RunFailed(
            f"no [[hosts]] entry named {agent_id} in the configuration", retryable=False
        )

    def _update(
        self, run: _Run, change: Callable[[Task], tuple[Task, list[TaskEvent]]]
    ) -> Task | None:
        """Apply ``change`` if the task is still ours under this lease; None when it is not."""
        result: list[Task] = []

        def guarded(task: Task) -> Task:
            if task.agent_id != run.agent_id or task.lease_generation != run.lease_generation:
                return task
            if task.state not in (TaskState.ASSIGNED, TaskState.RUNNING):
                return task
            updated, events = change(task)
            for event in events:
                self._store.append_event(event)
            result.append(updated)
            return updated

        self._store.update_task(run.task_id, guarded)
        if not result:
            log.info("task.lease_lost", task=run.task_id, lease=run.lease_generation)
            return None
        return result[0]

    def _start(self, run: _Run) -> Task | None:
        actor = f"agent:{run.agent_id}"
        now = self._clock()

        def to_running(task: Task) -> tuple[Task, list[TaskEvent]]:
            if task.state is TaskState.RUNNING:
                return task, []
            updated, event = transition(
                task,
                TaskState.RUNNING,
                now=now,
                actor=actor,
                reason=f"started on {run.agent_id}",
                last_activity_at=now,
            )
            return updated, [event]

        task = self._update(run, to_running)
        if task is not None:
            self._enqueue(issue_key(task.repo, task.issue_number))
        return task

    def _work(self, run: _Run, task: Task) -> Receipt:
        settings = self._settings()
        host = self._host(run.agent_id)
        run.host = host
        adapter = settings.adapter_for(host)
        repo = self._gateway.get_repo(task.repo)
        base = repo.default_branch
        git_env = self._git_env(settings)
        common = {
            "WORKDIR": host.workdir,
            "REPO": task.repo,
            "TASK": task.id,
            "BRANCH": task.branch,
            "BASE": base,
        }

        prepared = self._remote(
            host,
            _PREPARE,
            timeout=settings.timeouts.dispatch,
            env={**common, **git_env, "CLONE_URL": repo.clone_url},
            what="prepare the worktree",
        )
        worktree = _value(prepared.stdout, "WORKTREE") or f"{host.workdir}/tasks/{task.id}"
        run.worktree = worktree
        if run.cancelled.is_set():
            raise RunFailed("cancelled before the agent started", retryable=False)

        prompt = self._prompt_for(task)
        argv = render_command(
            adapter,
            prompt=prompt,
            workdir=worktree,
            session_id=task.session_id,
            resume=bool(task.session_id),
        )
        limit = (
            max((task.deadline_at - self._clock()).total_seconds(), 1.0)
            if task.deadline_at
            else settings.timeouts.task_default
        )
        started = time.monotonic()
        run.cli_started.set()
        ran = self._run_cli(host, argv, worktree, render_env(adapter), limit)
        duration = time.monotonic() - started
        self._write_log(task, ran)
        output = RunOutput(
            exit_code=ran.exit_code if ran.exit_code is not None else -9,
            stdout=ran.stdout,
            stderr=ran.stderr,
            timed_out=ran.timed_out or ran.exit_code == 124,
            duration_s=duration,
            cancelled=run.cancelled.is_set(),
            timeout_s=limit,
        )
        result = parse_output(adapter.parser, output)
        if run.cancelled.is_set():
            raise RunFailed("the run was stopped", retryable=False)
        if not result.ok:
            raise RunFailed(result.error or "the agent run failed")

        finished = self._remote(
            host,
            _FINISH,
            timeout=settings.timeouts.dispatch,
            env={
                **common,
                **git_env,
                "WT": worktree,
                "AUTHOR": f"agent-fleet ({run.agent_id})",
                "EMAIL": f"{run.agent_id}@agent-fleet.invalid",
                "MESSAGE": f"{task.title}\n\n{result.summary[:2000]}\n\nTask {task.id}, attempt {task.attempt}.",
            },
            what="commit and push",
        )
        commits = _between(finished.stdout, "COMMITS-BEGIN", "COMMITS-END")
        if not commits:
            raise RunFailed("the agent finished without changing anything on the branch")

        pull = self._gateway.find_pull_by_head(task.repo, task.branch)
        # A closed pull request (unmerged, then requeued) is history: this attempt opens a new one.
        if pull is None or pull.state is not IssueState.OPEN:
            body = f"Closes #{task.issue_number}\n\n{result.summary}".strip()
            pull = self._gateway.create_pull(
                task.repo, head=task.branch, base=base, title=task.title, body=body
            )
        return Receipt(
            id=ReceiptId(f"{task.id}-a{task.attempt}"),
            task_id=task.id,
            agent_id=run.agent_id,
            lease_generation=run.lease_generation,
            pr_number=pull.number,
            branch=task.branch,
            commits=tuple(commits),
            summary=result.summary,
            cost_usd=result.cost_usd,
            tokens=result.tokens,
            duration_s=round(duration, 3),
            session_id=result.session_id,
            submitted_at=self._clock(),
        )

    def _run_cli(
        self,
        host: HostSettings,
        argv: list[str],
        worktree: str,
        env: Mapping[str, str],
        limit: float,
    ) -> RemoteResult:
        script = _RUN.replace('"$@"', " ".join(shlex.quote(a) for a in argv))
        return self._run_remote(
            host,
            script,
            timeout=limit + 30,
            env={**env, "WT": worktree, "LIMIT": f"{max(int(limit), 1)}"},
        )

    def _remote(
        self, host: HostSettings, script: str, *, timeout: float, env: Mapping[str, str], what: str
    ) -> RemoteResult:
        ran = self._run_remote(host, script, timeout=timeout, env=dict(env))
        if ran.timed_out:
            raise RunFailed(f"could not {what} on {host.name}: timed out after {timeout:g} s")
        if ran.exit_code != 0:
            detail = (ran.stderr.strip() or ran.stdout.strip())[-500:]
            raise RunFailed(f"could not {what} on {host.name} (exit {ran.exit_code}): {detail}")
        return ran

    def _git_env(self, settings: Settings) -> dict[str, str]:
        """Credentials for git over HTTP, in the environment rather than a URL or argv (which
        other users can read in the process list)."""
        login = settings.forgejo.bot_login
        token = settings.forgejo.token.get_secret_value()
        basic = base64.b64encode(f"{login}:{token}".encode()).decode()
        return {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }

    def _write_log(self, task: Task, ran: RemoteResult) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        path = self._log_dir / f"{task.id}-attempt{task.attempt}.log"
        path.write_text(
            f"exit: {ran.exit_code} timed_out: {ran.timed_out}\n--- stdout\n{ran.stdout}\n--- stderr\n{ran.stderr}\n"
        )

    def _default_prompt(self, task: Task) -> str:
        from reconciler.run.prompt import prompt_for_task

        allow = frozenset(self._settings().forgejo.trusted_authors)
        return prompt_for_task(self._gateway, task, attempt=task.attempt, allow=allow)

    # --- reporting back ------------------------------------------------------------------

    def _finish_ok(self, run: _Run, task: Task, receipt: Receipt) -> None:
        self._store.put_receipt(receipt)
        now = self._clock()

        def to_review(current: Task) -> tuple[Task, list[TaskEvent]]:
            note = TaskEvent(
                task_id=current.id,
                at=now,
                actor=f"agent:{run.agent_id}",
                kind="receipt",
                reason=f"pull request #{receipt.pr_number} with {len(receipt.commits)} commit(s)",
                data={"receipt_id": receipt.id, "pr_number": receipt.pr_number},
            )
            updated, event = transition(
                current,
                TaskState.REVIEW_PENDING,
                now=now,
                actor=f"agent:{run.agent_id}",
                reason=f"pull request #{receipt.pr_number} opened",
                pr_number=receipt.pr_number,
                session_id=receipt.session_id,
                last_activity_at=now,
            )
            return updated, [note, event]

        if self._update(run, to_review) is not None and receipt.pr_number is not None:
            self._enqueue(pull_key(task.repo, receipt.pr_number))
        log.info(
            "task.run_finished", task=task.id, pr=receipt.pr_number, commits=len(receipt.commits)
        )

    def _finish_failed(self, run: _Run, reason: str, *, retryable: bool) -> None:
        now = self._clock()
        log.warning("task.run_failed", task=run.task_id, reason=reason)

        def to_failed(current: Task) -> tuple[Task, list[TaskEvent]]:
            updated, event = transition(
                current,
                TaskState.FAILED,
                now=now,
                actor=f"agent:{run.agent_id}",
                reason=reason,
                failure_reason=reason,
                failure_retryable=retryable,
            )
            return updated, [event]

        if not run.cancelled.is_set():
            self._update(run, to_failed)


def _value(stdout: str, name: str) -> str:
    prefix = f"{name}="
    return next(
        (line[len(prefix) :].strip() for line in stdout.splitlines() if line.startswith(prefix)), ""
    )


def _between(stdout: str, begin: str, end: str) -> list[str]:
    lines = stdout.splitlines()
    try:
        start, stop = lines.index(begin), lines.index(end)
    except ValueError:
        return []
    return [line.strip() for line in lines[start + 1 : stop] if line.strip()]
