"""Running tasks on ssh hosts (and ``localhost``): the executor behind the assignment controller.

A dispatch starts a thread that does on the host what a pull worker does on its own machine,
and reports as a pull agent does — through the same service calls the agent API makes, in
process: the task is reported ``running`` (``Fleet.update_task_status``), the receipt handed
in (``PullQueue.accept_receipt``, which settles the task into review), and a failed run
reported with its reason (``Fleet.report_failure``). Every report presents the lease the
dispatch was given and is checked there, under the agent's lock: if the task was cancelled or
given to someone else meanwhile, the run's results are refused and dropped. So a task's
progress has one writer, whichever kind of agent works on it.

The run itself:

1. the task's git worktree (``reconciler.run.gitwork.prepare``, over ssh);
2. the adapter's CLI in the worktree with the prompt built from the issue, under the host's
   ``timeout`` (the remote process is killed at the deadline, not just abandoned);
3. commit, push (``gitwork.finish``) and the pull request (``gitwork.hand_in``:
   the open one of the task's branch or a new one, never a closed one; the merged one
   when an earlier attempt's work already landed).

Three ssh round trips per run (prepare, CLI, finish) keep the overhead to a fraction of a
second. Stopping a run (:meth:`HostExecutor.stop`) only signals: it marks the run cancelled
and returns; a thread of its own leaves the stop on the host and waits for the run to end.
"""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import structlog

from reconciler.errors import FleetError
from reconciler.fleet.budgets import Budget, MeterFormat, RunSpend, UsageMeter
from reconciler.fleet.queue import PullQueue, ReceiptClaim
from reconciler.fleet.tasktokens import TaskTokens
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.keys import Key, issue_key
from reconciler.models import AgentId, ReceiptId, Task, TaskId, TaskState
from reconciler.run import gitwork
from reconciler.run.adapters import (
    FLEET_TOOL_PROGRAMS,
    FleetTools,
    RunOutput,
    claude_mcp_config_by_reference,
    fleet_tools_env,
    parse_output,
    render_command,
    render_env,
    with_fleet_tools,
)
from reconciler.run.hosts import RemoteResult, run_remote
from reconciler.settings import HostSettings, Settings
from reconciler.store import Store
from reconciler.text import describe_error

log = structlog.get_logger(__name__)

RunRemote = Callable[..., RemoteResult]

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

STOP_ATTEMPTS = 50
STOP_PAUSE = 0.2

_STOP = r"""
touch "$WT.stop"
if [ -f "$WT.pid" ]; then kill -TERM "-$(cat "$WT.pid")" 2>/dev/null || true; fi
"""


class RunFailed(FleetError):
    """A step of a run failed; ``retryable`` says whether another attempt may do better."""

    def __init__(
        self, message: str, *, retryable: bool = True, spent: RunSpend | None = None
    ) -> None:
        self.retryable = retryable
        self.spent = spent
        super().__init__(message)


class RunWaiting(Exception):
    """The run asked a question through its fleet tools and ended to wait for the answer: its
    work so far is on the branch, and no pull request is opened."""

    def __init__(self, spent: RunSpend, *, session_id: str | None) -> None:
        self.spent = spent
        self.session_id = session_id
        super().__init__("the run waits for the answer to its question")


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
    stopper: threading.Thread | None = None


