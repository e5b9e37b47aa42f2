"""The Forgejo gateway's behaviour against the in-memory Forgejo, in process over WSGI.

Paging, the label vocabulary, exclusive scopes, marker comments, pull request lookups,
webhooks and error mapping, each checked by what Forgejo holds afterwards and by the calls the
gateway made (counted through ``on_call``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from reconciler.errors import ForgejoConflict, ForgejoForbidden, ForgejoNotFound
from reconciler.forgejo import gateway as gateway_module
from reconciler.forgejo.gateway import WRITE_OPERATIONS, ForgejoGateway, marker_tag
from reconciler.forgejo.types import CommitState, IssueState, LabelSpec
from reconciler.sandbox import ForgejoSandbox

BASE_URL = "http://localhost:3000"
REPO = "fleet-admin/widgets"

VOCABULARY = (
    LabelSpec(name="fleet/task", color="0e8a16"),
    LabelSpec(name="status/todo", color="ededed", exclusive=True),
    LabelSpec(name="status/doing", color="1d76db", exclusive=True),
    LabelSpec(name="status/done", color="0e8a16", exclusive=True),
    LabelSpec(name="priority/high", color="b60205", exclusive=True),
)


@dataclass
class CallLog:
    """Every HTTP call the gateway reported, in order."""

    calls: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, operation: str, status: int) -> None:
        self.calls.append((operation, status))

    def mark(self) -> int:
        return len(self.calls)

    def writes_since(self, mark: int) -> list[str]:
        return [op for op, _ in self.calls[mark:] if op in WRITE_OPERATIONS]

    def since(self, mark: int) -> list[str]:
        return [op for op, _ in self.calls[mark:]]


class Clock:
    """A settable clock for the sandbox, so ``updated_at`` values are chosen by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sandbox(clock: Clock) -> ForgejoSandbox:
    forge = ForgejoSandbox(clock=clock)
    forge.create_repo(REPO)
    return forge


@pytest.fixture
def log() -> CallLog:
    return CallLog()


def _gateway(sandbox: ForgejoSandbox, token: str, log: CallLog | None = None) -> ForgejoGateway:
    return ForgejoGateway(
        BASE_URL,
        token,
        transport=httpx.WSGITransport(app=sandbox.app),
        sleep=lambda seconds: pytest.fail(f"gateway slept {seconds}s against a healthy forge"),
        on_call=log,
    )


@pytest.fixture
def gateway(sandbox: ForgejoSandbox, log: CallLog) -> Iterator[ForgejoGateway]:
    with _gateway(sandbox, sandbox.admin_token, log) as gw:
        yield gw


# --- paging and filters -----------------------------------------------------------------------


