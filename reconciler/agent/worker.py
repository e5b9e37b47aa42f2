"""The pull worker: one agent on its own machine taking tasks from the agent-fleet daemon.

``agent-fleet agent run --server URL --token … --adapter claude-code`` calls :func:`serve`
with a :class:`WorkerConfig`. The :class:`Worker` then

1. **registers** (or registers its id again) through ``POST /api/v1/agents/register``, with
   the token it saved from its last registration or the credential it was given (the
   enrolment secret, or the agent's current token), and saves the new token in its state
   directory;
2. **heartbeats on its own thread**, never blocked by work: every ``heartbeat_interval_s`` it
   lists the tasks it runs with their leases; a task the reply says to stop is cancelled at
   once (its CLI's whole process group killed), and when no heartbeat has been acknowledged
   for ``lease_ttl_s`` — measured from when that heartbeat was sent — it stops every task and
   takes no new one until a heartbeat gets through again (it fences itself before the
   registry can give its tasks to anyone else);
3. **dequeues** (``POST /api/v1/tasks/dequeue``) while it has a free slot, and runs each task
   on a thread of its own, as the ssh executor (``reconciler/run/ssh.py``) does on a host:
   reports ``running``; reads the issue from Forgejo with its own Forgejo token and builds the
   prompt (``reconciler.run.prompt``: trusted authors only); prepares a git worktree on
   ``task/<id>-<slug>`` from a per-repository bare clone (gitpython); runs the adapter's CLI
   (``adapters.start_local``: stdin ``/dev/null``, a per-task log, a wall-clock limit at the
   task's deadline, cancellable); commits what the agent left, pushes, and opens (or finds) the
   pull request through :class:`~reconciler.forgejo.gateway.ForgejoGateway`;
4. **hands in the receipt** through a durable outbox: the receipt is written to the worker's
   own :class:`~reconciler.store.Store` (``--state-dir``) before it is sent, and a thread of
   its own sends it to ``POST /api/v1/receipts`` with exponential backoff until the daemon
   acknowledges it. The receipt id is chosen once, when it is queued, and the daemon answers a
   receipt it already has with its first answer — so a worker or daemon restart at any point
   delivers every receipt, and exactly once. A receipt the daemon refuses for good (its lease
   is stale, the task is gone) is dropped with an error in the log.

A run that fails (the CLI's error, no change to push, a git or Forgejo error) is reported as a
progress note and left to the daemon: an agent cannot set its task ``failed``; the task fails
at its deadline and is retried by the assignment controller.

The worker speaks to the daemon over plain HTTP (``urllib``); only the Forgejo gateway talks
to Forgejo.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import git
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from reconciler import __version__
from reconciler.errors import (
    ConflictError,
    FleetError,
    ForbiddenError,
    NotFoundError,
    RefusedError,
    TransientError,
    UnauthenticatedError,
)
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.models import Task, TaskId
from reconciler.run.adapters import LocalRun, parse_output, render_command, render_env, start_local
from reconciler.run.prompt import prompt_for_task
from reconciler.settings import BUILTIN_ADAPTERS, AdapterSettings
from reconciler.store import Store

log = structlog.get_logger(__name__)

RECEIPTS_TOPIC = "receipts"
# What the worker remembers of its registration, in its own store.
_REGISTRATION = "registration"
# The daemon's defaults, used until its first answer says otherwise.
DEFAULT_HEARTBEAT_S = 60.0
DEFAULT_LEASE_TTL_S = 180.0
# A run without a deadline from the daemon may take this long.
DEFAULT_RUN_LIMIT_S = 3600.0
# Environment variables the worker itself is configured with; the agent CLI never sees them.
_OWN_ENV_PREFIX = "AGENT_FLEET_"

_Model = TypeVar("_Model", bound=BaseModel)


class RunFailed(FleetError):
    """A step of a task's run failed; the reason goes to the daemon as a progress note."""


class RunStopped(FleetError):
    """The run was cancelled (a stop order, fencing, the worker stopping)."""


# --- configuration -------------------------------------------------------------------------


