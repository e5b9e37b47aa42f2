"""Replays the cassettes built from real Forgejo/Gitea recordings through the gateway.

Each cassette in ``cassettes/examples`` holds one recorded response (see its
``metadata.origin``); every one must parse into the gateway's models with the values the
recording carries. The cassettes are replay-only: a request they do not hold fails the test.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import vcr.errors  # type: ignore[import-untyped]

from reconciler.forgejo.types import IssueState, ReviewState
from tests.record_cassettes import (
    DEFAULT_EXAMPLES,
    EXAMPLE_CASSETTES,
    EXAMPLES,
    ExampleCassette,
    ReadableYaml,
    example_cassette_text,
    replay_example,
)

BY_NAME = {spec.example: spec for spec in EXAMPLES}


def _spec(example: str) -> ExampleCassette:
    return BY_NAME[example]


def test_every_example_has_a_committed_cassette() -> None:
    """Each listed example has its cassette in cassettes/examples, and nothing else is there."""
    committed = {path.name for path in EXAMPLE_CASSETTES.glob("*.yaml")}
    assert committed == {spec.cassette.name for spec in EXAMPLES}


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda spec: spec.example)
def test_example_cassette_records_its_origin(spec: ExampleCassette) -> None:
    """Every example cassette names the recording it came from and how its request was made."""
    data = ReadableYaml.deserialize(spec.cassette.read_text(encoding="utf-8"))
    origin = data["metadata"]["origin"]
    assert origin["example"].endswith(spec.example)
    assert origin["source_repository"] and origin["source_commit"]
    assert origin["request"] == spec.request_note


@pytest.mark.skipif(
    not (DEFAULT_EXAMPLES / "SOURCES.md").exists(), reason="recorded examples not checked out"
)
@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda spec: spec.example)
def test_example_cassette_is_what_the_generator_makes(spec: ExampleCassette) -> None:
    """The committed cassette is byte-for-byte the generator's output from the example."""
    assert spec.cassette.read_text(encoding="utf-8") == example_cassette_text(
        spec, DEFAULT_EXAMPLES
    )


@pytest.mark.skipif(
    not (DEFAULT_EXAMPLES / "SOURCES.md").exists(), reason="recorded examples not checked out"
)
def test_every_recorded_api_example_is_covered() -> None:
    """No api-*.json recording is left without a cassette."""
    present = {
        p.name for p in DEFAULT_EXAMPLES.glob("api-*.json") if not p.name.endswith(".headers.json")
    }
    assert present == set(BY_NAME)


def test_issues_page_three_parses_with_its_paging_headers() -> None:
    """Page 3 of 7 issues (limit 2): two closed issues, total 7, the Link header points to 4."""
    with replay_example(_spec("api-issues-list-page3.json")) as gateway:
        page = gateway.list_issues_page(
            "gitea/test_repo", page=3, limit=2, state="all", kind="issues"
        )
    assert [issue.number for issue in page.items] == [4, 2]
    assert page.items[0].title == "what is this repo about?"
    assert page.items[0].state is IssueState.CLOSED
    assert page.items[0].author == "Ghost"
    assert page.items[0].labels == ("Question",)
    assert page.items[0].closed_at == datetime(2020, 9, 1, 15, 49, 34, tzinfo=UTC)
    assert page.items[1].title == "Spam"
    assert page.total_count == 7
    assert page.next_page == 4
    assert not any(issue.is_pull for issue in page.items)


def test_cassette_refuses_a_request_it_did_not_record() -> None:
    """Replay is strict: following the Link to page 4, which was never recorded, fails."""
    with (
        replay_example(_spec("api-issues-list-page3.json")) as gateway,
        pytest.raises(vcr.errors.CannotOverwriteExistingCassetteException, match="page=4"),
    ):
        gateway.list_issues_page("gitea/test_repo", page=4, limit=2, state="all", kind="issues")


def test_pulls_page_parses_merged_fork_and_open_pulls() -> None:
    """The recorded PR page: #13 open from a branch, #12 merged from a fork, Link to page 2."""
    with replay_example(_spec("api-pulls-list-page1.json")) as gateway:
        page = gateway.list_pulls_page("gitea/test_repo", page=1, limit=3, state="all")
    pulls = {pull.number: pull for pull in page.items}
    assert sorted(pulls) == [11, 12, 13]
    assert pulls[13].state is IssueState.OPEN and not pulls[13].merged
    assert pulls[13].head_branch == "6543-patch-1"
    assert pulls[13].head_sha == "0ba7693bfd50d26df7f1b7414e937786c5efb05d"
    assert pulls[13].head_repo == "gitea/test_repo"
    assert pulls[13].base_branch == "master"
    assert pulls[12].merged and pulls[12].merged_at == datetime(2020, 9, 1, 17, 55, 34, tzinfo=UTC)
    assert pulls[12].head_repo == "6543-forks/test_repo"
    assert pulls[12].merge_commit_sha == "827aa28a907853e5ddfa40c8f9bc52471a2685fd"
    assert pulls[11].labels == ("Valid",)
    assert page.total_count == 6
    assert page.next_page == 2


