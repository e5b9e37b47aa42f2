"""Running an agent CLI on this machine: stdin from ``/dev/null``, output streamed to a per-task
log and kept in bounded memory, a wall-clock timeout and cancelling that stop the whole process
group. ``reconciler.run.adapters`` re-exports :func:`run_local`, :func:`start_local` and
:class:`LocalRun`; the pull worker runs its tasks with them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from reconciler.run.parsers import RunOutput

# Seconds between the TERM sent to a run's process group and the KILL that follows.
KILL_GRACE_S = 5.0
# How much output is kept in memory (the log file gets all of it). Parsers need the start of
# Codex's stream (thread id) and the end of every stream (result, usage, last message).
STDOUT_HEAD_BYTES = 1 << 20
STDOUT_TAIL_BYTES = 16 << 20
STDERR_TAIL_BYTES = 64 << 10
# Longest stdout line a watcher is shown (a longer one is cut: usage events are short).
WATCHED_LINE_BYTES = 1 << 20

LineWatcher = Callable[[str], str | None]
"""Shown each line of stdout as it arrives; a reason returned stops the run (a budget meter)."""


# --- running locally ----------------------------------------------------------------------


class _Capture:
    """One output stream of a run: kept in memory (head and tail) and copied to the log."""

    def __init__(self, *, head: int, tail: int) -> None:
        self._head_limit = head
        self._tail_limit = tail
        self._head = bytearray()
        self._tail = bytearray()
        self.truncated = False

    def add(self, chunk: bytes) -> None:
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        self._tail += chunk
        if len(self._tail) > self._tail_limit:
            del self._tail[: len(self._tail) - self._tail_limit]
            self.truncated = True

    def text(self) -> str:
        gap = b"\n" if self.truncated and self._head else b""
        return bytes(self._head + gap + self._tail).decode("utf-8", errors="replace")


class LocalRun:
    """A CLI started by :func:`start_local`; :meth:`wait` for its output, or :meth:`cancel` it.

    The process leads its own process group, so stopping it stops everything it started
    (Codex runs its native binary and the agent's shell commands as children).
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes] | None,
        *,
        timeout: float,
        log: IO[bytes] | None,
        kill_grace: float,
        ended: RunOutput | None = None,
        watch: LineWatcher | None = None,
    ) -> None:
        self._process = process
        self._timeout = timeout
        self._log = log
        self._kill_grace = kill_grace
        self._started = time.monotonic()
        self._stop_lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._cancelled = threading.Event()
        self._timed_out = False
        self._stdout = _Capture(head=STDOUT_HEAD_BYTES, tail=STDOUT_TAIL_BYTES)
        self._stderr = _Capture(head=0, tail=STDERR_TAIL_BYTES)
        self._output = ended
        self._watch = watch
        self._stopped_reason: str | None = None
        self._readers: list[threading.Thread] = []
        if process is not None:
            self._readers = [
                self._reader(process.stdout, self._stdout, "stdout"),
                self._reader(process.stderr, self._stderr, "stderr"),
            ]

    @property
    def pid(self) -> int | None:
        """The process id, which is also the id of the run's process group (None: not started)."""
        return self._process.pid if self._process is not None else None

    def cancel(self) -> None:
        """Stop the run from any thread; returns once its processes are gone.

        :meth:`wait` then returns a :class:`RunOutput` with ``cancelled`` set.
        """
        self._cancelled.set()
        if self._process is not None:
            self._stop_group(self._process)

    def wait(self) -> RunOutput:
        """Wait for the run to end, or stop it at its wall-clock timeout; the output."""
        if self._output is not None:
            return self._output
        process = self._process
        assert process is not None  # a run that did not start has its output already
        remaining = self._timeout - (time.monotonic() - self._started)
        try:
            process.wait(timeout=max(remaining, 0.0))
        except subprocess.TimeoutExpired:
            self._timed_out = not self._cancelled.is_set()
            self._stop_group(process)
        duration = time.monotonic() - self._started
        # Whatever the CLI left running in the background ends with the run; it would also
        # keep the output pipes open.
        _kill_group(process.pid, signal.SIGKILL)
        _wait_until_group_gone(process.pid, limit=self._kill_grace)
        for reader in self._readers:
            reader.join(timeout=self._kill_grace)
        if self._log is not None:
            self._log.close()
        self._output = RunOutput(
            exit_code=process.returncode,
            stdout=self._stdout.text(),
            stderr=self._stderr.text(),
            timed_out=self._timed_out,
            duration_s=duration,
            cancelled=self._cancelled.is_set(),
            timeout_s=self._timeout,
            stopped_reason=self._stopped_reason,
        )
        return self._output

    def stop(self, reason: str) -> None:
        """Stop the run for ``reason`` (from any thread, once); :meth:`wait` then returns a
        :class:`RunOutput` whose ``stopped_reason`` says it, and the parsers fail the run
        with it."""
        with self._stop_lock:
            if self._stopped_reason is not None:
                return
            self._stopped_reason = reason
        if self._process is not None:
            self._stop_group(self._process)

    def _watch_lines(self, chunk: bytes, pending: bytearray) -> None:
        """Show the watcher every complete line of stdout; stop the run on its reason."""
        if self._watch is None or self._stopped_reason is not None:
            return
        pending += chunk
        *lines, rest = bytes(pending).split(b"\n")
        pending[:] = rest[-WATCHED_LINE_BYTES:]
        for line in lines:
            reason = self._watch(line[:WATCHED_LINE_BYTES].decode("utf-8", errors="replace"))
            if reason is not None:
                # Stopped from its own thread so this reader keeps draining the pipe.
                threading.Thread(
                    target=self.stop, args=(reason,), name="agent-run-stop", daemon=True
                ).start()
                return

    def _stop_group(self, process: subprocess.Popen[bytes]) -> None:
        """TERM the process group, KILL it after the grace period, reap the leader."""
        with self._stop_lock:
            if process.poll() is None:
                _kill_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=self._kill_grace)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(process.pid, signal.SIGKILL)
            process.wait()
            _wait_until_group_gone(process.pid, limit=self._kill_grace)

    def _reader(self, stream: IO[bytes] | None, capture: _Capture, name: str) -> threading.Thread:
        def pump() -> None:
            if stream is None:
                return
            pending = bytearray()
            with stream:
                while chunk := os.read(stream.fileno(), 65536):
                    capture.add(chunk)
                    if name == "stdout":
                        self._watch_lines(chunk, pending)
                    if self._log is not None:
                        with self._log_lock:
                            self._log.write(chunk)
                            self._log.flush()

        thread = threading.Thread(target=pump, name=f"agent-run-{name}", daemon=True)
        thread.start()
        return thread