class WorkerConfig(BaseModel):
    """Everything ``agent-fleet agent run`` is told; see its help for each option."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server: str = Field(pattern=r"^https?://", description="The daemon's URL.")
    token: SecretStr | None = Field(
        default=None,
        description="To register: the enrolment secret, or the agent's current token. Not "
        "needed once the state directory holds a token from an earlier registration.",
    )
    agent_id: str | None = Field(default=None, description="None: the saved id, or a new one.")
    agent_type: str = Field(min_length=1, description="claude-code, codex-cli, …")
    adapter: AdapterSettings
    roles: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    max_concurrency: int = Field(default=1, ge=1, le=1000)
    hostname: str = Field(default_factory=socket.gethostname)
    workdir: Path = Field(description="Clones, worktrees and run logs live here.")
    state_dir: Path = Field(description="The worker's own store: its token and receipt outbox.")
    forgejo_token: SecretStr = Field(description="Forgejo API token: read issues, push, open PRs.")
    poll_interval: float = Field(default=5.0, gt=0, description="Seconds between dequeues.")
    retry_initial: float = Field(default=1.0, gt=0, description="First receipt retry delay.")
    retry_max: float = Field(default=60.0, gt=0, description="Longest receipt retry delay.")
    request_timeout: float = Field(default=30.0, gt=0, description="Seconds per API call.")


def resolve_adapter(
    name: str, *, command: Sequence[str] = (), parser: str | None = None
) -> AdapterSettings:
    """The adapter named ``name`` (claude-code, codex), or a custom ``command`` template with
    ``parser`` (claude-json, codex-jsonl, raw; default raw). Raises ``ValueError`` otherwise."""
    if command:
        return AdapterSettings.model_validate(
            {"command": tuple(command), "parser": parser or "raw"}
        )
    if name not in BUILTIN_ADAPTERS:
        known = ", ".join(sorted(BUILTIN_ADAPTERS))
        raise ValueError(f"unknown adapter {name!r}: use one of {known}, or give a --command")
    adapter = BUILTIN_ADAPTERS[name]
    return adapter if parser is None else adapter.model_copy(update={"parser": parser})


# --- the daemon's answers ------------------------------------------------------------------


class _Shape(BaseModel):
    # A newer daemon may add fields; an older worker reads what it knows.
    model_config = ConfigDict(frozen=True, extra="ignore")


class Registered(_Shape):
    agent_id: str
    token: str
    created: bool
    heartbeat_interval_s: float
    lease_ttl_s: float


class StopOrder(_Shape):
    task_id: str
    code: str
    reason: str


class Beat(_Shape):
    status: str
    heartbeat_interval_s: float
    lease_ttl_s: float
    stop: tuple[StopOrder, ...] = ()


class Assignment(_Shape):
    """``POST /api/v1/tasks/dequeue``'s answer: a task and where its work goes."""

    task: Task
    lease_generation: int
    attempt: int
    repo: str
    issue_number: int
    branch: str
    base_branch: str | None = None
    clone_url: str
    forgejo_url: str
    deadline_at: datetime | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class HeldTask:
    task_id: str
    lease_generation: int


# --- the agent API, as a client ------------------------------------------------------------

_REFUSED_BY_STATUS: Mapping[int, type[RefusedError]] = {
    401: UnauthenticatedError,
    403: ForbiddenError,
    409: ConflictError,
}


