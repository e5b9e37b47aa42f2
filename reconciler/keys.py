"""Work-queue keys: what the queue holds and the webhook enqueues — never a payload.

A key names one thing a controller reconciles. The controller reads the current state of that
thing itself, so a key queued twice, late, or out of order is harmless.

| controller   | repo          | id                                              |
|--------------|---------------|-------------------------------------------------|
| `registry`   | `""`          | agent id                                        |
| `assignment` | `owner/name`  | issue number, as text                           |
| `review`     | `owner/name`  | pull request number, or `branch:<task branch>`  |
| `receipts`   | `owner/name`  | task id                                         |
| `setup`      | `owner/name`  | `repository` (one set-up key per repository)    |
| `knowledge`  | `owner/name`  | a shared-notes topic, e.g. `build-cache`        |
"""

from __future__ import annotations

from typing import NamedTuple

REGISTRY = "registry"
ASSIGNMENT = "assignment"
REVIEW = "review"
RECEIPTS = "receipts"
SETUP = "setup"
KNOWLEDGE = "knowledge"

BRANCH_PREFIX = "branch:"


class Key(NamedTuple):
    controller: str
    repo: str
    id: str

    def __str__(self) -> str:
        where = f"{self.repo}#" if self.repo else ""
        return f"{self.controller}:{where}{self.id}"


def issue_key(repo: str, number: int) -> Key:
    return Key(ASSIGNMENT, repo, str(number))


def pull_key(repo: str, number: int) -> Key:
    return Key(REVIEW, repo, str(number))


def branch_key(repo: str, branch: str) -> Key:
    """A push to a task branch (or one created or deleted): the review controller finds the
    task by the branch and reads the branch's tip; the task's PR has keys of its own."""
    return Key(REVIEW, repo, f"{BRANCH_PREFIX}{branch}")


def agent_key(agent_id: str) -> Key:
    return Key(REGISTRY, "", agent_id)


def task_key(repo: str, task_id: str) -> Key:
    return Key(RECEIPTS, repo, task_id)


def setup_key(repo: str) -> Key:
    """A repository's set-up: its label vocabulary and its webhook."""
    return Key(SETUP, repo, "repository")
