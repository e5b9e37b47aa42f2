"""A task's git work, defined once: worktree → commit → push → find or open the pull request.

Both places that run agents use this module: the ssh executor (``reconciler/run/ssh.py``) on
a host over ssh (``localhost`` included), and the pull worker (``reconciler/agent/worker.py``)
on its own machine. Each step is one POSIX ``sh`` script driving the git command line,
parameterised by environment variables only; a :class:`Site` says where it runs — through
``run_remote`` on a host, or :func:`local_site` here. The same text runs in both places, so
the two paths cannot drift apart.

Why scripts and not gitpython: a host runs agents with nothing but ``sh``, git and the agent
CLI (what the registry's health check verifies), so the remote side needs a command whatever
the local side uses. Writing the steps once as that command, and running it locally too, is
the only single definition; one script per step also keeps a run to a few ssh round trips.

The steps:

1. :func:`prepare` — a per-machine bare clone of the repository
   (``<workdir>/repos/<owner>/<name>.git``, fetched under a lock: tasks of one repository
   share it) and a fresh worktree for the task (``<workdir>/tasks/<task-id>``) on
   ``task/<id>-<slug>``, from the branch as pushed before (a rerun builds on it), else from
   the base branch;
2. :func:`finish` — commit what the agent left, list the commits the branch adds over the
   base, push them, remove the worktree;
3. :func:`hand_in` — the pull request and the commits the receipt names. With commits over the
   base, :func:`find_or_open_pull` — **the one rule for the task's pull request: find the open
   one whose head is the task's branch, or open one; never reuse a closed one.** A pull
   request closed without merging is history (the review controller failed or requeued the
   task because of it); the next attempt's work gets a new one. Without any, the work may
   already have landed: an earlier attempt of the same task pushed it and its pull request
   was merged before that attempt could hand in its receipt (it was killed, or lost its
   lease). The rerun then finds nothing to change; the merged pull request of the task's
   branch and its commits are the receipt. No commit and no merged pull request is a failed
   run.

:func:`remove` takes a worktree away after a run that failed before :func:`finish`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from reconciler.errors import (
    FleetError,
    ForgejoConflict,
    ForgejoRateLimited,
    ForgejoServerError,
)
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import IssueState, PullRequest
from reconciler.run.local import run_script
from reconciler.text import format_duration

# What git steps may take on this machine when no other limit is given (the pull worker).
LOCAL_TIMEOUT = 600.0

OPEN_ATTEMPTS = 3
"""Tries at finding or opening the task's pull request before the run is failed."""

OPEN_RETRY_WAIT = 2.0
"""Seconds between those tries when nothing can be in flight (a refused connection)."""

PREPARE = r"""
set -eu
cache="$WORKDIR/repos/$REPO.git"
wt="$WORKDIR/tasks/$TASK"
mkdir -p "$(dirname "$cache")" "$WORKDIR/tasks"
prepare() {
  if [ ! -f "$cache/HEAD" ]; then
    rm -rf "$cache"
    git clone --quiet --bare "$CLONE_URL" "$cache"
  fi
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

FINISH = r"""
set -eu
cd "$WT"
git add -A
if ! git diff --cached --quiet; then
  git -c user.name="$AUTHOR" -c user.email="$EMAIL" commit --quiet --no-verify -m "$MESSAGE"
fi
echo "COMMITS-BEGIN"
git rev-list "refs/remotes/origin/$BASE..HEAD"
echo "COMMITS-END"
if [ -n "$(git rev-list "refs/remotes/origin/$BASE..HEAD")" ]; then
  git push --quiet origin "HEAD:refs/heads/$BRANCH"
fi
cd /
git -C "$WORKDIR/repos/$REPO.git" worktree remove --force "$WT" || rm -rf "$WT"
"""

REMOVE = r"""
cache="$WORKDIR/repos/$REPO.git"
if [ -d "$cache" ]; then
  git -C "$cache" worktree remove --force "$WT" 2>/dev/null || rm -rf "$WT"
  git -C "$cache" worktree prune 2>/dev/null || true
else
  rm -rf "$WT"
fi
"""


class GitWorkFailed(FleetError):
    """A git step failed (or left nothing to push); the message says which and why."""


class ScriptOutcome(Protocol):
    """How a script ended (``hosts.RemoteResult``, ``local.ScriptResult``)."""

    @property
    def exit_code(self) -> int | None: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...

    @property
    def timed_out(self) -> bool: ...


class RunScript(Protocol):
    def __call__(self, script: str, *, env: Mapping[str, str], timeout: float) -> ScriptOutcome: ...


@dataclass(frozen=True)
class Site:
    """Where the git steps run: how to run a script there, and its name for messages."""

    run: RunScript
    where: str


@dataclass(frozen=True)
class GitJob:
    """One task's git work: the machine's workdir, the repository and the task's branch.

    ``credentials`` are environment variables (see :func:`git_credentials`): never in a URL
    or an argv, which other users can read in the process list.
    """

    workdir: str
    repo: str
    task_id: str
    branch: str
    base: str
    clone_url: str
    credentials: Mapping[str, str]

    def env(self) -> dict[str, str]:
        return {
            **self.credentials,
            "WORKDIR": self.workdir,
            "REPO": self.repo,
            "TASK": self.task_id,
            "BRANCH": self.branch,
            "BASE": self.base,
            "CLONE_URL": self.clone_url,
        }


def git_credentials(login: str, token: str) -> dict[str, str]:
    """Credentials for git over HTTP as environment variables, and no prompts."""
    basic = base64.b64encode(f"{login}:{token}".encode()).decode()
    return {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


def local_site() -> Site:
    """This machine: the pull worker's site."""

    def run(script: str, *, env: Mapping[str, str], timeout: float) -> ScriptOutcome:
        return run_script(script, timeout=timeout, env=env)

    return Site(run=run, where="this machine")


