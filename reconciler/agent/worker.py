"""The pull worker: one agent on its own machine taking tasks from the agent-fleet daemon.

``agent-fleet agent run --server URL --token … --adapter claude-code`` calls :func:`serve`
with a :class:`~reconciler.agent.config.WorkerConfig`. The :class:`Worker` then

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
   ``task/<id>-<slug>`` from a per-repository bare clone; runs the adapter's CLI
   (``adapters.start_local``: stdin ``/dev/null``, a per-task log, a wall-clock limit at the
   task's deadline, cancellable); commits what the agent left, pushes, and finds the open pull
   request of its branch or opens one, never reusing a closed one — the git work of
   ``reconciler.run.gitwork``, the same steps the ssh executor runs on a host;
4. **hands in the receipt** through the durable outbox (``reconciler/agent/outbox.py``): on disk
   in the worker's own :class:`~reconciler.store.Store` (``--state-dir``) before it is sent,
   then sent on a thread of its own with backoff until the daemon acknowledges it — exactly
   once across restarts of either side.

A run that fails (the CLI's error, no change to push, a git or Forgejo error) is reported as a
progress note and left to the daemon: an agent cannot set its task ``failed``; the task fails
at its deadline and is retried by the assignment controller.

The worker speaks to the daemon through its client (``reconciler/agent/client.py``, the wire
contract's models over plain HTTP); only the Forgejo gateway talks to Forgejo.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType

import structlog

from reconciler import __version__
from reconciler.agent.client import AgentApi
from reconciler.agent.config import WorkerConfig
from reconciler.agent.outbox import ReceiptOutbox
from reconciler.agent.runner import HANDING_BACK, TaskRunner
from reconciler.agent.taskrun import Execute, TaskRun
from reconciler.errors import (
    ConflictError,
    FleetError,
    ForbiddenError,
    RefusedError,
    TransientError,
    UnauthenticatedError,
)
from reconciler.fleet.api import (
    AgentMetadata,
    HeartbeatAnswer,
    ReceiptRequest,
    RegisterAnswer,
    RegisterRequest,
)
from reconciler.models import TaskId
from reconciler.store import Store
from reconciler.text import format_duration

log = structlog.get_logger(__name__)

# What the worker remembers of its registration, in its own store.
_REGISTRATION = "registration"
# The daemon's defaults, used until its first answer says otherwise.
DEFAULT_HEARTBEAT_S = 60.0
DEFAULT_LEASE_TTL_S = 180.0


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
        self.runner = TaskRunner(
            config, self.api, agent_id=lambda: self.agent_id, queue_receipt=self._queue_receipt
        )
        self._execute = execute or self.runner.execute
        self._store: Store | None = None
        self.outbox: ReceiptOutbox | None = None
        self.agent_id: str | None = None
        self.heartbeat_interval = DEFAULT_HEARTBEAT_S
        self.lease_ttl = DEFAULT_LEASE_TTL_S
        self._last_ack = monotonic()
        self._fenced = False
        self._runs: dict[TaskId, TaskRun] = {}
        self._runs_lock = threading.Lock()
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._outbox_wake = threading.Event()
        self._registering = threading.Lock()
        self.taken = 0

    # --- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Open the state directory (refused if another worker has it) and register."""
        self._store = Store.open(self.config.state_dir)
        self.outbox = ReceiptOutbox(
            self._store,
            send=self.api.submit_receipt,
            monotonic=self._monotonic,
            retry_initial=self.config.retry_initial,
            retry_max=self.config.retry_max,
            on_settled=self._wake.set,
        )
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
                run.cancel(HANDING_BACK)
            # Each run pushes what it has so far before the task is handed back, so the next
            # attempt (another agent's, under a new lease) starts from the partial branch.
            for run in handed_back:
                if run.thread is not None:
                    run.thread.join(timeout=30)
            if handed_back:
                self._hand_back(handed_back)
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

    def register(self, *, retry: bool = True) -> RegisterAnswer:
        """Register (again), trying the saved token first, then the configured credential.

        With ``retry``, an unreachable daemon is tried again with backoff until it answers or
        the worker stops; without, its :class:`TransientError` is raised.
        """
        with self._registering:
            return self._register(retry=retry)

    def _register(self, *, retry: bool) -> RegisterAnswer:
        store = self._require_store()
        saved = store.get_meta(_REGISTRATION)
        saved_id = saved.get("agent_id") if isinstance(saved, dict) else None
        saved_token = saved.get("token") if isinstance(saved, dict) else None
        agent_id = self.config.agent_id or (saved_id if isinstance(saved_id, str) else None)
        credentials: list[str | None] = []
        holds_saved = isinstance(saved_token, str) and saved_id == agent_id
        if holds_saved:
            credentials.append(saved_token if isinstance(saved_token, str) else None)
        if self.config.token is not None:
            credentials.append(self.config.token.get_secret_value())
        if not credentials:
            credentials.append(None)  # open enrolment
        profile = RegisterRequest(
            agent_id=agent_id or None,
            type=self.config.agent_type,
            hostname=self.config.hostname[:253],
            roles=self.config.roles,
            capabilities=self.config.capabilities,
            max_concurrency=self.config.max_concurrency,
            forgejo_login=self.config.forgejo_login,
            metadata=AgentMetadata(version=__version__, workdir=str(self.config.workdir)),
        )
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
                if holds_saved and refused is not None:
                    # The daemon no longer knows the saved token (its state was lost, or the
                    # agent was removed): the configured credential enrolled the agent again.
                    log.warning(
                        "agent.reenrolled",
                        agent_id=registered.agent_id,
                        reason="the daemon no longer knows the saved token; enrolled again "
                        "with the configured credential (the enrolment secret)",
                        refused=refused.code,
                    )
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
                if holds_saved and self.config.token is None:
                    raise type(refused)(
                        refused.code,
                        "the daemon no longer knows this agent's saved token (its state was "
                        "lost, or the agent was removed): start the worker with --token and "
                        "the enrolment secret to enrol it again",
                    ) from refused
                raise refused

    # --- heartbeats and fencing ------------------------------------------------------------

    def running(self) -> list[TaskRun]:
        with self._runs_lock:
            return list(self._runs.values())

    def may_take_work(self) -> bool:
        """Not stopping, and a heartbeat was acknowledged within the lease TTL."""
        return not self.stopping.is_set() and not self._fenced

    def beat_once(self) -> HeartbeatAnswer | None:
        """Send one heartbeat; act on its stop orders; fence when the lease TTL ran out."""
        sent = self._monotonic()
        runs = self.running()
        beat: HeartbeatAnswer | None = None
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
                    f"no heartbeat acknowledged for {format_duration(silent)} "
                    f"(lease TTL {format_duration(self.lease_ttl)})"
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

    # --- receipts --------------------------------------------------------------------------

    def _require_store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the worker's state directory is not open; call open() first")
        return self._store

    def _queue_receipt(self, receipt: ReceiptRequest) -> None:
        if self.outbox is None:
            raise RuntimeError("the worker's state directory is not open; call open() first")
        receipt_id = self.outbox.put(receipt)
        log.info("receipt.queued", receipt=receipt_id, task=receipt.task_id)
        self._outbox_wake.set()

    def pending_receipts(self) -> int:
        return len(self.outbox.pending()) if self.outbox is not None else 0

    @property
    def delivered(self) -> list[str]:
        """Receipt ids the daemon acknowledged since the worker opened its state directory."""
        return self.outbox.delivered if self.outbox is not None else []

    def deliver_once(self, *, force: bool = False) -> float | None:
        """Send the receipts whose retry is due (see :meth:`ReceiptOutbox.deliver_once`)."""
        return self.outbox.deliver_once(force=force) if self.outbox is not None else None

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
    is refused with :class:`~reconciler.errors.StoreLockedError`; a registration the daemon
    refuses (no credential it accepts) is logged as ``agent.register_refused`` and exits 2.
    """
    worker = Worker(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("agent.stopping", signal=signal.Signals(signum).name)
        worker.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            worker.open()
        except RefusedError as exc:
            # A refusal is an answer, not a crash: say why and what to do, exit 2.
            log.error("agent.register_refused", code=exc.code, error=str(exc))
            return 2
        return worker.run(once=once)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        worker.close()


__all__ = ["Worker", "serve"]
