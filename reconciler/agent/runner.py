"""One task's run on a pull worker: the prompt, the git worktree, the agent CLI, the push,
the pull request and the receipt, or a report of why not.

:class:`TaskRunner` is what :class:`~reconciler.agent.worker.Worker` runs on each task's thread
(see the worker's module docstring for the whole life of a task). The git work is
``reconciler.run.gitwork``'s, the same steps the ssh executor runs on a host; the receipt is
handed to the worker's durable outbox.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import structlog

from reconciler.agent.client import AgentApi
from reconciler.agent.config import WorkerConfig
from reconciler.agent.taskrun import OverBudget, RunStopped, StepFailed, TaskRun
from reconciler.errors import (
    ConflictError,
    FleetError,
    NotFoundError,
    RefusedError,
    TransientError,
)
from reconciler.fleet.api import SUMMARY_MAX, ReceiptRequest
from reconciler.fleet.budgets import Budget, UsageMeter
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.models import Task
from reconciler.run import gitwork
from reconciler.run.adapters import (
    FleetTools,
    claude_mcp_config,
    fleet_tools_env,
    parse_output,
    render_command,
    render_env,
    start_local,
    with_fleet_tools,
)
from reconciler.run.prompt import prompt_for_task
from reconciler.text import describe_error

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

# A run without a deadline from the daemon may take this long.
DEFAULT_RUN_LIMIT_S = 3600.0
# Environment variables the worker itself is configured with; the agent CLI never sees them.
_OWN_ENV_PREFIX = "AGENT_FLEET_"
# Why the runs of a stopping worker are cancelled: their work so far is pushed, then handed back.
HANDING_BACK = "the worker is stopping"
# Why a run that asked a question through its fleet tools ends without a pull request.
WAITING = "the run waits for the answer to its question"


def prompt_for(gateway: ForgejoGateway, task: Task, *, attempt: int) -> str:
    """The task's prompt, built here from the issue with the worker's own Forgejo token."""
    return prompt_for_task(gateway, task, attempt=attempt)


class TaskRunner:
    """Runs one held task to a queued receipt; shared by the worker's task threads."""

    def __init__(
        self,
        config: WorkerConfig,
        api: AgentApi,
        *,
        agent_id: Callable[[], str | None],
        queue_receipt: Callable[[ReceiptRequest], None],
    ) -> None:
        self.config = config
        self.api = api
        self._agent_id = agent_id
        self._queue_receipt = queue_receipt

    @property
    def agent_id(self) -> str | None:
        return self._agent_id()

    def execute(self, run: TaskRun) -> None:
        """Run one task to a queued receipt, or report why not (see the module docstring)."""
        assignment = run.assignment
        task = assignment.task
        lease = assignment.lease_generation
        try:
            self._report(run, running=True, note=f"started on {self.config.hostname}")
        except (RefusedError, NotFoundError, RunStopped) as exc:
            log.warning("task.not_started", task=task.id, error=str(exc))
            return
        worktree: str | None = None
        job: gitwork.GitJob | None = None
        site = gitwork.local_site()
        gateway = ForgejoGateway(
            assignment.forgejo_url, self.config.forgejo_token.get_secret_value()
        )
        try:
            base = assignment.base_branch or gateway.get_repo(task.repo).default_branch
            prompt = prompt_for(gateway, task, attempt=assignment.attempt)
            job = gitwork.GitJob(
                workdir=str(self.config.workdir),
                repo=task.repo,
                task_id=task.id,
                branch=assignment.branch,
                base=base,
                clone_url=assignment.clone_url,
                credentials=gitwork.git_credentials(
                    gateway.bot_login(), self.config.forgejo_token.get_secret_value()
                ),
            )
            run.check()
            worktree = gitwork.prepare(site, job, timeout=gitwork.LOCAL_TIMEOUT)
            run.check()
            summary, session_id, cost, tokens, duration = self._run_cli(run, prompt, Path(worktree))
            run.check()
            if self._asked(run):
                # The run asked a question and ended to wait for the answer: its work so far
                # is kept on the branch, no pull request is opened, and the task waits.
                worktree = self._keep_partial(site, job, worktree, run, why=WAITING)
                self._report(run, waiting=True, spent=(cost, tokens), session_id=session_id)
                log.info("task.waiting", task=task.id, reason=WAITING)
                return
            agent = self.agent_id or "agent"
            finishing, worktree = worktree, None  # finish removes the worktree itself
            commits = gitwork.finish(
                site,
                job,
                finishing,
                author=f"agent-fleet ({agent})",
                email=f"{agent}@agent-fleet.invalid",
                message=f"{task.title}\n\n{summary[:2000]}\n\nTask {task.id}, attempt "
                f"{assignment.attempt}.",
                timeout=gitwork.LOCAL_TIMEOUT,
            )
            run.check()
            pull, commits = gitwork.hand_in(
                gateway,
                repo=task.repo,
                branch=assignment.branch,
                base=base,
                title=task.title,
                issue_number=task.issue_number,
                summary=summary,
                commits=commits,
            )
            log.info("task.pushed", task=task.id, pr=pull.number, commits=len(commits))
            self._queue_receipt(
                ReceiptRequest(
                    receipt_id=f"{task.id}-l{lease}-{uuid.uuid4().hex[:12]}",
                    task_id=task.id,
                    lease_generation=lease,
                    pr_number=pull.number,
                    branch=assignment.branch,
                    commits=tuple(commits),
                    summary=summary[:SUMMARY_MAX],
                    cost_usd=cost,
                    tokens=tokens,
                    duration_s=round(duration, 3),
                    session_id=session_id,
                )
            )
        except RunStopped as exc:
            log.info("task.stopped", task=task.id, reason=str(exc))
            if run.stop_reason == HANDING_BACK and worktree is not None and job is not None:
                worktree = self._keep_partial(site, job, worktree, run, why=HANDING_BACK)
        except OverBudget as exc:
            log.warning("task.over_budget", task=task.id, reason=str(exc))
            with contextlib.suppress(FleetError):
                self._report(run, note=str(exc), failed=True, over_budget=exc)
        except (FleetError, OSError, ValueError) as exc:
            reason = describe_error(exc)
            log.warning("task.run_failed", task=task.id, reason=reason)
            with contextlib.suppress(FleetError):
                self._report(run, note=f"the run failed: {reason}", failed=True)
        finally:
            gateway.close()
            if worktree is not None and job is not None:
                gitwork.remove(site, job, worktree, timeout=gitwork.LOCAL_TIMEOUT)

    def _asked(self, run: TaskRun) -> bool:
        """Whether the run asked a question (through its fleet tools) that is not answered:
        the daemon's brief of the task says, under the run's task token."""
        token = run.assignment.task_token
        if not token:
            return False
        lease = run.assignment.lease_generation
        # Not guessed when the daemon is out of reach: a "no" would open a pull request for
        # work that waits for an answer. A refusal (the lease is gone) fails the hand-in.
        brief = self._retrying(run, "brief", lambda: self.api.brief(run.task_id, task_token=token))
        return any(q.answer is None and q.lease_generation == lease for q in brief.questions)

    def _retrying(self, run: TaskRun, what: str, call: Callable[[], _T]) -> _T:
        """``call``, retried with backoff while the daemon is unreachable or asks for the
        request again (409 ``task_changed``: it saved another change to the task meanwhile);
        other refusals are final. ``RunStopped`` when the run is cancelled meanwhile."""
        delay = self.config.retry_initial
        while True:
            try:
                return call()
            except (TransientError, ConflictError) as exc:
                if isinstance(exc, ConflictError) and exc.code != "task_changed":
                    raise
                log.warning(f"task.{what}_retry", task=run.task_id, error=str(exc))
                if run.cancelled.wait(delay):
                    raise RunStopped(run.stop_reason) from None
                delay = min(delay * 2, self.config.retry_max)

    def _keep_partial(
        self, site: gitwork.Site, job: gitwork.GitJob, worktree: str, run: TaskRun, *, why: str
    ) -> str | None:
        """Commit and push what a run that stops before its end has left (the worker stops,
        or the run waits for an answer), so the task goes on from its partial branch; the
        worktree if it is still there."""
        agent = self.agent_id or "agent"
        task = run.assignment.task
        try:
            commits = gitwork.finish(
                site,
                job,
                worktree,
                author=f"agent-fleet ({agent})",
                email=f"{agent}@agent-fleet.invalid",
                message=f"Work in progress on {task.title}\n\nKept because {why}: task "
                f"{task.id}, attempt {run.assignment.attempt}.",
                timeout=gitwork.LOCAL_TIMEOUT,
            )
        except FleetError as exc:  # nothing to keep, or git failed: hand back without it
            log.info("task.partial_not_kept", task=task.id, reason=str(exc))
            return worktree
        log.info("task.partial_kept", task=task.id, branch=job.branch, commits=len(commits))
        return None

    def _report(
        self,
        run: TaskRun,
        *,
        running: bool = False,
        note: str = "",
        failed: bool = False,
        over_budget: OverBudget | None = None,
        waiting: bool = False,
        spent: tuple[float, int] = (0.0, 0),
        session_id: str | None = None,
    ) -> None:
        """A status update, retried while the daemon is unreachable or asks for it again
        (``task_changed``); other refusals are final."""
        self._retrying(
            run,
            "report",
            lambda: self.api.report(
                run.task_id,
                lease_generation=run.assignment.lease_generation,
                running=running,
                note=note,
                failed=failed,
                over_budget=over_budget is not None,
                spent_usd=over_budget.cost_usd if over_budget is not None else spent[0],
                spent_tokens=over_budget.tokens if over_budget is not None else spent[1],
                waiting=waiting,
                session_id=session_id,
            ),
        )

    def _with_fleet_tools(
        self, argv: list[str], run: TaskRun, token: str, env: dict[str, str]
    ) -> list[str]:
        """``argv`` loading the fleet's MCP server for this run (docs/mcp.md); the server's
        variables go into ``env``, Claude Code's configuration into a 0600 file."""
        tools = FleetTools(
            server=self.config.server,
            token=token,
            command=(sys.executable, "-m", "webhook", "mcp"),
        )
        env.update(tools.env())
        env.update(fleet_tools_env(argv))
        directory = self.config.state_dir / "mcp"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        config_file = directory / f"{run.task_id}.json"
        fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(claude_mcp_config(tools))
        return with_fleet_tools(argv, tools=tools, config_file=str(config_file))

    def _run_cli(
        self, run: TaskRun, prompt: str, worktree: Path
    ) -> tuple[str, str | None, float, int, float]:
        assignment = run.assignment
        adapter = self.config.adapter
        argv = render_command(
            adapter,
            prompt=prompt,
            workdir=str(worktree),
            session_id=assignment.session_id,
            resume=bool(assignment.session_id),
            budget_usd=assignment.task.budget_usd,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_ENV_PREFIX)}
        env.update(render_env(adapter))
        if assignment.task_token:
            argv = self._with_fleet_tools(argv, run, assignment.task_token, env)
        limit = DEFAULT_RUN_LIMIT_S
        if assignment.deadline_at is not None:
            limit = max((assignment.deadline_at - datetime.now(UTC)).total_seconds(), 1.0)
        log_path = self.config.workdir / "logs" / f"{run.task_id}-attempt{assignment.attempt}.log"
        # The daemon estimates a cost the CLI does not report; here only reported costs and
        # tokens are judged while the run streams.
        budget = Budget(usd=assignment.task.budget_usd, tokens=assignment.task.budget_tokens)
        meter = UsageMeter(adapter.parser)

        def watch(line: str) -> str | None:
            meter.feed(line)
            return meter.over(budget)

        local = start_local(
            argv,
            cwd=worktree,
            env=env,
            timeout=limit,
            log_path=log_path,
            watch=watch if budget.limited else None,
        )
        run.attach(local)
        output = local.wait()
        run.check()
        result = parse_output(adapter.parser, output)
        if output.stopped_reason is not None:
            raise OverBudget(
                output.stopped_reason, cost_usd=meter.cost_usd or 0.0, tokens=meter.tokens
            )
        if not result.ok:
            raise StepFailed(result.error or "the agent run failed")
        return result.summary, result.session_id, result.cost_usd, result.tokens, output.duration_s


__all__ = ["DEFAULT_RUN_LIMIT_S", "HANDING_BACK", "TaskRunner", "prompt_for"]