class AgentApi:
    """The daemon's agent API over HTTP, with the agent's token once it has one.

    Refusals raise the error module's classes with the daemon's code (401
    :class:`UnauthenticatedError`, 403 :class:`ForbiddenError`, 409 :class:`ConflictError`,
    404 :class:`NotFoundError`, other 4xx :class:`RefusedError`); no answer, 429 or 5xx raise
    :class:`TransientError`.
    """

    def __init__(self, server: str, *, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.token: str | None = None
        self._timeout = timeout

    def call(
        self, path: str, body: Mapping[str, Any], *, credential: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST ``body`` to ``/api/v1{path}``; the status and the JSON answer ({} for 204)."""
        token = credential if credential is not None else self.token
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"{self.server}/api/v1{path}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            raise _refusal(exc.code, exc.read(), url=url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientError(f"cannot reach the daemon at {self.server}: {reason}") from None
        if status == 204 or not raw.strip():
            return status, {}
        try:
            answer = json.loads(raw)
        except ValueError:
            raise TransientError(f"{url} answered {status} with a body that is not JSON") from None
        if not isinstance(answer, dict):
            raise TransientError(f"{url} answered {status} with JSON that is not an object")
        return status, answer

    def register(self, profile: Mapping[str, Any], *, credential: str | None) -> Registered:
        _, answer = self.call("/agents/register", profile, credential=credential or "")
        registered = _parse(Registered, answer, what="the registration")
        self.token = registered.token
        return registered

    def heartbeat(self, tasks: Sequence[HeldTask], *, load: float) -> Beat:
        body = {
            "load": load,
            "version": __version__,
            "tasks": [
                {"task_id": t.task_id, "lease_generation": t.lease_generation} for t in tasks
            ],
        }
        return _parse(Beat, self.call("/agents/heartbeat", body)[1], what="the heartbeat")

    def dequeue(self) -> Assignment | None:
        status, answer = self.call("/tasks/dequeue", {})
        return None if status == 204 else _parse(Assignment, answer, what="the dequeue")

    def report(
        self, task_id: str, *, lease_generation: int, running: bool = False, note: str = ""
    ) -> None:
        body: dict[str, Any] = {"lease_generation": lease_generation}
        if running:
            body["state"] = "running"
        if note:
            body["note"] = note[:4000]
        self.call(f"/tasks/{task_id}/status", body)

    def submit_receipt(self, receipt: Mapping[str, Any]) -> dict[str, Any]:
        return self.call("/receipts", receipt)[1]

    def deregister(self) -> None:
        """Leave the fleet: the daemon requeues this agent's tasks at once."""
        self.call("/agents/deregister", {})


def _refusal(status: int, raw: bytes, *, url: str) -> FleetError:
    try:
        answer = json.loads(raw)
        code, message = str(answer["error"]), str(answer["message"])
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{status}", raw.decode(errors="replace")[:200] or f"HTTP {status}"
    if status == 429 or status >= 500:
        return TransientError(f"{url}: {status} {code}: {message}")
    if status == 404:
        return NotFoundError(f"{url}: {code}: {message}")
    return _REFUSED_BY_STATUS.get(status, RefusedError)(code, f"{url}: {message}")


def _parse(model: type[_Model], answer: Mapping[str, Any], *, what: str) -> _Model:
    try:
        return model.model_validate(answer)
    except ValidationError as exc:
        raise TransientError(f"the daemon's answer to {what} is not understood: {exc}") from None


# --- the receipt outbox --------------------------------------------------------------------


class ReceiptOutbox:
    """Receipts waiting for the daemon's acknowledgement, on disk in the worker's store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def put(self, receipt: Mapping[str, Any]) -> str:
        """Queue a receipt (its ``receipt_id`` is the message id); on disk when this returns."""
        receipt_id = str(receipt["receipt_id"])
        self._store.enqueue(RECEIPTS_TOPIC, receipt, now=datetime.now(UTC), message_id=receipt_id)
        return receipt_id

    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        """(receipt id, receipt) of every receipt not yet acknowledged, oldest first."""
        return [(m.id, dict(m.payload)) for m in self._store.pending(topic=RECEIPTS_TOPIC)]

    def ack(self, receipt_id: str) -> None:
        self._store.ack(receipt_id)


# --- git -----------------------------------------------------------------------------------


def git_env(login: str, token: str) -> dict[str, str]:
    """Credentials for git over HTTP in the environment, not in a URL or argv (which other
    users can read in the process list), and no prompts."""
    basic = base64.b64encode(f"{login}:{token}".encode()).decode()
    return {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


@contextlib.contextmanager
def _repo_lock(cache: Path) -> Iterator[None]:
    """One fetch or worktree change per clone at a time, across threads and processes."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{cache}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def clone_path(workdir: Path, repo: str) -> Path:
    return workdir / "repos" / f"{repo}.git"


def prepare_worktree(
    *,
    workdir: Path,
    repo: str,
    clone_url: str,
    branch: str,
    base: str,
    task_id: str,
    env: Mapping[str, str],
) -> Path:
    """A fresh worktree for the task at ``<workdir>/tasks/<task-id>`` on ``branch``: from the
    branch as pushed before (a rerun builds on it), else from ``base``."""
    cache = clone_path(workdir, repo)
    worktree = workdir / "tasks" / task_id
    worktree.parent.mkdir(parents=True, exist_ok=True)
    with _repo_lock(cache):
        if not (cache / "HEAD").exists():
            shutil.rmtree(cache, ignore_errors=True)
            git.Repo.clone_from(clone_url, cache, bare=True, env=dict(env)).close()
        with git.Repo(cache) as clone:
            # A bare clone maps no remote branches; fetch them all as origin/<branch>.
            clone.git.fetch(
                "--quiet", "--prune", "origin", "+refs/heads/*:refs/remotes/origin/*", env=dict(env)
            )
            if worktree.exists():
                shutil.rmtree(worktree)
            clone.git.worktree("prune")
            start = f"refs/remotes/origin/{branch}"
            try:
                clone.git.rev_parse("--quiet", "--verify", start)
            except git.GitCommandError:
                start = f"refs/remotes/origin/{base}"
            clone.git.worktree("add", "--quiet", "-B", branch, str(worktree), start)
    return worktree


def commit_and_push(
    worktree: Path,
    *,
    base: str,
    branch: str,
    author: tuple[str, str],
    message: str,
    env: Mapping[str, str],
) -> list[str]:
    """Commit what the agent left, push the branch if it adds commits; the commits it adds
    over ``base``, newest first."""
    name, email = author
    identity = {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }
    with git.Repo(worktree) as tree:
        tree.git.add("-A")
        if tree.git.status("--porcelain").strip():
            tree.git.commit("--quiet", "--no-verify", "-m", message, env={**env, **identity})
        commits: list[str] = tree.git.rev_list(f"refs/remotes/origin/{base}..HEAD").split()
        if commits:
            tree.git.push("--quiet", "origin", f"HEAD:refs/heads/{branch}", env=dict(env))
    return commits


def remove_worktree(*, workdir: Path, repo: str, worktree: Path) -> None:
    cache = clone_path(workdir, repo)
    with _repo_lock(cache):
        try:
            with git.Repo(cache) as clone:
                clone.git.worktree("remove", "--force", str(worktree))
        except (git.GitCommandError, git.NoSuchPathError, git.InvalidGitRepositoryError):
            shutil.rmtree(worktree, ignore_errors=True)


# --- the prompt ------------------------------------------------------------------------------


def prompt_for(gateway: ForgejoGateway, task: Task, *, attempt: int) -> str:
    """The task's prompt, built here from the issue with the worker's own Forgejo token."""
    return prompt_for_task(gateway, task, attempt=attempt)


# --- one task's run --------------------------------------------------------------------------


@dataclass
class TaskRun:
    """A task this worker holds, and the means to stop its run from any thread."""

    assignment: Assignment
    cancelled: threading.Event = field(default_factory=threading.Event)
    stop_reason: str = ""
    thread: threading.Thread | None = None
    _local: LocalRun | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def task_id(self) -> TaskId:
        return self.assignment.task.id

    @property
    def held(self) -> HeldTask:
        return HeldTask(self.task_id, self.assignment.lease_generation)

    def attach(self, local: LocalRun) -> None:
        """The CLI started; a cancel from now on kills it."""
        with self._lock:
            self._local = local
        if self.cancelled.is_set():
            local.cancel()

    def cancel(self, reason: str) -> None:
        """Stop the run; its CLI's processes are killed on a thread of their own, so the
        caller (the heartbeat thread) is never held up."""
        with self._lock:
            if self.cancelled.is_set():
                return
            self.stop_reason = reason
            self.cancelled.set()
            local = self._local
        log.warning("task.stopping", task=self.task_id, reason=reason)
        if local is not None:
            threading.Thread(target=local.cancel, name=f"stop-{self.task_id}", daemon=True).start()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise RunStopped(self.stop_reason or "stopped")


Execute = Callable[[TaskRun], None]


# --- the worker ------------------------------------------------------------------------------


class Worker:
    """One pull agent: registration, heartbeats, dequeues, runs and the receipt outbox."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        api: AgentApi | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        execute: Execute | None = None,
    ) -> None:
        self.config = config
        self.api = api or AgentApi(config.server, timeout=config.request_timeout)
        self._monotonic = monotonic
        self._execute = execute or self.execute
        self._store: Store | None = None
        self.outbox: ReceiptOutbox | None = None
        self.agent_id: str | None = None
        self.heartbeat_interval = DEFAULT_HEARTBEAT_S
        self.lease_ttl = DEFAULT_LEASE_TTL_S
        self._last_ack = monotonic()
        self._fenced = False
        self._runs: dict[TaskId, TaskRun] = {}
        self._runs_lock = threading.Lock()
        self._retry: dict[str, tuple[int, float]] = {}  # receipt id → (attempts, next try)
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._outbox_wake = threading.Event()
        self._registering = threading.Lock()
        self.taken = 0
        self.delivered: list[str] = []  # receipt ids the daemon acknowledged

    # --- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Open the state directory (refused if another worker has it) and register."""
        self._store = Store.open(self.config.state_dir)
        self.outbox = ReceiptOutbox(self._store)
        self.register()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def stop(self) -> None:
        """Ask :meth:`run` to end: no new task, runs cancelled, one last receipt delivery."""
        self.stopping.set()
        self._wake.set()
        self._outbox_wake.set()

    def run(self, *, once: bool = False) -> int:
        """Work until :meth:`stop` (or, with ``once``, until one task was run and its receipt
        acknowledged). 0: fine; 1: the ``once`` task produced no receipt."""
        if self._store is None:
            self.open()
        threads = [
            threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True),
            threading.Thread(target=self._outbox_loop, name="receipts", daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            while not self.stopping.is_set():
                if once and self.taken and not self.running() and not self.pending_receipts():
                    break
                if not (once and self.taken) and self.take_once():
                    continue  # another free slot may take another task at once
                self._wake.wait(self.config.poll_interval)
                self._wake.clear()
        finally:
            self.stop()
            handed_back = self.running()
            for run in handed_back:
                run.cancel("the worker is stopping")
            if handed_back:
                self._hand_back(handed_back)
            for run in self.running():
                if run.thread is not None:
                    run.thread.join(timeout=30)
            for thread in threads:
                thread.join(timeout=self.config.request_timeout + 5)
            # One last try; what is still pending stays on disk for the next start.
            self.deliver_once(force=True)
            self.close()
        if once:
            return 0 if self.delivered else 1
        return 0

    def _hand_back(self, runs: Sequence[TaskRun]) -> None:
        """Deregister so the daemon requeues the cancelled runs' tasks now rather than after
        the missed heartbeats; the saved token registers this agent again at its next start."""
        try:
            self.api.deregister()
        except FleetError as exc:
            log.warning("agent.hand_back_failed", error=str(exc))
            return
        log.info("agent.handed_back", tasks=[run.task_id for run in runs])

    # --- registration ----------------------------------------------------------------------

    def register(self, *, retry: bool = True) -> Registered:
        """Register (again), trying the saved token first, then the configured credential.

        With ``retry``, an unreachable daemon is tried again with backoff until it answers or
        the worker stops; without, its :class:`TransientError` is raised.
        """
        with self._registering:
            return self._register(retry=retry)

    def _register(self, *, retry: bool) -> Registered:
        store = self._require_store()
        saved = store.get_meta(_REGISTRATION)
        saved_id = saved.get("agent_id") if isinstance(saved, dict) else None
        saved_token = saved.get("token") if isinstance(saved, dict) else None
        agent_id = self.config.agent_id or (saved_id if isinstance(saved_id, str) else None)
        credentials: list[str | None] = []
        if isinstance(saved_token, str) and saved_id == agent_id:
            credentials.append(saved_token)
        if self.config.token is not None:
            credentials.append(self.config.token.get_secret_value())
        if not credentials:
            credentials.append(None)  # open enrolment
        profile: dict[str, Any] = {
            "type": self.config.agent_type,
            "hostname": self.config.hostname[:253],
            "roles": list(self.config.roles),
            "capabilities": list(self.config.capabilities),
            "max_concurrency": self.config.max_concurrency,
            "mode": "pull",
            "metadata": {"version": __version__, "workdir": str(self.config.workdir)},
        }
        if agent_id:
            profile["agent_id"] = agent_id
        delay = self.config.retry_initial
        while True:
            refused: RefusedError | None = None
            for credential in credentials:
                try:
                    registered = self.api.register(profile, credential=credential)
                except (UnauthenticatedError, ForbiddenError) as exc:
                    refused = exc
                    continue
                except TransientError as exc:
                    if not retry:
                        raise
                    log.warning("agent.register_retry", error=str(exc), retry_in=delay)
                    if self.stopping.wait(delay):
                        raise
                    delay = min(delay * 2, self.config.retry_max)
                    break
                store.set_meta(
                    _REGISTRATION, {"agent_id": registered.agent_id, "token": registered.token}
                )
                self.agent_id = registered.agent_id
                self.heartbeat_interval = registered.heartbeat_interval_s
                self.lease_ttl = registered.lease_ttl_s
                self._last_ack = self._monotonic()
                self._fenced = False
                log.info(
                    "agent.registered",
                    agent_id=registered.agent_id,
                    created=registered.created,
                    heartbeat_interval_s=registered.heartbeat_interval_s,
                )
                return registered
            else:
                assert refused is not None
                raise refused

    # --- heartbeats and fencing ------------------------------------------------------------

    def running(self) -> list[TaskRun]:
        with self._runs_lock:
            return list(self._runs.values())

    def may_take_work(self) -> bool:
        """Not stopping, and a heartbeat was acknowledged within the lease TTL."""
        return not self.stopping.is_set() and not self._fenced

    def beat_once(self) -> Beat | None:
        """Send one heartbeat; act on its stop orders; fence when the lease TTL ran out."""
        sent = self._monotonic()
        runs = self.running()
        beat: Beat | None = None
        try:
            beat = self.api.heartbeat(
                [r.held for r in runs], load=len(runs) / self.config.max_concurrency
            )
        except (UnauthenticatedError, ConflictError) as exc:
            # A new token elsewhere, or deregistered: register again (a heartbeat that was
            # refused acknowledges nothing).
            log.warning("agent.heartbeat_refused", error=str(exc))
            with contextlib.suppress(FleetError):
                self.register(retry=False)
        except FleetError as exc:
            log.warning("agent.heartbeat_failed", error=str(exc))
        if beat is not None:
            self._last_ack = sent
            self.heartbeat_interval = beat.heartbeat_interval_s
            self.lease_ttl = beat.lease_ttl_s
            if self._fenced:
                log.info("agent.unfenced", agent_id=self.agent_id)
            self._fenced = False
            held = {r.task_id: r for r in runs}
            for order in beat.stop:
                run = held.get(TaskId(order.task_id))
                if run is not None:
                    run.cancel(f"the daemon says stop ({order.code}): {order.reason}")
        silent = self._monotonic() - self._last_ack
        if silent >= self.lease_ttl:
            if not self._fenced:
                log.error(
                    "agent.fenced",
                    agent_id=self.agent_id,
                    silent_s=round(silent, 1),
                    lease_ttl_s=self.lease_ttl,
                )
            self._fenced = True
            for run in self.running():
                run.cancel(
                    f"no heartbeat acknowledged for {silent:.0f} s (lease TTL {self.lease_ttl:g} s)"
                )
        return beat

    def _heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            self.beat_once()
            wait = self.heartbeat_interval
            if self._fenced or self._monotonic() - self._last_ack > self.heartbeat_interval:
                wait = min(wait, self.config.retry_initial)  # try harder while cut off
            self.stopping.wait(wait)

    # --- dequeue ---------------------------------------------------------------------------

    def take_once(self) -> bool:
        """Dequeue one task if a slot is free; start its run. Whether a task came."""
        if not self.may_take_work() or len(self.running()) >= self.config.max_concurrency:
            return False
        try:
            assignment = self.api.dequeue()
        except (UnauthenticatedError, ConflictError) as exc:
            log.warning("task.dequeue_refused", error=str(exc))
            with contextlib.suppress(FleetError):
                self.register(retry=False)
            return False
        except FleetError as exc:
            log.warning("task.dequeue_failed", error=str(exc))
            return False
        if assignment is None:
            return False
        run = TaskRun(assignment)
        run.thread = threading.Thread(
            target=self._run_thread, args=(run,), name=f"task-{run.task_id}", daemon=True
        )
        with self._runs_lock:
            self._runs[run.task_id] = run
        self.taken += 1
        log.info(
            "task.taken",
            task=run.task_id,
            lease=assignment.lease_generation,
            branch=assignment.branch,
        )
        run.thread.start()
        return True

    def _run_thread(self, run: TaskRun) -> None:
        try:
            self._execute(run)
        except Exception:  # a crashed run must still free its slot and say so
            log.exception("task.run_crashed", task=run.task_id)
        finally:
            with self._runs_lock:
                self._runs.pop(run.task_id, None)
            self._wake.set()

    # --- one run ---------------------------------------------------------------------------

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
        worktree: Path | None = None
        gateway = ForgejoGateway(
            assignment.forgejo_url, self.config.forgejo_token.get_secret_value()
        )
        try:
            base = assignment.base_branch or gateway.get_repo(task.repo).default_branch
            prompt = prompt_for(gateway, task, attempt=assignment.attempt)
            env = git_env(gateway.bot_login(), self.config.forgejo_token.get_secret_value())
            run.check()
            worktree = prepare_worktree(
                workdir=self.config.workdir,
                repo=task.repo,
                clone_url=assignment.clone_url,
                branch=assignment.branch,
                base=base,
                task_id=task.id,
                env=env,
            )
            run.check()
            summary, session_id, cost, tokens, duration = self._run_cli(run, prompt, worktree)
            run.check()
            agent = self.agent_id or "agent"
            commits = commit_and_push(
                worktree,
                base=base,
                branch=assignment.branch,
                author=(f"agent-fleet ({agent})", f"{agent}@agent-fleet.invalid"),
                message=f"{task.title}\n\n{summary[:2000]}\n\nTask {task.id}, attempt "
                f"{assignment.attempt}.",
                env=env,
            )
            if not commits:
                raise RunFailed("the agent finished without changing anything on the branch")
            run.check()
            pull = gateway.find_pull_by_head(task.repo, assignment.branch)
            if pull is None:
                body = f"Closes #{task.issue_number}\n\n{summary}".strip()
                pull = gateway.create_pull(
                    task.repo, head=assignment.branch, base=base, title=task.title, body=body
                )
            log.info("task.pushed", task=task.id, pr=pull.number, commits=len(commits))
            self._queue_receipt(
                {
                    "receipt_id": f"{task.id}-l{lease}-{uuid.uuid4().hex[:12]}",
                    "task_id": task.id,
                    "lease_generation": lease,
                    "pr_number": pull.number,
                    "branch": assignment.branch,
                    "commits": commits,
                    "summary": summary[:20_000],
                    "cost_usd": cost,
                    "tokens": tokens,
                    "duration_s": round(duration, 3),
                    "session_id": session_id,
                }
            )
        except RunStopped as exc:
            log.info("task.stopped", task=task.id, reason=str(exc))
        except (FleetError, git.GitCommandError, OSError, ValueError) as exc:
            reason = str(exc.stderr).strip() if isinstance(exc, git.GitCommandError) else str(exc)
            log.warning("task.run_failed", task=task.id, reason=reason)
            with contextlib.suppress(FleetError):
                self._report(run, note=f"the run failed: {reason}"[:4000])
        finally:
            gateway.close()
            if worktree is not None:
                with contextlib.suppress(OSError, git.GitCommandError):
                    remove_worktree(workdir=self.config.workdir, repo=task.repo, worktree=worktree)

    def _report(self, run: TaskRun, *, running: bool = False, note: str = "") -> None:
        """A status update, retried while the daemon is unreachable (refusals are final)."""
        delay = self.config.retry_initial
        while True:
            try:
                self.api.report(
                    run.task_id,
                    lease_generation=run.assignment.lease_generation,
                    running=running,
                    note=note,
                )
                return
            except TransientError as exc:
                log.warning("task.report_retry", task=run.task_id, error=str(exc))
                if run.cancelled.wait(delay):
                    raise RunStopped(run.stop_reason) from None
                delay = min(delay * 2, self.config.retry_max)

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
        )
        limit = DEFAULT_RUN_LIMIT_S
        if assignment.deadline_at is not None:
            limit = max((assignment.deadline_at - datetime.now(UTC)).total_seconds(), 1.0)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_ENV_PREFIX)}
        env.update(render_env(adapter))
        log_path = self.config.workdir / "logs" / f"{run.task_id}-attempt{assignment.attempt}.log"
        local = start_local(argv, cwd=worktree, env=env, timeout=limit, log_path=log_path)
        run.attach(local)
        output = local.wait()
        run.check()
        result = parse_output(adapter.parser, output)
        if not result.ok:
            raise RunFailed(result.error or "the agent run failed")
        return result.summary, result.session_id, result.cost_usd, result.tokens, output.duration_s

    # --- receipts --------------------------------------------------------------------------

    def _require_store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the worker's state directory is not open; call open() first")
        return self._store

    def _queue_receipt(self, receipt: Mapping[str, Any]) -> None:
        if self.outbox is None:
            raise RuntimeError("the worker's state directory is not open; call open() first")
        receipt_id = self.outbox.put(receipt)
        log.info("receipt.queued", receipt=receipt_id, task=receipt["task_id"])
        self._outbox_wake.set()

    def pending_receipts(self) -> int:
        return len(self.outbox.pending()) if self.outbox is not None else 0

    def deliver_once(self, *, force: bool = False) -> float | None:
        """Send every receipt whose retry is due (all of them with ``force``); acknowledged
        ones leave the outbox. Seconds until the next retry is due, or None when none waits."""
        if self.outbox is None:
            return None
        now = self._monotonic()
        next_due: float | None = None
        for receipt_id, receipt in self.outbox.pending():
            attempts, due = self._retry.get(receipt_id, (0, now))
            if due > now and not force:
                next_due = due - now if next_due is None else min(next_due, due - now)
                continue
            try:
                answer = self.api.submit_receipt(receipt)
            except (TransientError, UnauthenticatedError) as exc:
                # Unauthenticated: the token changed under us; the heartbeat registers again.
                delay = min(self.config.retry_initial * 2**attempts, self.config.retry_max)
                self._retry[receipt_id] = (attempts + 1, now + delay)
                next_due = delay if next_due is None else min(next_due, delay)
                log.warning(
                    "receipt.retry", receipt=receipt_id, error=str(exc), retry_in=round(delay, 2)
                )
                continue
            except (RefusedError, NotFoundError) as exc:
                log.error(
                    "receipt.refused",
                    receipt=receipt_id,
                    task=receipt.get("task_id"),
                    error=str(exc),
                    message="the daemon will never accept this receipt; it is dropped",
                )
            else:
                log.info(
                    "receipt.delivered",
                    receipt=receipt_id,
                    task=answer.get("task_id"),
                    task_state=answer.get("task_state"),
                )
                self.delivered.append(receipt_id)
            self.outbox.ack(receipt_id)
            self._retry.pop(receipt_id, None)
            self._wake.set()
        if next_due is None and self.outbox.pending():
            next_due = 0.0
        return next_due

    def _outbox_loop(self) -> None:
        while not self.stopping.is_set():
            wait = self.deliver_once()
            self._outbox_wake.wait(self.config.poll_interval if wait is None else wait)
            self._outbox_wake.clear()
        self._wake.set()


# --- the command ---------------------------------------------------------------------------


def serve(config: WorkerConfig, *, once: bool = False) -> int:
    """Run a worker until SIGTERM or SIGINT (or one task, with ``once``); the exit status.

    This is what ``agent-fleet agent run`` calls. A second worker on the same state directory
    is refused with :class:`~reconciler.errors.StoreLockedError`.
    """
    worker = Worker(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("agent.stopping", signal=signal.Signals(signum).name)
        worker.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.open()
        return worker.run(once=once)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        worker.close()


__all__ = [
    "AgentApi",
    "Assignment",
    "Beat",
    "HeldTask",
    "ReceiptOutbox",
    "Registered",
    "RunFailed",
    "RunStopped",
    "TaskRun",
    "Worker",
    "WorkerConfig",
    "commit_and_push",
    "git_env",
    "prepare_worktree",
    "prompt_for",
    "remove_worktree",
    "resolve_adapter",
    "serve",
]