def prepare(site: Site, job: GitJob, *, timeout: float) -> str:
    """Step 1: the task's fresh worktree on its branch; its path on the site."""
    ran = _step(site, PREPARE, job.env(), timeout=timeout, what="prepare the worktree")
    return _value(ran.stdout, "WORKTREE") or f"{job.workdir}/tasks/{job.task_id}"


def finish(
    site: Site,
    job: GitJob,
    worktree: str,
    *,
    author: str,
    email: str,
    message: str,
    timeout: float,
) -> list[str]:
    """Step 2: commit what the agent left, push; the commits the branch adds, newest first.

    Empty when the branch adds nothing over the base: :func:`hand_in` decides whether the
    work already landed or the run failed.
    """
    env = {**job.env(), "WT": worktree, "AUTHOR": author, "EMAIL": email, "MESSAGE": message}
    ran = _step(site, FINISH, env, timeout=timeout, what="commit and push")
    return _between(ran.stdout, "COMMITS-BEGIN", "COMMITS-END")


def remove(site: Site, job: GitJob, worktree: str, *, timeout: float) -> None:
    """Take the task's worktree away (after a failed run); never raises."""
    try:
        site.run(REMOVE, env={**job.env(), "WT": worktree}, timeout=timeout)
    except FleetError:
        pass


def find_or_open_pull(
    gateway: ForgejoGateway,
    *,
    repo: str,
    branch: str,
    base: str,
    title: str,
    issue_number: int,
    summary: str,
    sleep: Callable[[float], None] = time.sleep,
) -> PullRequest:
    """Step 3: the open pull request of the task's branch, or a new one; never a closed one.

    The work is pushed by now, so a Forgejo fault here must not throw it away: a failed
    attempt (a 5xx, a reset, a 429, a create whose answer was lost) is tried again, up to
    :data:`OPEN_ATTEMPTS` times. Opening is not idempotent, so every attempt looks for the open
    pull request first, and after a create whose outcome is unknown it waits the gateway's
    ``settle_after`` — a create still on its way lands before the next look.
    """
    body = f"Closes #{issue_number}\n\n{summary}".strip()
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            pull = gateway.find_pull_by_head(repo, branch)
            if pull is not None and pull.state is IssueState.OPEN:
                return pull
            return gateway.create_pull(repo, head=branch, base=base, title=title, body=body)
        except ForgejoConflict:
            if attempt == OPEN_ATTEMPTS:
                raise
            # Forgejo refuses a second open pull request of one branch: look again.
        except (ForgejoServerError, ForgejoRateLimited) as exc:
            if attempt == OPEN_ATTEMPTS:
                raise
            if isinstance(exc, ForgejoRateLimited):
                sleep(exc.retry_after or OPEN_RETRY_WAIT)
            elif exc.outcome_unknown:
                sleep(gateway.settle_after)
            else:
                sleep(OPEN_RETRY_WAIT)
    raise AssertionError("unreachable: the last attempt returns or raises")


def hand_in(
    gateway: ForgejoGateway,
    *,
    repo: str,
    branch: str,
    base: str,
    title: str,
    issue_number: int,
    summary: str,
    commits: list[str],
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[PullRequest, list[str]]:
    """Step 3: the pull request and the commits a run's receipt names.

    ``commits`` are what :func:`finish` listed over the base. When there are some, the pull
    request is :func:`find_or_open_pull`'s. When there are none, the task's work may have
    landed already (an earlier attempt pushed it and its pull request was merged before that
    attempt handed in a receipt): the merged pull request of the task's branch and its
    commits are returned. Otherwise raises :class:`GitWorkFailed`.
    """
    if commits:
        pull = find_or_open_pull(
            gateway,
            repo=repo,
            branch=branch,
            base=base,
            title=title,
            issue_number=issue_number,
            summary=summary,
            sleep=sleep,
        )
        return pull, commits
    landed = gateway.find_pull_by_head(repo, branch)
    if landed is not None and landed.merged:
        shas = [commit.sha for commit in gateway.list_pull_commits(repo, landed.number)]
        if shas:
            return landed, shas
    raise GitWorkFailed("the agent finished without changing anything on the branch")


def _step(
    site: Site, script: str, env: Mapping[str, str], *, timeout: float, what: str
) -> ScriptOutcome:
    ran = site.run(script, env=env, timeout=timeout)
    if ran.timed_out:
        raise GitWorkFailed(
            f"could not {what} on {site.where}: timed out after {format_duration(timeout)}"
        )
    if ran.exit_code != 0:
        detail = (ran.stderr.strip() or ran.stdout.strip())[-500:]
        raise GitWorkFailed(f"could not {what} on {site.where} (exit {ran.exit_code}): {detail}")
    return ran


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
