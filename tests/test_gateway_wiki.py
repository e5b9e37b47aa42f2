"""The gateway's wiki operations against the in-memory Forgejo: names, content, history."""

from __future__ import annotations

import httpx
import pytest

from reconciler.errors import ForgejoConflict, ForgejoError
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.wiki import wiki_web_path
from reconciler.sandbox import ForgejoSandbox, wiki

REPO = "fleet-admin/widgets"


@pytest.fixture
def gateway() -> ForgejoGateway:
    sandbox = ForgejoSandbox()
    sandbox.create_repo(REPO)
    return ForgejoGateway(
        "http://localhost:3000",
        sandbox.admin_token,
        transport=httpx.WSGITransport(app=sandbox.app),
        sleep=lambda _: None,
    )


@pytest.mark.parametrize(
    "title", ["fleet-notes-build-cache", "Home Page", "notes", "a b-c", "100% sure", "x.md"]
)
def test_the_gateway_names_pages_as_forgejo_does(title: str) -> None:
    """``wiki_web_path`` agrees with the sandbox's port of Forgejo's ``TitleToPath``."""
    assert wiki_web_path(title) == wiki.title_to_web_path(title)


def test_a_page_is_written_read_listed_and_edited(gateway: ForgejoGateway) -> None:
    """Text goes in and comes back decoded; an edit is a second commit by the token's user."""
    assert gateway.list_wiki_pages(REPO) == ()
    assert gateway.get_wiki_page(REPO, wiki_web_path("fleet-notes-ci")) is None
    made = gateway.create_wiki_page(REPO, "fleet-notes-ci", "first ✓\n", message="note 1")
    assert made.sub_url == wiki_web_path("fleet-notes-ci")
    assert made.content == "first ✓\n"
    assert made.last_commit is not None and made.last_commit.author == "fleet-admin"
    edited = gateway.edit_wiki_page(REPO, made.sub_url, "first ✓\nsecond\n", message="note 2")
    assert edited.commit_count == 2
    page = gateway.get_wiki_page(REPO, made.sub_url)
    assert page is not None and page.content == "first ✓\nsecond\n"
    assert [p.title for p in gateway.list_wiki_pages(REPO)] == ["fleet-notes-ci"]
    history = gateway.wiki_page_revisions(REPO, made.sub_url)
    assert [c.message for c in history] == ["note 2", "note 1"]


def test_creating_an_existing_page_is_an_error(gateway: ForgejoGateway) -> None:
    """A second ``create_wiki_page`` of a title is refused (the caller must read first)."""
    gateway.create_wiki_page(REPO, "Home", "x", message="")
    with pytest.raises(ForgejoError) as refused:
        gateway.create_wiki_page(REPO, "Home", "y", message="")
    assert refused.value.status == 400
    assert not isinstance(refused.value, ForgejoConflict)