def test_list_issues_follows_pages_past_fifty(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """120 open issues come back complete, in three calls of at most 50."""
    for n in range(120):
        sandbox.create_issue(REPO, f"task {n}")
    mark = log.mark()
    issues = gateway.list_issues(REPO)
    assert sorted(issue.number for issue in issues) == list(range(1, 121))
    assert log.since(mark) == ["list_issues"] * 3


def test_issue_page_reports_total_and_next_page(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """A single page carries X-Total-Count and the next page from the Link header."""
    for n in range(5):
        sandbox.create_issue(REPO, f"task {n}")
    page = gateway.list_issues_page(REPO, page=2, limit=2)
    assert (page.total_count, page.next_page, len(page.items)) == (5, 3, 2)
    last = gateway.list_issues_page(REPO, page=3, limit=2)
    assert (len(last.items), last.next_page) == (1, None)


def test_labels_filter_keeps_issues_with_all_of_them(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """``labels=`` means ALL the names, as on Forgejo (not ANY as its spec text says)."""
    gateway.ensure_labels(REPO, VOCABULARY)
    both = sandbox.create_issue(REPO, "both", labels=["fleet/task", "priority/high"])
    sandbox.create_issue(REPO, "one", labels=["fleet/task"])
    found = gateway.list_issues(REPO, labels=["fleet/task", "priority/high"])
    assert [issue.number for issue in found] == [both]


def test_unknown_label_filter_names_are_dropped_by_forgejo(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """A filter of only unknown names disappears, so every issue matches: filter client-side."""
    sandbox.create_issue(REPO, "plain")
    assert len(gateway.list_issues(REPO, labels=["no/such-label"])) == 1


def test_since_keeps_issues_updated_at_or_after(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, clock: Clock
) -> None:
    """``since`` filters on updated_at; an issue touched later shows up again."""
    old = sandbox.create_issue(REPO, "old")
    clock.now += timedelta(hours=1)
    cut = clock.now
    new = sandbox.create_issue(REPO, "new")
    assert [i.number for i in gateway.list_issues(REPO, since=cut)] == [new]
    clock.now += timedelta(hours=1)
    gateway.edit_issue(REPO, old, title="old, edited")
    assert sorted(i.number for i in gateway.list_issues(REPO, since=cut)) == [old, new]


def test_pull_requests_are_marked_in_issue_lists(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """Without ``kind`` the issue list includes PRs (``is_pull``); ``kind`` separates them."""
    issue = sandbox.create_issue(REPO, "an issue")
    sandbox.push(REPO, "task/1-x", files={"x.txt": "x\n"}, message="x")
    pull = sandbox.open_pull(REPO, "task/1-x", title="a pull")
    every = {i.number: i.is_pull for i in gateway.list_issues(REPO)}
    assert every == {issue: False, pull: True}
    assert [i.number for i in gateway.list_issues(REPO, kind="pulls")] == [pull]
    assert [i.number for i in gateway.list_issues(REPO, kind="issues")] == [issue]


# --- labels -------------------------------------------------------------------------------------


def test_ensure_labels_creates_the_vocabulary_then_makes_no_writes(
    gateway: ForgejoGateway, log: CallLog
) -> None:
    """First call: one list and five creates; second call: one list and zero writes."""
    mark = log.mark()
    labels = gateway.ensure_labels(REPO, VOCABULARY)
    assert sorted(label.name for label in labels) == sorted(spec.name for spec in VOCABULARY)
    assert log.writes_since(mark) == ["create_label"] * 5
    mark = log.mark()
    gateway.ensure_labels(REPO, VOCABULARY)
    assert log.since(mark) == ["list_labels"]


def test_ensure_labels_fixes_drifted_colour_and_exclusivity(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """A label someone made with the wrong colour and no scope is edited once, in place."""
    made = sandbox.create_label(REPO, "status/todo", color="ff0000", exclusive=False)
    mark = log.mark()
    labels = {label.name: label for label in gateway.ensure_labels(REPO, VOCABULARY[1:2])}
    assert log.writes_since(mark) == ["edit_label"]
    fixed = labels["status/todo"]
    assert (fixed.id, fixed.color, fixed.exclusive, fixed.scope) == (made, "ededed", True, "status")


def test_ensure_labels_refuses_duplicate_names(gateway: ForgejoGateway, log: CallLog) -> None:
    """Two specs with one name are a caller error, found before any call."""
    with pytest.raises(ValueError, match="duplicate"):
        gateway.ensure_labels(REPO, [VOCABULARY[0], VOCABULARY[0]])
    assert log.calls == []


def test_add_labels_applies_the_exclusive_scope(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """Adding status/doing to a status/todo issue leaves only status/doing of that scope."""
    gateway.ensure_labels(REPO, VOCABULARY)
    number = sandbox.create_issue(REPO, "t", labels=["fleet/task", "status/todo"])
    after = gateway.add_labels(REPO, number, ["status/doing"])
    assert sorted(after) == ["fleet/task", "status/doing"]
    assert sorted(gateway.get_issue(REPO, number).labels) == ["fleet/task", "status/doing"]


def test_a_reconciles_add_labels_tells_seen_what_it_will_leave_before_sending_it(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """Before the write, the labels it will leave (the exclusive scope applied) are expected on
    an item already seen, so its webhook is an echo even if delivered before the answer."""
    gateway.ensure_labels(REPO, VOCABULARY)
    number = sandbox.create_issue(REPO, "t", labels=["fleet/task", "status/todo"])
    gateway.get_issue(REPO, number)
    expected: list[tuple[frozenset[str], ...]] = []
    send = gateway._send_labels

    def spy(*args: Any, **kwargs: Any) -> tuple[str, ...]:
        item = gateway.seen.get(REPO, number)
        assert item is not None
        expected.append(item.written)
        return send(*args, **kwargs)

    gateway._send_labels = spy  # type: ignore[method-assign]
    after = gateway.add_labels(REPO, number, ["status/doing", "priority/high"], echo=True)
    assert expected == [(frozenset(after),)]
    assert frozenset(after) == {"fleet/task", "status/doing", "priority/high"}
    # A write that is not a reconcile's (a Matrix command's label) expects nothing: its
    # delivery is reconciled.
    gateway.add_labels(REPO, number, ["status/done"])
    assert expected[-1] == (frozenset(after),)


def test_a_kept_issue_answers_until_something_but_our_label_writes_may_have_changed_it(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """``get_issue(kept=True)``: the last read, with the labels our recorded label writes left
    and the comments we posted counted; any other write of ours, or an invalidation (a fresh
    look: a foreign delivery, the resync), makes it read again."""
    gateway.ensure_labels(REPO, VOCABULARY)
    number = sandbox.create_issue(REPO, "t", labels=["fleet/task", "status/todo"])
    mark = log.mark()
    first = gateway.get_issue(REPO, number, kept=True)
    after = gateway.add_labels(REPO, number, ["status/doing"], echo=True)
    gateway.seen.note_labels(REPO, number, after)  # as the AddLabels action does
    kept = gateway.get_issue(REPO, number, kept=True)
    assert log.since(mark) == ["get_issue", "add_labels"]
    assert (kept.title, sorted(kept.labels)) == (first.title, ["fleet/task", "status/doing"])
    gateway.seen.invalidate(REPO, number)
    gateway.get_issue(REPO, number, kept=True)
    gateway.create_comment(REPO, number, "hello")
    assert gateway.get_issue(REPO, number, kept=True).comments == 1
    assert log.since(mark).count("get_issue") == 2
    gateway.add_labels(REPO, number, ["priority/high"])  # not a reconcile's: not recorded
    assert "priority/high" in gateway.get_issue(REPO, number, kept=True).labels
    assert log.since(mark).count("get_issue") == 3


def test_a_read_that_an_invalidation_overtook_is_not_kept(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """A change's webhook invalidates the issue while a read of it is on its way: that read
    may show the issue from before the change, so it is not kept and the next reconcile (the
    one the webhook asked for) reads again."""
    number = sandbox.create_issue(REPO, "t")
    started = gateway.seen.generation(REPO, number)
    before = gateway.get_issue(REPO, number)  # the read on its way
    gateway.seen.invalidate(REPO, number)  # the webhook of a change lands meanwhile
    gateway.seen.note(REPO, number, before.updated_at, labels=before.labels,
                      state=str(before.state), copy=before, generation=started)  # fmt: skip
    assert gateway.seen.get(REPO, number).copy is None
    mark = log.mark()
    gateway.get_issue(REPO, number, kept=True)
    assert log.since(mark) == ["get_issue"]
    gateway.get_issue(REPO, number, kept=True)
    assert log.since(mark) == ["get_issue"]  # a read nothing overtook is kept


def test_a_kept_pull_request_answers_until_a_fresh_look_or_a_write_of_ours_on_it(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """``get_pull(kept=True)``: the last read while nothing but our label writes followed it;
    an invalidation (a fresh look at its key), our merge, review or comment on it, drop it.
    A kept issue of another number, or the issue view, is not taken for it."""
    sandbox.push(REPO, "feature", files={"a.txt": "a\n"}, message="a")
    number = sandbox.open_pull(REPO, "feature", title="Feature", body="")
    mark = log.mark()
    assert gateway.get_pull(REPO, number, kept=True).head_branch == "feature"
    gateway.get_pull(REPO, number, kept=True)
    assert log.since(mark) == ["get_pull"]
    gateway.get_issue(REPO, number, kept=True)  # the issue view of the PR: a copy of its own
    gateway.get_pull(REPO, number, kept=True)
    assert log.since(mark) == ["get_pull", "get_issue", "get_pull"]

    for drop in (
        lambda: gateway.seen.invalidate(REPO, number),
        lambda: gateway.create_comment(REPO, number, "looked at"),
        lambda: gateway.create_review(REPO, number, event="COMMENT", body="fine"),
        lambda: gateway.merge_pull(REPO, number),
    ):
        gateway.get_pull(REPO, number, kept=True)
        mark = log.mark()
        drop()
        gateway.get_pull(REPO, number, kept=True)
        assert log.since(mark)[-1] == "get_pull", drop
    assert gateway.get_pull(REPO, number, kept=True).merged


def test_a_read_that_our_own_label_write_overtook_is_not_kept(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """Another controller's read of the issue is on its way while a reconcile adds a label:
    that read may show the issue without the label, so it is not kept (a kept read must not
    lose our own write); the copy kept before the write still answers, with the label."""
    gateway.ensure_labels(REPO, VOCABULARY)
    number = sandbox.create_issue(REPO, "t", labels=["fleet/task", "status/todo"])
    gateway.get_issue(REPO, number, kept=True)
    gateway.get_issue(REPO, number, kept=True)
    started = gateway.seen.generation(REPO, number)
    before = gateway.get_issue(REPO, number)  # the read on its way, answered before the write
    after = gateway.add_labels(REPO, number, ["status/doing"], echo=True)
    gateway.seen.note_labels(REPO, number, after)  # as the AddLabels action does
    item = gateway.seen.get(REPO, number)
    assert item is not None and item.copy is not None  # the copy kept before the write
    gateway.seen.note(REPO, number, before.updated_at, labels=before.labels,
                      state=str(before.state), copy=before, generation=started)  # fmt: skip
    item = gateway.seen.get(REPO, number)
    assert item is not None and item.copy is None
    mark = log.mark()
    assert "status/doing" in gateway.get_issue(REPO, number, kept=True).labels
    assert log.since(mark) == ["get_issue"]


def test_add_labels_sends_nothing_already_on_the_issue(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """With the observed labels passed in, an add of present labels makes no call at all."""
    gateway.ensure_labels(REPO, VOCABULARY)
    number = sandbox.create_issue(REPO, "t", labels=["fleet/task", "status/todo"])
    observed = gateway.get_issue(REPO, number).labels
    mark = log.mark()
    assert gateway.add_labels(REPO, number, ["status/todo"], current=observed) == observed
    assert log.since(mark) == []


def test_add_labels_resolves_names_after_a_label_is_recreated(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """A label deleted and made again gets a new id; the stale cached id is noticed and fixed."""
    gateway.ensure_labels(REPO, VOCABULARY)
    number = sandbox.create_issue(REPO, "t", labels=["fleet/task"])
    stale = {label.name: label.id for label in gateway.list_labels(REPO)}
    with httpx.Client(
        transport=httpx.WSGITransport(app=sandbox.app),
        base_url=f"{BASE_URL}/api/v1",
        headers={"Authorization": f"token {sandbox.admin_token}"},
    ) as person:
        assert person.delete(f"/repos/{REPO}/labels/{stale['priority/high']}").status_code == 204
    sandbox.create_label(REPO, "priority/high", color="b60205", exclusive=True)
    assert sorted(gateway.add_labels(REPO, number, ["priority/high"])) == [
        "fleet/task",
        "priority/high",
    ]


def test_add_labels_with_an_unknown_name_writes_nothing(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """An undefined label is a ForgejoNotFound naming it, raised before any write."""
    number = sandbox.create_issue(REPO, "t")
    mark = log.mark()
    with pytest.raises(ForgejoNotFound, match="no/such"):
        gateway.add_labels(REPO, number, ["no/such"])
    assert log.writes_since(mark) == []


def test_remove_and_replace_labels(sandbox: ForgejoSandbox, gateway: ForgejoGateway) -> None:
    """remove_label takes one off (twice is fine); replace_labels sets the exact set."""
    gateway.ensure_labels(REPO, VOCABULARY)
    number = sandbox.create_issue(REPO, "t", labels=["fleet/task", "priority/high"])
    gateway.remove_label(REPO, number, "priority/high")
    gateway.remove_label(REPO, number, "priority/high")
    gateway.remove_label(REPO, number, "never/defined")
    assert gateway.get_issue(REPO, number).labels == ("fleet/task",)
    assert sorted(gateway.replace_labels(REPO, number, ["status/done", "priority/high"])) == [
        "priority/high",
        "status/done",
    ]
    assert gateway.replace_labels(REPO, number, []) == ()


def test_create_issue_with_labels_by_name(gateway: ForgejoGateway) -> None:
    """Label names are resolved to ids; the created issue carries them."""
    gateway.ensure_labels(REPO, VOCABULARY)
    issue = gateway.create_issue(REPO, title="Do it", body="body", labels=["fleet/task"])
    assert (issue.title, issue.body, issue.labels, issue.state) == (
        "Do it",
        "body",
        ("fleet/task",),
        IssueState.OPEN,
    )
    closed = gateway.edit_issue(REPO, issue.number, state="closed")
    assert closed.state is IssueState.CLOSED and closed.closed_at is not None


# --- marker comments --------------------------------------------------------------------------


def test_marker_comment_is_created_then_unchanged_then_edited(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """Same text twice makes one write; new text edits the same comment in place."""
    number = sandbox.create_issue(REPO, "t")
    first, outcome = gateway.upsert_marker_comment(REPO, number, marker="assign", body="agent-1")
    assert outcome == "created"
    assert first.body.startswith(marker_tag("assign"))
    mark = log.mark()
    same, outcome = gateway.upsert_marker_comment(REPO, number, marker="assign", body="agent-1")
    assert (outcome, same.id) == ("unchanged", first.id)
    assert log.writes_since(mark) == []
    edited, outcome = gateway.upsert_marker_comment(REPO, number, marker="assign", body="agent-2")
    assert (outcome, edited.id) == ("edited", first.id)
    bodies = [c.body for c in gateway.list_comments(REPO, number)]
    assert bodies == [f"{marker_tag('assign')}\nagent-2"]


def test_marker_comment_uses_the_callers_comment_list(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """Given the comments already fetched, an unchanged upsert makes no call at all."""
    number = sandbox.create_issue(REPO, "t")
    gateway.upsert_marker_comment(REPO, number, marker="status", body="waiting")
    comments = gateway.list_comments(REPO, number)
    gateway.bot_login()  # looked up once per process, when there are comments to search
    mark = log.mark()
    _, outcome = gateway.upsert_marker_comment(
        REPO, number, marker="status", body="waiting", comments=comments
    )
    assert outcome == "unchanged"
    assert log.since(mark) == []


def test_marker_comment_writes_without_listing_once_known(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """After its first listing (or a create on an issue without comments) the gateway knows
    the issue's marker comments: later upserts of any marker write at once, with no list call
    before them; an unchanged text makes no call at all."""
    number = sandbox.create_issue(REPO, "t")
    mark = log.mark()
    gateway.upsert_marker_comment(REPO, number, marker="task", body="waiting", comments=())
    gateway.upsert_marker_comment(REPO, number, marker="task", body="running")
    gateway.upsert_marker_comment(REPO, number, marker="result", body="done")
    gateway.upsert_marker_comment(REPO, number, marker="result", body="done")
    assert log.since(mark) == ["create_comment", "edit_comment", "create_comment"]
    bodies = [c.body for c in gateway.list_comments(REPO, number)]
    assert bodies == [f"{marker_tag('task')}\nrunning", f"{marker_tag('result')}\ndone"]

    other = sandbox.create_issue(REPO, "u")
    sandbox.comment(REPO, other, "a person's comment")
    mark = log.mark()
    gateway.upsert_marker_comment(REPO, other, marker="task", body="one")
    gateway.upsert_marker_comment(REPO, other, marker="task", body="two")
    assert log.since(mark) == ["list_comments", "create_comment", "edit_comment"]


def test_a_recorded_marker_comment_deleted_by_a_person_is_made_again(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """The record is only this process's view: an edit that finds the comment gone lists the
    comments and creates it again, once."""
    number = sandbox.create_issue(REPO, "t")
    first, _ = gateway.upsert_marker_comment(REPO, number, marker="task", body="one")
    gateway.delete_comment(REPO, first.id)
    mark = log.mark()
    again, outcome = gateway.upsert_marker_comment(REPO, number, marker="task", body="two")
    assert outcome == "created" and again.id != first.id
    assert log.since(mark) == ["edit_comment", "list_comments", "create_comment"]
    assert [c.body for c in gateway.list_comments(REPO, number)] == [f"{marker_tag('task')}\ntwo"]


def test_a_fresh_gateway_lists_before_writing(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """The record lives in memory: another gateway (a restarted process) lists the comments
    before its first write, and finds the comment the first one made."""
    number = sandbox.create_issue(REPO, "t")
    first, _ = gateway.upsert_marker_comment(REPO, number, marker="task", body="one")
    with _gateway(sandbox, sandbox.admin_token, log) as restarted:
        restarted.bot_login()
        mark = log.mark()
        edited, outcome = restarted.upsert_marker_comment(REPO, number, marker="task", body="two")
    assert (outcome, edited.id) == ("edited", first.id)
    assert log.since(mark)[0] == "list_comments"


def test_marker_comments_by_other_people_are_ignored(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """A person quoting the marker does not make their comment the bot's."""
    sandbox.create_user("alice")
    number = sandbox.create_issue(REPO, "t")
    sandbox.comment(REPO, number, f"{marker_tag('assign')}\nfake", author="alice")
    _, outcome = gateway.upsert_marker_comment(REPO, number, marker="assign", body="real")
    assert outcome == "created"
    authors = [c.author for c in gateway.list_comments(REPO, number)]
    assert authors == ["alice", sandbox.admin_login]


def test_marker_must_be_a_plain_word() -> None:
    """A marker that could close the HTML comment early is refused."""
    with pytest.raises(ValueError, match="marker"):
        marker_tag("x -->")


# --- pull requests, branches, statuses -------------------------------------------------------


def _pushed_pull(sandbox: ForgejoSandbox, branch: str, *, title: str = "work") -> int:
    sandbox.push(REPO, branch, files={f"{branch}.txt": "x\n"}, message=f"work on {branch}")
    return sandbox.open_pull(REPO, branch, title=title)


def test_a_merged_pull_request_is_kept_for_who_asks_for_it(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """Once read as merged, a pull request answers ``get_pull(merged_kept=True)`` from memory;
    an open one never does, and a plain ``get_pull`` always reads."""
    number = _pushed_pull(sandbox, "task/9-x")
    assert not gateway.get_pull(REPO, number, merged_kept=True).merged
    mark = log.mark()
    gateway.get_pull(REPO, number, merged_kept=True)
    assert log.since(mark) == ["get_pull"]  # open: read again
    sandbox.merge(REPO, number)
    merged = gateway.get_pull(REPO, number)
    assert merged.merged
    mark = log.mark()
    assert gateway.get_pull(REPO, number, merged_kept=True) == merged
    assert log.since(mark) == []
    gateway.get_pull(REPO, number)
    assert log.since(mark) == ["get_pull"]


def test_find_pull_by_head_prefers_the_open_one(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """A closed earlier PR and an open later one on the same branch: the open one wins."""
    first = _pushed_pull(sandbox, "task/7-x")
    gateway.edit_issue(REPO, first, state="closed")
    second = sandbox.open_pull(REPO, "task/7-x", title="again")
    _pushed_pull(sandbox, "task/8-y")
    found = gateway.find_pull_by_head(REPO, "task/7-x")
    assert found is not None and found.number == second
    assert found.head_branch == "task/7-x" and found.head_repo == REPO
    assert gateway.find_pull_by_head(REPO, "task/9-none") is None
    assert gateway.find_pull_by_head(REPO, "task/7-x", base="other") is None


def test_merge_is_seen_by_is_merged_and_get_pull(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """Before the merge is_merged is False; after it True, with merged_at set."""
    number = _pushed_pull(sandbox, "task/1-x")
    assert gateway.is_merged(REPO, number) is False
    gateway.merge_pull(REPO, number)
    assert gateway.is_merged(REPO, number) is True
    pull = gateway.get_pull(REPO, number)
    assert pull.merged and pull.merged_at is not None and pull.state is IssueState.CLOSED
    with pytest.raises(ForgejoConflict):
        gateway.merge_pull(REPO, number)


def test_pull_commits_files_and_reviews(sandbox: ForgejoSandbox, gateway: ForgejoGateway) -> None:
    """The PR's commits, changed files and reviews parse with their facts."""
    sandbox.create_user("reviewer")
    number = _pushed_pull(sandbox, "task/2-y")
    sandbox.review(REPO, number, "REQUEST_CHANGES", body="rename it", author="reviewer")
    assert [c.title for c in gateway.list_pull_commits(REPO, number)] == ["work on task/2-y"]
    files = gateway.list_pull_files(REPO, number)
    assert [(f.filename, f.status, f.additions) for f in files] == [("task/2-y.txt", "added", 1)]
    reviews = gateway.list_reviews(REPO, number)
    assert [(r.state.value, r.author, r.body) for r in reviews] == [
        ("REQUEST_CHANGES", "reviewer", "rename it")
    ]


def test_pull_changes_are_read_once_per_head_and_merge_base(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """A PR's commits and files are read again only when its head or merge base moved: a
    push to the branch reads them anew, the merge (same head) does not."""
    number = _pushed_pull(sandbox, "task/4-w")
    pull = gateway.get_pull(REPO, number)
    assert pull.merge_base
    mark = log.mark()
    commits, files = gateway.pull_changes(REPO, pull)
    assert [c.title for c in commits] == ["work on task/4-w"]
    assert gateway.pull_changes(REPO, gateway.get_pull(REPO, number)) == (commits, files)
    assert log.since(mark) == ["list_pull_commits", "list_pull_files", "get_pull"]
    sandbox.push(REPO, "task/4-w", files={"more.txt": "more\n"}, message="more work")
    moved = gateway.get_pull(REPO, number)
    mark = log.mark()
    commits, files = gateway.pull_changes(REPO, moved)
    assert [c.title for c in commits] == ["more work", "work on task/4-w"]
    assert sorted(f.filename for f in files) == ["more.txt", "task/4-w.txt"]
    assert log.since(mark) == ["list_pull_commits", "list_pull_files"]
    gateway.merge_pull(REPO, number)
    merged = gateway.get_pull(REPO, number)
    assert merged.merged and merged.head_sha == moved.head_sha
    mark = log.mark()
    assert gateway.pull_changes(REPO, merged) == (commits, files)
    assert log.since(mark) == []


def test_branch_lookup_and_commits(sandbox: ForgejoSandbox, gateway: ForgejoGateway) -> None:
    """A branch with a slash is found with its tip; a missing one is None."""
    sha = sandbox.push(REPO, "task/3-z", files={"z.txt": "z\n"}, message="add z")
    branch = gateway.get_branch(REPO, "task/3-z")
    assert branch is not None and branch.commit_sha == sha
    assert gateway.get_branch(REPO, "task/404") is None
    commits = gateway.list_branch_commits(REPO, "task/3-z", limit=1)
    assert [c.sha for c in commits] == [sha]
    assert gateway.get_commit(REPO, sha).title == "add z"


def test_create_file_commits_on_a_new_branch_and_maps_refusals(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway, log: CallLog
) -> None:
    """create_file returns the new branch's tip; the file existing is a conflict (422) and a
    missing base branch is not found (404), each after one call (no retry)."""
    sha = gateway.create_file(
        REPO, "docs/a.txt", content=b"a\n", message="add a", branch="main", new_branch="task/5-a"
    )
    branch = gateway.get_branch(REPO, "task/5-a")
    assert branch is not None and branch.commit_sha == sha
    assert gateway.get_commit(REPO, sha).title == "add a"
    mark = log.mark()
    with pytest.raises(ForgejoConflict):
        gateway.create_file(REPO, "docs/a.txt", content=b"b\n", message="again", branch="task/5-a")
    with pytest.raises(ForgejoNotFound):
        gateway.create_file(REPO, "docs/b.txt", content=b"b\n", message="b", branch="gone")
    assert log.since(mark) == ["create_file", "create_file"]


def test_combined_status_reports_the_latest_per_context(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """Two contexts, one re-reported: the combined state follows the latest of each."""
    sha = sandbox.push(REPO, "task/4-s", files={"s.txt": "s\n"}, message="s")
    gateway.create_status(REPO, sha, context="ci/test", state="pending")
    gateway.create_status(REPO, sha, context="ci/lint", state=CommitState.SUCCESS)
    combined = gateway.combined_status(REPO, sha)
    assert combined.state is CommitState.PENDING and not combined.is_success
    gateway.create_status(REPO, sha, context="ci/test", state="success", target_url="https://ci/1")
    combined = gateway.combined_status(REPO, sha)
    assert combined.is_success
    test = combined.for_context("ci/test")
    assert test is not None and test.target_url == "https://ci/1"


# --- webhooks ---------------------------------------------------------------------------------


def test_ensure_webhook_is_idempotent_and_fixes_drift(
    gateway: ForgejoGateway, log: CallLog
) -> None:
    """Created once, unchanged on the next call, edited when the wanted events change."""
    events = ("issues", "issue_comment", "pull_request", "push")
    hook, outcome = gateway.ensure_webhook(
        REPO, url="https://f.invalid/h", secret="s", events=events
    )
    assert outcome == "created" and hook.active and hook.content_type == "json"
    mark = log.mark()
    again, outcome = gateway.ensure_webhook(
        REPO, url="https://f.invalid/h", secret="s", events=events
    )
    assert (outcome, again.id) == ("unchanged", hook.id)
    assert log.writes_since(mark) == []
    fixed, outcome = gateway.ensure_webhook(
        REPO, url="https://f.invalid/h", secret="s", events=("issues",)
    )
    assert (outcome, fixed.id) == ("edited", hook.id)
    assert "push" not in fixed.events
    assert len(gateway.list_hooks(REPO)) == 1


# --- identity and errors ----------------------------------------------------------------------


def test_whoami_and_permissions(sandbox: ForgejoSandbox, gateway: ForgejoGateway) -> None:
    """The token's login, and a stranger's lack of write access to the repo."""
    sandbox.create_user("stranger")
    assert gateway.whoami().login == sandbox.admin_login
    assert gateway.get_permission(REPO, sandbox.admin_login).can_push
    assert not gateway.get_permission(REPO, "stranger").can_push


def test_permissions_are_read_once_within_the_cache_time(
    sandbox: ForgejoSandbox, log: CallLog
) -> None:
    """With ``permission_cache``, a login's permission is read once per that many seconds
    (the trust checks of a burst of issues by one author); a change made through the gateway
    counts at once; without it every check reads."""
    sandbox.create_user("stranger")
    now = [1000.0]
    gateway = ForgejoGateway(
        BASE_URL,
        sandbox.admin_token,
        transport=httpx.WSGITransport(app=sandbox.app),
        on_call=log,
        clock=lambda: now[0],
        permission_cache=60.0,
    )
    with gateway:
        mark = log.mark()
        assert not gateway.get_permission(REPO, "stranger").can_push
        now[0] += 59
        assert not gateway.get_permission(REPO, "Stranger").can_push
        assert log.since(mark) == ["get_permission"]
        now[0] += 2
        assert not gateway.get_permission(REPO, "stranger").can_push
        assert log.since(mark) == ["get_permission"] * 2
        gateway.add_collaborator(REPO, "stranger")
        assert gateway.get_permission(REPO, "stranger").can_push
    with _gateway(sandbox, sandbox.admin_token, log) as uncached:
        mark = log.mark()
        uncached.get_permission(REPO, "stranger")
        uncached.get_permission(REPO, "stranger")
        assert log.since(mark) == ["get_permission"] * 2


def test_kept_permissions_are_bounded_and_the_oldest_go_first(
    sandbox: ForgejoSandbox, log: CallLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many logins a burst brings within ``permission_cache``, at most
    ``PERMISSIONS_KEPT`` reads are kept: the oldest read goes, the newest still answer."""
    monkeypatch.setattr(gateway_module, "PERMISSIONS_KEPT", 2)
    for login in ("first", "second", "third"):
        sandbox.create_user(login)
    now = [1000.0]
    gateway = ForgejoGateway(
        BASE_URL,
        sandbox.admin_token,
        transport=httpx.WSGITransport(app=sandbox.app),
        on_call=log,
        clock=lambda: now[0],
        permission_cache=60.0,
    )
    with gateway:
        for login in ("first", "second", "third"):
            gateway.get_permission(REPO, login)
            now[0] += 1
        mark = log.mark()
        gateway.get_permission(REPO, "third")
        gateway.get_permission(REPO, "second")
        assert log.since(mark) == []
        gateway.get_permission(REPO, "first")
        assert log.since(mark) == ["get_permission"]
        assert len(gateway._permissions) == 2


def test_errors_map_onto_the_forgejo_error_family(
    sandbox: ForgejoSandbox, gateway: ForgejoGateway
) -> None:
    """404 → NotFound, 409 → Conflict, 401 → Forbidden, each naming the operation."""
    with pytest.raises(ForgejoNotFound) as missing:
        gateway.get_issue(REPO, 999)
    assert missing.value.operation == "get_issue" and missing.value.status == 404
    with pytest.raises(ForgejoConflict) as taken:
        gateway.create_repo("widgets")
    assert taken.value.status == 409 and "create_repo" in str(taken.value)
    with (
        _gateway(sandbox, "not-a-real-token") as stranger,
        pytest.raises(ForgejoForbidden) as refused,
    ):
        stranger.whoami()
    assert refused.value.status == 401
    assert "not-a-real-token" not in str(refused.value)
