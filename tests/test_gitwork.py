"""A rerun of a task whose work an earlier attempt already pushed hands that work in.

``reconciler/run/gitwork.py`` is the git path of both kinds of agent: the pull worker runs its
steps on its own machine (``gitwork.local_site``), the ssh executor on a host through
``run_remote`` (``localhost`` here). Each test runs on both sites against the served in-memory
Forgejo: an attempt pushes a commit and opens the pull request, then dies before handing in
its receipt; the rerun's agent changes nothing. Its work is on the branch, or merged (the
branch kept or deleted): the rerun hands in those commits and that pull request instead of
failing with "finished without changing anything".

Opening the pull request, once the work is pushed, survives a create whose answer was lost
(found, not opened twice) and gives up after a bounded number of tries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from reconciler.errors import ForgejoServerError
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.run import gitwork
from reconciler.run.hosts import run_remote
from reconciler.sandbox import ForgejoSandbox
from reconciler.settings import HostSettings
from tests.sandbox_fixtures import DEMO_REPO
from tests.test_gateway_faults import BASE_URL, SETTLE, FaultyTransport, once

BRANCH = "task/t1-add-a-note"
FAULT_REPO = "fleet-admin/widgets"


def executor_site(workdir: Path) -> gitwork.Site:
    """The ssh executor's site for a ``localhost`` host (what ``HostExecutor._site`` makes)."""
    host = HostSettings(
        name="local", address="localhost", adapter="demo", workdir=str(workdir), roles=()
    )

    def run(script: str, *, env: Mapping[str, str], timeout: float) -> gitwork.ScriptOutcome:
        return run_remote(host, script, timeout=timeout, env=dict(env))

    return gitwork.Site(run=run, where=host.name)


SITES = {"pull worker": lambda _: gitwork.local_site(), "ssh executor": executor_site}


@pytest.fixture
def gateway(served_forge: ForgejoSandbox) -> Iterator[ForgejoGateway]:
    with ForgejoGateway(served_forge.url, served_forge.admin_token) as client:
        yield client


def job_for(gateway: ForgejoGateway, token: str, workdir: Path) -> gitwork.GitJob:
    repo = gateway.get_repo(DEMO_REPO)
    return gitwork.GitJob(
        workdir=str(workdir),
        repo=DEMO_REPO,
        task_id="t1",
        branch=BRANCH,
        base=repo.default_branch,
        clone_url=repo.clone_url,
        credentials=gitwork.git_credentials("fleet-admin", token),
    )


def attempt(
    site: gitwork.Site, job: gitwork.GitJob, gateway: ForgejoGateway, number: int
) -> tuple[int, list[str]]:
    """One run: the agent writes the same note each time; the PR number and commits handed in."""
    worktree = gitwork.prepare(site, job, timeout=60)
    (Path(worktree) / "note.md").write_text("# A note\n")
    commits = gitwork.finish(
        site,
        job,
        worktree,
        author="agent-fleet (local)",
        email="local@agent-fleet.invalid",
        message=f"Add a note\n\nTask t1, attempt {number}.",
        timeout=60,
    )
    pull, handed = gitwork.hand_in(
        gateway,
        repo=DEMO_REPO,
        branch=BRANCH,
        base=job.base,
        title="Add a note",
        issue_number=1,
        summary="Wrote note.md",
        commits=commits,
    )
    return pull.number, handed


@pytest.mark.usefixtures("isolated_git")
@pytest.mark.parametrize("site_name", sorted(SITES))
@pytest.mark.parametrize("landed", ["pushed", "merged", "merged, branch deleted"])
def test_a_rerun_that_finds_its_work_already_pushed_hands_it_in(
    gateway: ForgejoGateway,
    served_forge: ForgejoSandbox,
    tmp_path: Path,
    site_name: str,
    landed: str,
) -> None:
    """The rerun changes nothing: it names the earlier attempt's commits and pull request."""
    site = SITES[site_name](tmp_path / "work")
    job = job_for(gateway, served_forge.admin_token, tmp_path / "work")
    first_pull, first_commits = attempt(site, job, gateway, 1)
    assert first_commits
    if landed.startswith("merged"):
        gateway.merge_pull(DEMO_REPO, first_pull, delete_branch=landed.endswith("deleted"))
    # The first attempt died here, before its receipt; the rerun finds the work in Forgejo.
    second_pull, second_commits = attempt(site, job, gateway, 2)
    assert second_pull == first_pull
    assert set(second_commits) == set(first_commits)
    pulls = gateway.list_pulls(DEMO_REPO, state="all")
    assert [p.number for p in pulls if p.head_branch == BRANCH] == [first_pull]