def start_local(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str],
    timeout: float,
    log_path: str | Path | None = None,
    kill_grace: float = KILL_GRACE_S,
    watch: LineWatcher | None = None,
) -> LocalRun:
    """Start ``argv`` in ``cwd`` with exactly ``env``, and return the handle of the run.

    stdin is ``/dev/null`` (Codex appends piped stdin to its prompt; Claude waits for it).
    Output is appended to ``log_path`` (its directory is created) as it arrives. A command
    that cannot be started (not found, not executable, no such ``cwd``) gives a run that has
    already ended with exit code 127, as in a shell, so every executor reports it the same way.
    ``watch`` is shown each line of stdout as it arrives; when it returns a reason the run is
    stopped (:meth:`LocalRun.stop`) — how a budget is enforced while the run streams.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    if not argv:
        raise ValueError("empty command")
    log: IO[bytes] | None = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 (closed when the run ends)
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        message = f"cannot start {argv[0]!r} in {str(cwd)!r}: {exc.strerror or exc}\n"
        if log is not None:
            log.write(message.encode())
            log.close()
        not_started = RunOutput(
            exit_code=127,
            stdout="",
            stderr=message,
            timed_out=False,
            duration_s=time.monotonic() - started,
            timeout_s=timeout,
        )
        return LocalRun(None, timeout=timeout, log=None, kill_grace=kill_grace, ended=not_started)
    return LocalRun(process, timeout=timeout, log=log, kill_grace=kill_grace, watch=watch)


def run_local(
    argv: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str],
    timeout: float,
    log_path: str | Path | None = None,
    cancel: threading.Event | None = None,
) -> RunOutput:
    """Run ``argv`` to the end (see :func:`start_local`); setting ``cancel`` stops it early."""
    run = start_local(argv, cwd=cwd, env=env, timeout=timeout, log_path=log_path)
    if cancel is None or run.pid is None:
        return run.wait()
    done = threading.Event()

    def watch() -> None:
        # Wakes on either event; `done` lets the watcher end with the run.
        while not done.is_set():
            if cancel.wait(0.05):
                run.cancel()
                return

    watcher = threading.Thread(target=watch, name=f"run-{run.pid}-cancel", daemon=True)
    watcher.start()
    try:
        return run.wait()
    finally:
        done.set()
        watcher.join()


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone (or its id was reused by someone else's group)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the process group ``pgid``, read from ``/proc``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _wait_until_group_gone(pgid: int, *, limit: float) -> None:
    # A killed process vanishes from /proc a moment after the signal, and processes that are
    # not our children give no event to wait on, hence the short polling.
    if not Path("/proc/self/stat").exists():
        return
    deadline = time.monotonic() + limit
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
