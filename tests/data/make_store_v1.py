"""Writes tests/data/store-v1/: a state store in the format of agent-fleet 0.1.0 (schema
version 1, which recorded no version), for the upgrade test in tests/test_store_schema.py.

It was run once with the 0.1.0 code (``PYTHONPATH=<0.1.0 checkout> python
tests/data/make_store_v1.py DIR``) and its output committed; running it with newer code would
write the newer format, so the committed files, not this script, are the fixture.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from reconciler.models import (
    Agent,
    AgentId,
    AgentStatus,
    Priority,
    Receipt,
    ReceiptId,
    RepoName,
    Task,
    TaskState,
    branch_for,
    task_id_for,
    transition,
)
from reconciler.store import Store

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def main(directory: Path) -> None:
    with Store.open(directory) as store:
        store.put_agent(
            Agent(id=AgentId("build-01"), type="claude-code", status=AgentStatus.ONLINE,
                  roles=("developer",), capabilities=("code:python",), registered_at=NOW)
        )  # fmt: skip
        store.put_agent(
            Agent(id=AgentId("agent-5e1f2a3b"), type="codex", status=AgentStatus.OFFLINE,
                  registered_at=NOW - timedelta(days=2))
        )  # fmt: skip
        tasks = []
        for number, title in ((12, "Add a health endpoint"), (13, "Fix the flaky import"),
                              (14, "Port the parser to Rust"), (15, "Document the CLI")):  # fmt: skip
            tid = task_id_for("acme/widgets", number)
            tasks.append(Task(id=tid, repo=RepoName("acme/widgets"), issue_number=number,
                              title=title, branch=branch_for(tid, title), priority=Priority.HIGH,
                              required_role="developer", created_at=NOW, updated_at=NOW))  # fmt: skip
        for task in tasks:
            store.put_task(task)
        assigned, event = transition(tasks[0], TaskState.ASSIGNED, now=NOW, actor="assignment",
                                     agent_id=AgentId("build-01"), lease_generation=1)  # fmt: skip
        store.record(assigned, event)
        done = tasks[1]
        for state in (TaskState.ASSIGNED, TaskState.RUNNING, TaskState.REVIEW_PENDING):
            changes = (
                {"agent_id": AgentId("build-01"), "lease_generation": 1}
                if state is TaskState.ASSIGNED
                else {}
            )
            done, event = transition(done, state, now=NOW, actor="test", **changes)  # fmt: skip
            store.record(done, event)
        store.put_receipt(
            Receipt(id=ReceiptId(f"{done.id}-l1-r1"), task_id=done.id, agent_id=AgentId("build-01"),
                    lease_generation=1, pr_number=7, branch=done.branch, commits=("a" * 40,),
                    summary="Fixed the import order.", submitted_at=NOW)
        )  # fmt: skip
        done, event = transition(done, TaskState.COMPLETED, now=NOW, actor="receipts")
        store.record(done, event)
        store.archive_terminal(NOW + timedelta(seconds=1))
        store.enqueue("matrix", {"body": "task 12 assigned to build-01"}, now=NOW,
                      message_id="m-0001")  # fmt: skip
        store.set_backoff(("assignment", "acme/widgets", "14"), attempts=2,
                          not_before=NOW + timedelta(minutes=5))  # fmt: skip
        store.set_meta("last_resync:acme/widgets", NOW.isoformat())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
