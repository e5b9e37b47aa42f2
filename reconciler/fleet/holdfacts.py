"""Reading what the holds of ``fleet/holds.py`` decide on, through the Forgejo gateway.

The assignment controller's observe step calls :func:`read_hold_facts` for an open fleet issue
whose task could be placed (new, waiting, or about to be requeued), and :func:`read_blocked`
for a closed issue while some task is held (``Store.has_held_tasks``), so the issues waiting
for it are looked at again at once. Who is trusted
is decided by :func:`trust_on` with the prompt's rule (write access or
``forgejo.trusted_authors``), which the controller passes in. The gateway is asked only what
the rules need, and only when they need it:

* the author's trust, always (one permission read unless the login is configured as trusted);
* the issue's timeline, only when the issue needs approval (an untrusted author, or ``[approval]``
  roles and labels) and the approval label is on it;
* the issue's dependencies, always; and those of its open dependencies in the watched
  repositories, breadth first and at most ``MAX_CYCLE_READS`` issues, only to tell a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from reconciler.errors import ForgejoForbidden, ForgejoNotFound
from reconciler.fleet.holds import IssueRef, approver, find_cycle
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import Issue, IssueState, RepoPermission
from reconciler.settings import LabelsSettings

MAX_CYCLE_READS = 20
"""How many dependencies' own dependencies are read, at most, to find a cycle."""


@dataclass(frozen=True)
class HoldFacts:
    """What was read about one issue for its holds (the defaults hold nothing)."""

    author_trusted: bool = True
    approved_by: str | None = None
    open_dependencies: tuple[IssueRef, ...] = ()
    cycle: tuple[IssueRef, ...] = ()


Judge = Callable[..., bool]
"""``judge(login, permission, allow=…)``: the trust rule (``run/prompt.is_trusted_author``)."""


def trust_on(
    gateway: ForgejoGateway, repo: str, *, allow: AbstractSet[str], judge: Judge
) -> Callable[[str], bool]:
    """Whose word counts on ``repo`` (write access, or a login in ``allow``), each login's
    permission asked for once."""
    allowed = {name.casefold() for name in allow}
    verdicts: dict[str, bool] = {}

    def trusted(login: str) -> bool:
        if login not in verdicts:
            permission: RepoPermission | None = None
            if login and login.casefold() not in allowed:
                try:
                    permission = gateway.get_permission(repo, login)
                except (ForgejoNotFound, ForgejoForbidden):
                    # Not a user, or not one Forgejo tells the bot about: not trusted. A server
                    # error is raised: the reconcile is retried, not decided.
                    permission = None
            verdicts[login] = bool(judge(login, permission, allow=allow))
        return verdicts[login]

    return trusted


def _ref(issue: Issue, default_repo: str) -> IssueRef:
    return IssueRef(issue.repo or default_repo, issue.number)


def _open_dependencies(gateway: ForgejoGateway, ref: IssueRef) -> tuple[IssueRef, ...]:
    return tuple(
        _ref(dep, ref.repo)
        for dep in gateway.list_dependencies(ref.repo, ref.number)
        if dep.state is IssueState.OPEN
    )


def read_hold_facts(
    gateway: ForgejoGateway,
    repo: str,
    issue: Issue,
    *,
    vocabulary: LabelsSettings,
    watched: Sequence[str],
    trusted: Callable[[str], bool],
    always_approval: bool = False,
    dependencies: Sequence[Issue] | None = None,
) -> HoldFacts:
    """The trust, approval and dependency facts of an open issue; ``always_approval``: the
    work needs approval whoever opened it (``[approval]``); ``dependencies``: the issue's
    dependencies when the caller has just read them (else they are read here)."""
    author_trusted = trusted(issue.author)
    approved_by = None
    needs_approval = always_approval or not author_trusted
    if needs_approval and vocabulary.approved in issue.labels:
        approved_by = approver(
            gateway.label_events(repo, issue.number),
            label=vocabulary.approved,
            author=issue.author,
            trusted=trusted,
        )
    start = IssueRef(repo, issue.number)
    open_deps = (
        _open_dependencies(gateway, start)
        if dependencies is None
        else tuple(_ref(d, repo) for d in dependencies if d.state is IssueState.OPEN)
    )
    edges: dict[IssueRef, tuple[IssueRef, ...]] = {start: open_deps}
    frontier = [ref for ref in open_deps if ref.repo in watched]
    reads = 0
    while frontier and reads < MAX_CYCLE_READS:
        ref = frontier.pop(0)
        if ref in edges:
            continue
        edges[ref] = _open_dependencies(gateway, ref)
        reads += 1
        frontier += [nxt for nxt in edges[ref] if nxt.repo in watched and nxt not in edges]
    return HoldFacts(
        author_trusted=author_trusted,
        approved_by=approved_by,
        open_dependencies=open_deps,
        cycle=find_cycle(start, edges) or (),
    )


def read_blocked(
    gateway: ForgejoGateway, repo: str, number: int, *, watched: Sequence[str]
) -> tuple[IssueRef, ...]:
    """The open issues in the watched repositories that depend on ``repo#number``."""
    return tuple(
        _ref(issue, repo)
        for issue in gateway.list_blocks(repo, number)
        if issue.state is IssueState.OPEN and (issue.repo or repo) in watched
    )