@pytest.mark.usefixtures("isolated_git")
@pytest.mark.parametrize("site_name", sorted(SITES))
def test_a_run_that_changes_nothing_and_finds_no_earlier_work_fails(
    gateway: ForgejoGateway, served_forge: ForgejoSandbox, tmp_path: Path, site_name: str
) -> None:
    """No commit over the base and no merged pull request of the branch: a failed run."""
    site = SITES[site_name](tmp_path / "work")
    job = job_for(gateway, served_forge.admin_token, tmp_path / "work")
    worktree = gitwork.prepare(site, job, timeout=60)
    commits = gitwork.finish(
        site, job, worktree, author="a", email="a@b.invalid", message="nothing", timeout=60
    )
    assert commits == []
    with pytest.raises(gitwork.GitWorkFailed, match="without changing anything"):
        gitwork.hand_in(
            gateway,
            repo=DEMO_REPO,
            branch=BRANCH,
            base=job.base,
            title="Add a note",
            issue_number=1,
            summary="",
            commits=commits,
        )
    assert not gateway.list_pulls(DEMO_REPO, state="all")


# --- opening the pull request when Forgejo faults ---------------------------------------------


@pytest.fixture
def faulty() -> Iterator[tuple[ForgejoSandbox, FaultyTransport, ForgejoGateway]]:
    """The in-memory Forgejo with a pushed task branch, behind a transport that loses writes."""
    sandbox = ForgejoSandbox()
    sandbox.create_repo(FAULT_REPO)
    sandbox.push(FAULT_REPO, BRANCH, files={"note.md": "# A note\n"}, message="Add a note")
    transport = FaultyTransport(httpx.WSGITransport(app=sandbox.app))
    with ForgejoGateway(
        BASE_URL, sandbox.admin_token, transport=transport, settle_after=SETTLE
    ) as client:
        yield sandbox, transport, client
    sandbox.stop()


def open_pull(gateway: ForgejoGateway, sleep: Callable[[float], None]) -> int:
    pull = gitwork.find_or_open_pull(
        gateway,
        repo=FAULT_REPO,
        branch=BRANCH,
        base="main",
        title="Add a note",
        issue_number=1,
        summary="",
        sleep=sleep,
    )
    return pull.number


@pytest.mark.parametrize("mode", ["after", "before"])
def test_a_pull_request_create_whose_answer_is_lost_is_found_not_opened_twice(
    faulty: tuple[ForgejoSandbox, FaultyTransport, ForgejoGateway], mode: str
) -> None:
    """The create times out after it landed, or lands late: the run waits the gateway's
    settle time, looks again, and hands in the one pull request Forgejo holds."""
    _, transport, gateway = faulty
    transport.fail = once("POST", "/pulls", mode)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        transport.release()  # a held create lands while the run waits

    number = open_pull(gateway, sleep)
    assert waits == [SETTLE]
    pulls = gateway.list_pulls(FAULT_REPO, state="all")
    assert [p.number for p in pulls] == [number]


def test_opening_the_pull_request_gives_up_after_a_bounded_number_of_tries(
    faulty: tuple[ForgejoSandbox, FaultyTransport, ForgejoGateway],
) -> None:
    """Every create fails before it lands: OPEN_ATTEMPTS tries, then the run fails."""
    _, transport, gateway = faulty
    transport.fail = once("POST", "/pulls", "before", times=gitwork.OPEN_ATTEMPTS)
    waits: list[float] = []
    with pytest.raises(ForgejoServerError):
        open_pull(gateway, waits.append)
    assert len(waits) == gitwork.OPEN_ATTEMPTS - 1
    assert len(transport.held) == gitwork.OPEN_ATTEMPTS
    assert not gateway.list_pulls(FAULT_REPO, state="all")
