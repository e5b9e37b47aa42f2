"""Reconcile workers survive what a reconcile and its logging throw at them, and the loop's
liveness record (what /readyz checks) notices a worker that died or is stuck."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from reconciler.engine.logs import configure_logging
from reconciler.engine.loop import Loop
from reconciler.engine.reconcile import Result
from reconciler.engine.workqueue import WorkQueue
from reconciler.keys import Key

BAD = Key("fake", "a\udcff/b", "1")
GOOD = Key("fake", "acme/web", "2")


def wait_for(condition: Callable[[], bool], *, timeout: float = 30.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class Recording:
    """Raises for the bad key (with text no strict stream can print), records every key."""

    name = "fake"

    def __init__(self) -> None:
        self.done: list[Key] = []

    def reconcile(self, key: Key) -> Result:
        if not key.repo.isascii():
            raise UnicodeEncodeError("utf-8", key.repo, 1, 2, "surrogates not allowed")
        self.done.append(key)
        return Result()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    configure_logging(level="info", json=True, stream=io.StringIO())


def strict_stream() -> io.TextIOWrapper:
    """A text stream that raises on what UTF-8 cannot encode, as a real stderr does."""
    return io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)


@pytest.mark.parametrize("json_logs", [True, False])
def test_a_worker_survives_errors_holding_text_the_log_cannot_encode(
    json_logs: bool, restore_logging: None
) -> None:
    """Two bad keys in a row (a repository name with a lone surrogate) leave the one worker
    alive: it reconciles the next good key, and the log line is written escaped."""
    stream = strict_stream()
    configure_logging(level="info", json=json_logs, stream=stream)
    controller = Recording()
    loop = Loop((controller,), WorkQueue(backoff_initial=60, backoff_max=60), workers=1)
    loop.start()
    try:
        loop.queue.add(BAD)
        loop.queue.add(Key("fake", "b\udcfe/c", "1"))
        loop.queue.add(GOOD)
        assert wait_for(lambda: controller.done == [GOOD]), "the worker stopped reconciling"
        assert loop.health(stuck_after=60).ok
    finally:
        assert loop.stop(grace=5)
    stream.seek(0)
    written = stream.buffer.getvalue().decode("utf-8")  # type: ignore[attr-defined]
    assert "reconcile.failed" in written and "udcff" in written


def test_a_worker_survives_a_logger_that_raises(restore_logging: None) -> None:
    """Whatever logging raises (here, a processor that fails on every line) never ends a
    worker: keys keep being reconciled."""

    def broken(logger: Any, name: str, event_dict: Any) -> Any:
        raise RuntimeError("the log is broken")

    structlog.configure(processors=[broken], cache_logger_on_first_use=False)
    controller = Recording()
    loop = Loop((controller,), WorkQueue(backoff_initial=60, backoff_max=60), workers=1)
    loop.start()
    try:
        loop.queue.add(BAD)
        loop.queue.add(GOOD)
        assert wait_for(lambda: controller.done == [GOOD]), "the worker stopped reconciling"
        assert loop.health(stuck_after=60).ok, "a worker died"
    finally:
        assert loop.stop(grace=5)


def test_health_reports_a_worker_stuck_on_one_key_and_recovers() -> None:
    """A reconcile running past stuck_after makes the loop unhealthy, naming the worker and
    the key; once it returns the loop is healthy again."""
    release = threading.Event()
    entered = threading.Event()
    now = [1000.0]

    class Hanging:
        name = "fake"

        def reconcile(self, key: Key) -> Result:
            entered.set()
            assert release.wait(timeout=30)
            return Result()

    loop = Loop((Hanging(),), WorkQueue(), workers=2, clock=lambda: now[0])
    assert not loop.health(stuck_after=60).ok  # not started
    loop.start()
    try:
        assert loop.health(stuck_after=60).ok
        loop.queue.add(GOOD)
        assert entered.wait(timeout=30)
        now[0] += 61
        health = loop.health(stuck_after=60)
        assert not health.ok
        assert [(name, key) for name, key, _ in health.stuck] == [("reconcile-1", GOOD)] or [
            key for _, key, _ in health.stuck
        ] == [GOOD]
        assert str(GOOD) in health.describe()
        release.set()
        assert wait_for(lambda: loop.health(stuck_after=60).ok)
    finally:
        release.set()
        assert loop.stop(grace=5)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_health_reports_a_dead_worker() -> None:
    """A worker thread that ended (here, by an exception no worker catches) is counted dead."""

    class Fatal:
        name = "fake"

        def reconcile(self, key: Key) -> Result:
            raise SystemExit("gone")

    loop = Loop((Fatal(),), WorkQueue(), workers=2)
    loop.start()
    try:
        loop.queue.add(GOOD)
        # Two workers for the controller and the one for keys no controller takes.
        assert wait_for(lambda: loop.health(stuck_after=60).alive == 2)
        health = loop.health(stuck_after=60)
        assert not health.ok and "2 of 3 workers alive" in health.describe()
    finally:
        loop.stop(grace=1)