def test_labels_list_ends_by_total_count_without_a_link_header() -> None:
    """Six labels, X-Total-Count 6 and no Link: one call lists them all."""
    calls: list[str] = []
    spec = _spec("api-labels-list.json")
    with replay_example(spec, on_call=lambda operation, status: calls.append(operation)) as gw:
        labels = gw.list_labels("gitea/test_repo")
    assert [label.name for label in labels] == [
        "Bug",
        "Enhancement",
        "Feature",
        "Invalid",
        "Question",
        "Valid",
    ]
    feature = labels[2]
    assert (feature.id, feature.color, feature.description) == (3731, "0052cc", "a feature request")
    assert feature.scope is None
    assert calls == ["list_labels"]


def test_reviews_parse_all_three_states() -> None:
    """PR 7's reviews: a comment, a change request and an approval, with their authors."""
    with replay_example(_spec("api-pull-reviews-list.json")) as gateway:
        reviews = gateway.list_reviews("gitea/test_repo", 7)
    assert [(r.state, r.author) for r in reviews] == [
        (ReviewState.COMMENT, "6543"),
        (ReviewState.REQUEST_CHANGES, "techknowlogick"),
        (ReviewState.APPROVED, "techknowlogick"),
    ]
    assert reviews[1].body == "I think this needs some changes"
    assert reviews[0].commit_id == "187ece0cb6631e2858a6872e5733433bb3ca3b03"
    assert reviews[0].dismissed
    assert reviews[2].submitted_at == datetime(2020, 9, 1, 17, 19, 51, tzinfo=UTC)


def test_single_issue_parses() -> None:
    """Issue #10: title, body, label, author, open, no assignees (``assignees: null``)."""
    with replay_example(_spec("api-issue.json")) as gateway:
        issue = gateway.get_issue("gitea/test_repo", 10)
    assert issue.title == "A'm I allowed to fork it?"
    assert issue.body == "yes but do not create pull requests anymore"
    assert issue.labels == ("Question",)
    assert issue.author == "6543"
    assert issue.assignees == ()
    assert issue.state is IssueState.OPEN and issue.closed_at is None
    assert issue.created_at == datetime(2020, 9, 1, 17, 48, 14, tzinfo=UTC)
    assert issue.html_url == "https://gitea.com/gitea/test_repo/issues/10"
    assert issue.repo == "gitea/test_repo"


def test_single_label_parses() -> None:
    """Label 3731 ("Feature") by id."""
    with replay_example(_spec("api-label.json")) as gateway:
        label = gateway.get_label("gitea/test_repo", 3731)
    assert (label.name, label.color, label.exclusive) == ("Feature", "0052cc", False)


def test_legacy_repository_parses() -> None:
    """A 2017 Gitea repository object: owner from ``login``, default branch, permissions."""
    with replay_example(_spec("api-repo-legacy.json")) as gateway:
        repo = gateway.get_repo("go-gitea/gitea")
    assert (repo.full_name, repo.owner, repo.default_branch) == (
        "go-gitea/gitea",
        "go-gitea",
        "master",
    )
    assert repo.private and repo.can_admin and repo.can_push
    assert repo.clone_url == "https://try.gitea.io/go-gitea/gitea.git"


def test_legacy_branch_parses() -> None:
    """A branch answer whose commit carries ``id`` (not ``sha``) and no protection fields."""
    with replay_example(_spec("api-branch.json")) as gateway:
        branch = gateway.get_branch("go-gitea/gitea", "master")
    assert branch is not None
    assert branch.name == "master"
    assert branch.commit_sha == "f05f642b892d59a0a9ef6a31f6c905a24b5db13a"
    assert branch.commit_message == "update README\n"
    assert not branch.protected


def test_legacy_commit_without_created_uses_the_git_author_date() -> None:
    """A 2018 commit (no top-level ``created``, ``author: null``) still has message and date."""
    sha = "c43399cad8766ee521b873a32c1652407c5a4630"
    with replay_example(_spec("api-commit.json")) as gateway:
        commit = gateway.get_commit("gitea/gitea", sha)
    assert commit.sha == sha
    assert commit.title == "Fixes repo branch endpoint summary (#4893)"
    assert commit.author_name == "Lewis Cowles"
    assert commit.author_login is None
    assert commit.created == datetime(2018, 9, 9, 3, 36, 8, tzinfo=UTC)


def test_legacy_user_parses() -> None:
    """``GET /user`` on an old server."""
    with replay_example(_spec("api-user.json")) as gateway:
        user = gateway.whoami()
    assert (user.login, user.full_name, user.id) == ("jcitizen", "Jane Citizen", 1)
    assert gateway.bot_login() == "jcitizen"


def test_legacy_comment_takes_author_from_username() -> None:
    """A Gogs-era comment has ``username`` only and a -07:00 offset; both parse."""
    with replay_example(_spec("api-comment-legacy.json")) as gateway:
        comment = gateway.get_comment("go-gitea/gitea", 74)
    assert (comment.id, comment.body, comment.author) == (74, "what?", "unknwon")
    assert comment.html_url is None
    assert comment.created_at == datetime(2016, 8, 26, 18, 58, 18, tzinfo=UTC)


def test_api_settings_parse() -> None:
    """code.forgejo.org's paging limits: at most 50 items, 30 by default."""
    with replay_example(_spec("api-settings-api.json")) as gateway:
        settings = gateway.api_settings()
    assert (settings.max_response_items, settings.default_paging_num) == (50, 30)


def test_version_parses() -> None:
    """The version string of code.forgejo.org at recording time."""
    with replay_example(_spec("api-version.json")) as gateway:
        assert gateway.version() == "11.0.0-dev-617-1d1e0ced3e+gitea-1.22.0"