class HostExecutor:
    """Runs dispatched tasks on their hosts, one thread per run, reporting through ``reports``
    (the pull queue and its fleet) as an agent in this process."""

    def __init__(
        self,
        *,
        store: Store,
        reports: PullQueue,
        gateway: ForgejoGateway,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        enqueue: Callable[[Key], None],
        log_dir: Path,
        run_remote: RunRemote = run_remote,
        prompt_for: Callable[[Task], str] | None = None,
        tokens: TaskTokens | None = None,
    ) -> None:
        """``tokens``: issues the task tokens of the runs' fleet tools (None: runs get none)."""
        self._tokens = tokens
        self._store = store
        self._reports = reports
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
        """Mark the run cancelled and return; a thread of its own finishes the stop (the
        remote process too). The run counts as running until its thread has ended."""
        with self._lock:
            run = self._runs.get(task_id)
            if run is None:
                return False
            run.cancelled.set()
            if run.stopper is None:
                run.stopper = threading.Thread(
                    target=self._finish_stop,
                    args=(run, reason),
                    name=f"stop-{task_id}",
                    daemon=True,
                )
                run.stopper.start()
        return True

    def _finish_stop(self, run: _Run, reason: str) -> None:
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
                    log.warning("task.stop_failed", task=run.task_id, error=str(exc))
            if run.thread is None or not run.thread.is_alive():
                break
            run.thread.join(STOP_PAUSE)
        log.info("task.stopped", task=run.task_id, reason=reason)

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
            threads = [
                t for r in self._runs.values() for t in (r.thread, r.stopper) if t is not None
            ]
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.1))

    # --- one run -------------------------------------------------------------------------

    def _execute(self, run: _Run) -> None:
        task: Task | None = None
        try:
            task = self._start(run)
            if task is not None:
                self._finish_ok(run, task, self._work(run, task))
        except RunWaiting as exc:
            self._finish_waiting(run, exc)
        except RunFailed as exc:
            self._finish_failed(run, str(exc), retryable=exc.retryable, spent=exc.spent)
        except FleetError as exc:
            self._finish_failed(run, describe_error(exc), retryable=True)
        except Exception as exc:
            log.exception("task.run_crashed", task=run.task_id)
            self._finish_failed(run, f"the run crashed: {describe_error(exc)}", retryable=True)
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

    def _start(self, run: _Run) -> Task | None:
        """Report the task running, as an agent does; None when the lease is not ours."""
        try:
            update = self._reports.fleet.update_task_status(
                run.agent_id,
                run.task_id,
                lease_generation=run.lease_generation,
                state=TaskState.RUNNING,
                note=f"started on {run.agent_id}",
            )
        except FleetError as exc:
            log.info("task.lease_lost", task=run.task_id, lease=run.lease_generation, why=str(exc))
            return None
        return update.task

    def _site(self, host: HostSettings) -> gitwork.Site:
        def run(script: str, *, env: Mapping[str, str], timeout: float) -> RemoteResult:
            return self._run_remote(host, script, timeout=timeout, env=dict(env))

        return gitwork.Site(run=run, where=host.name)

    def _work(self, run: _Run, task: Task) -> ReceiptClaim:
        settings = self._settings()
        host = self._host(run.agent_id)
        run.host = host
        adapter = settings.adapter_for(host)
        repo = self._gateway.get_repo(task.repo)
        base = repo.default_branch
        site = self._site(host)
        job = gitwork.GitJob(
            workdir=host.workdir,
            repo=task.repo,
            task_id=task.id,
            branch=task.branch,
            base=base,
            clone_url=repo.clone_url,
            credentials=gitwork.git_credentials(
                settings.forgejo.bot_login, settings.forgejo.token.get_secret_value()
            ),
        )
        worktree = gitwork.prepare(site, job, timeout=settings.timeouts.dispatch)
        run.worktree = worktree
        finished = False
        try:
            if run.cancelled.is_set():
                raise RunFailed("cancelled before the agent started", retryable=False)
            prompt = self._prompt_for(task)
            argv = render_command(
                adapter,
                prompt=prompt,
                workdir=worktree,
                session_id=task.session_id,
                resume=bool(task.session_id),
                budget_usd=task.budget_usd,
            )
            limit = (
                max((task.deadline_at - self._clock()).total_seconds(), 1.0)
                if task.deadline_at
                else settings.timeouts.task_default
            )
            env = dict(render_env(adapter))
            argv = self._with_fleet_tools(argv, env, host=host, task=task, run=run)
            started = time.monotonic()
            run.cli_started.set()
            ran = self._run_cli(host, argv, worktree, env, limit)
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
            spent, over = _metered(
                output.stdout,
                adapter.parser,
                price=settings.api.token_prices.get(host.agent_type),
                budget=Budget(usd=task.budget_usd, tokens=task.budget_tokens),
            )
            if run.cancelled.is_set():
                raise RunFailed("the run was stopped", retryable=False, spent=spent)
            if over is not None:
                # Over ssh the output comes back when the run ends, so it is judged then.
                raise RunFailed(over, retryable=False, spent=replace(spent, over_budget=True))
            if not result.ok:
                raise RunFailed(result.error or "the agent run failed", spent=spent)
            if self._asked(run):
                finished = self._keep_waiting_work(site, job, worktree, run, task)
                raise RunWaiting(spent, session_id=result.session_id)
            commits = gitwork.finish(
                site,
                job,
                worktree,
                author=f"agent-fleet ({run.agent_id})",
                email=f"{run.agent_id}@agent-fleet.invalid",
                message=f"{task.title}\n\n{result.summary[:2000]}\n\nTask {task.id}, attempt {task.attempt}.",
                timeout=settings.timeouts.dispatch,
            )
            finished = True
        finally:
            if not finished:
                gitwork.remove(site, job, worktree, timeout=settings.timeouts.dispatch)
        pull, commits = gitwork.hand_in(
            self._gateway,
            repo=task.repo,
            branch=task.branch,
            base=base,
            title=task.title,
            issue_number=task.issue_number,
            summary=result.summary,
            commits=commits,
        )
        return ReceiptClaim(
            # One receipt per lease: a dispatch runs once under its lease.
            receipt_id=ReceiptId(f"{task.id}-l{run.lease_generation}"),
            task_id=task.id,
            lease_generation=run.lease_generation,
            pr_number=pull.number,
            branch=task.branch,
            commits=tuple(commits),
            summary=result.summary,
            cost_usd=result.cost_usd,
            tokens=result.tokens,
            duration_s=round(duration, 3),
            session_id=result.session_id,
        )

    def _with_fleet_tools(
        self, argv: list[str], env: dict[str, str], *, host: HostSettings, task: Task, run: _Run
    ) -> list[str]:
        """``argv`` loading the fleet's MCP server (the host's ``mcp_command``) with a task
        token for this run's lease, when ``api.public_url`` says where the host reaches the
        daemon and the CLI is one that loads it; ``env`` gains the server's variables."""
        url = self._settings().api.public_url
        if self._tokens is None or not url or Path(argv[0]).name not in FLEET_TOOL_PROGRAMS:
            return argv
        tools = FleetTools(
            server=url,
            token=self._tokens.issue(task.id, run.lease_generation),
            command=tuple(host.mcp_command),
        )
        env.update(tools.env())
        env.update(fleet_tools_env(argv))
        # Claude Code gets its configuration inline, naming the variables: no file on the host.
        return with_fleet_tools(
            argv, tools=tools, config_file=claude_mcp_config_by_reference(tools)
        )

    def _asked(self, run: _Run) -> bool:
        """Whether the run asked a question (through its fleet tools) not answered yet."""
        task = self._store.find_task(run.task_id)
        return task is not None and any(
            q.answer is None and q.lease_generation == run.lease_generation for q in task.questions
        )

    def _keep_waiting_work(
        self, site: gitwork.Site, job: gitwork.GitJob, worktree: str, run: _Run, task: Task
    ) -> bool:
        """Commit and push what a run that waits for an answer left, so the run with the
        answer builds on it; whether the worktree is gone (``finish`` removes it)."""
        settings = self._settings()
        try:
            gitwork.finish(
                site,
                job,
                worktree,
                author=f"agent-fleet ({run.agent_id})",
                email=f"{run.agent_id}@agent-fleet.invalid",
                message=f"Work in progress on {task.title}\n\nKept because the run waits for "
                f"the answer to its question: task {task.id}, attempt {task.attempt}.",
                timeout=settings.timeouts.dispatch,
            )
        except FleetError as exc:  # nothing to keep, or git failed: wait without it
            log.info("task.partial_not_kept", task=task.id, reason=str(exc))
            return False
        return True

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

    # --- reporting back, as an agent -----------------------------------------------------

    def _finish_ok(self, run: _Run, task: Task, claim: ReceiptClaim) -> None:
        """Hand the receipt in; the pull queue settles the task into review."""
        try:
            self._reports.accept_receipt(run.agent_id, claim)
        except FleetError as exc:
            log.info("task.lease_lost", task=run.task_id, lease=run.lease_generation, why=str(exc))
            return
        log.info("task.run_finished", task=task.id, pr=claim.pr_number, commits=len(claim.commits))

    def _finish_waiting(self, run: _Run, waiting: RunWaiting) -> None:
        """The task goes back to the queue, held until its questions are answered."""
        log.info("task.waiting", task=run.task_id, reason=str(waiting))
        try:
            self._reports.fleet.wait_for_answers(
                run.agent_id,
                run.task_id,
                lease_generation=run.lease_generation,
                spent=waiting.spent,
                session_id=waiting.session_id,
            )
        except FleetError as exc:
            log.info("task.lease_lost", task=run.task_id, lease=run.lease_generation, why=str(exc))

    def _finish_failed(
        self, run: _Run, reason: str, *, retryable: bool, spent: RunSpend | None = None
    ) -> None:
        log.warning("task.run_failed", task=run.task_id, reason=reason)
        if run.cancelled.is_set():
            return
        try:
            self._reports.fleet.report_failure(
                run.agent_id,
                run.task_id,
                lease_generation=run.lease_generation,
                reason=reason,
                retryable=retryable,
                spent=spent,
            )
        except FleetError as exc:
            log.info("task.lease_lost", task=run.task_id, lease=run.lease_generation, why=str(exc))


def _metered(
    stdout: str, parser: MeterFormat, *, price: float | None, budget: Budget
) -> tuple[RunSpend, str | None]:
    """What a run's output says it spent, and ``over budget: …`` when that passes ``budget``."""
    meter = UsageMeter(parser, price_per_million=price)
    for line in stdout.splitlines():
        meter.feed(line)
    spent = RunSpend(meter.cost_usd or 0.0, meter.tokens, estimated=meter.cost_estimated)
    return spent, meter.over(budget)
