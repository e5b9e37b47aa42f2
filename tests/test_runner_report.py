"""The pull worker's status reports: a 409 ``task_changed`` (the daemon saved another change
to the task meanwhile and asks for the update again) is resent; other refusals are final."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from reconciler.agent.runner import TaskRunner
from reconciler.errors import ConflictError


class FlakyApi:
    """Refuses the first ``refusals`` reports with ``code``, then accepts."""

    def __init__(self, code: str, refusals: int) -> None:
        self.code = code
        self.refusals = refusals
        self.calls = 0

    def report(self, task_id: str, **fields: Any) -> None:
        self.calls += 1
        if self.calls <= self.refusals:
            raise ConflictError(self.code, f"task {task_id}: refused ({self.code})")


def _runner(api: FlakyApi) -> TaskRunner:
    config = SimpleNamespace(retry_initial=0.0, retry_max=0.0)
    return TaskRunner(config, api, agent_id=lambda: "w1", queue_receipt=lambda r: None)  # type: ignore[arg-type]


def _run() -> Any:
    return SimpleNamespace(
        task_id="1-abc",
        assignment=SimpleNamespace(lease_generation=1),
        cancelled=threading.Event(),
        stop_reason="",
    )


def test_a_task_changed_conflict_is_sent_again_until_accepted() -> None:
    """Two 409 task_changed answers, then the report goes through: three calls, no error."""
    api = FlakyApi("task_changed", refusals=2)
    _runner(api)._report(_run(), running=True, note="started")
    assert api.calls == 3


def test_a_stale_lease_conflict_is_final() -> None:
    """409 stale_lease means stop working on the task: raised at once, not resent."""
    api = FlakyApi("stale_lease", refusals=5)
    with pytest.raises(ConflictError):
        _runner(api)._report(_run(), running=True, note="started")
    assert api.calls == 1
