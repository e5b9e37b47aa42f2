"""The sandbox forge's wiki behaves as Forgejo's does where clients depend on it.

Page names and their web paths (dashes kept with the ``.-`` marker, spaces as dashes), content
as base64, a missing page as 404, the last commit and commit count of a page, editing a
missing page creating it, renames, revisions newest first, and write access.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from reconciler.sandbox import ForgejoSandbox, wiki

if TYPE_CHECKING:
    from tests.sandbox_fixtures import ManualClock

pytest_plugins = ("tests.sandbox_fixtures",)

WIKI = "/repos/fleet-admin/demo/wiki"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(page: dict[str, Any]) -> str:
    return base64.b64decode(page["content_base64"]).decode()


def _new(client: httpx.Client, title: str, text: str, message: str = "") -> dict[str, Any]:
    answer = client.post(
        f"{WIKI}/new", json={"title": title, "content_base64": _b64(text), "message": message}
    )
    assert answer.status_code == 201, answer.text
    page: dict[str, Any] = answer.json()
    return page


@pytest.mark.parametrize(
    ("title", "web_path", "file"),
    [
        ("Home", "Home", "Home.md"),
        ("Home Page", "Home-Page", "Home-Page.md"),
        ("fleet-notes-build-cache", "fleet-notes-build-cache.-", "fleet-notes-build-cache.-.md"),
        ("100% Free", "100%25-Free", "100%25-Free.md"),
        ("  spaced  ", "spaced", "spaced.md"),
        ("", "unnamed", "unnamed.md"),
    ],
)
def test_page_titles_map_to_web_paths_and_files_as_forgejo_maps_them(
    title: str, web_path: str, file: str
) -> None:
    """Spaces become dashes; a title holding a dash is kept whole and marked with ``.-``."""
    assert wiki.title_to_web_path(title) == web_path
    assert wiki.git_path(web_path) == file
    assert wiki.web_path_of_file(file) == web_path
    if title.strip():
        assert wiki.display_title(web_path) == title.strip()


def test_a_new_page_reads_back_with_its_content_and_last_commit(
    forge_http: httpx.Client, forge_clock: ManualClock
) -> None:
    """``POST /wiki/new`` answers 201 with the page; GET by its sub_url returns the same."""
    made = _new(forge_http, "fleet-notes-build-cache", "# Build cache\n", "first note")
    assert made["title"] == "fleet-notes-build-cache"
    assert made["sub_url"] == "fleet-notes-build-cache.-"
    assert made["html_url"].endswith("/fleet-admin/demo/wiki/fleet-notes-build-cache.-")
    assert made["commit_count"] == 1
    assert made["last_commit"]["message"] == "first note"
    assert made["last_commit"]["author"]["name"] == "fleet-admin"
    assert made["last_commit"]["author"]["date"].endswith("Z")
    answer = forge_http.get(f"{WIKI}/page/{made['sub_url']}")
    assert answer.status_code == 200
    assert _text(answer.json()) == "# Build cache\n"
    assert answer.json()["last_commit"]["sha"] == made["last_commit"]["sha"]


def test_missing_pages_and_a_wiki_never_written_answer_404(forge_http: httpx.Client) -> None:
    """No wiki yet: the list is 404; then an unknown page is 404 and the list holds the rest."""
    assert forge_http.get(f"{WIKI}/pages").status_code == 404
    assert forge_http.get(f"{WIKI}/page/Home").status_code == 404
    _new(forge_http, "Home", "hello")
    assert forge_http.get(f"{WIKI}/page/Other").status_code == 404
    listed = forge_http.get(f"{WIKI}/pages")
    assert [p["title"] for p in listed.json()] == ["Home"]
    assert listed.headers["X-Total-Count"] == "1"


def test_adding_an_existing_page_is_refused_and_edit_writes_a_new_commit(
    forge_http: httpx.Client, forge_clock: ManualClock
) -> None:
    """A second ``new`` of a name is 400; PATCH keeps the name, and counts the commit."""
    _new(forge_http, "Home", "one")
    again = forge_http.post(f"{WIKI}/new", json={"title": "Home", "content_base64": _b64("x")})
    assert again.status_code == 400
    forge_clock.advance(60)
    edited = forge_http.patch(f"{WIKI}/page/Home", json={"content_base64": _b64("two")})
    assert edited.status_code == 200
    assert _text(edited.json()) == "two"
    assert edited.json()["commit_count"] == 2
    assert edited.json()["last_commit"]["message"] == "Update 'Home'"
    revisions = forge_http.get(f"{WIKI}/revisions/Home").json()
    assert revisions["count"] == 2
    assert [c["message"] for c in revisions["commits"]] == ["Update 'Home'", "Add 'Home'"]


def test_editing_a_missing_page_creates_it_and_a_title_renames(forge_http: httpx.Client) -> None:
    """As in Forgejo, PATCH of a page that is not there writes it; ``title`` moves the page."""
    made = forge_http.patch(f"{WIKI}/page/Fresh", json={"content_base64": _b64("new")})
    assert made.status_code == 200
    assert _text(made.json()) == "new"
    moved = forge_http.patch(
        f"{WIKI}/page/Fresh", json={"title": "Moved Page", "content_base64": _b64("moved")}
    )
    assert moved.json()["sub_url"] == "Moved-Page"
    assert forge_http.get(f"{WIKI}/page/Fresh").status_code == 404
    assert [p["sub_url"] for p in forge_http.get(f"{WIKI}/pages").json()] == ["Moved-Page"]


def test_bad_content_and_reserved_names_are_400_and_delete_is_204_then_404(
    forge_http: httpx.Client,
) -> None:
    """Content that is not base64 and reserved names are refused; a deleted page is gone."""
    bad = forge_http.post(f"{WIKI}/new", json={"title": "x", "content_base64": "not base64!"})
    assert bad.status_code == 400
    reserved = forge_http.post(f"{WIKI}/new", json={"title": "_pages", "content_base64": ""})
    assert reserved.status_code == 400
    _new(forge_http, "Gone", "bye")
    assert forge_http.delete(f"{WIKI}/page/Gone").status_code == 204
    assert forge_http.delete(f"{WIKI}/page/Gone").status_code == 404
    assert forge_http.get(f"{WIKI}/pages").json() == []


def test_writing_needs_write_access_and_reading_does_not(
    forge: ForgejoSandbox, forge_http: httpx.Client, forge_as: Callable[[str], httpx.Client]
) -> None:
    """A user without write access reads the wiki of a public repository but cannot write."""
    _new(forge_http, "Home", "hello")
    reader = forge_as(forge.create_user("reader"))
    assert reader.get(f"{WIKI}/page/Home").status_code == 200
    write = {"title": "Mine", "content_base64": _b64("x")}
    assert reader.post(f"{WIKI}/new", json=write).status_code == 403
    assert reader.patch(f"{WIKI}/page/Home", json=write).status_code == 403
    assert reader.delete(f"{WIKI}/page/Home").status_code == 403


def test_the_page_list_is_in_file_name_order_and_paged(forge_http: httpx.Client) -> None:
    """Pages come in the order of the wiki's tree; ``limit`` and ``page`` slice it."""
    for title in ("b-two", "a-one", "Zed"):
        _new(forge_http, title, title)
    everything = forge_http.get(f"{WIKI}/pages").json()
    assert [p["title"] for p in everything] == ["Zed", "a-one", "b-two"]
    second = forge_http.get(f"{WIKI}/pages", params={"limit": 2, "page": 2}).json()
    assert [p["title"] for p in second] == ["b-two"]


def test_wiki_writes_are_announced_as_forgejo_wiki_events(
    forge: ForgejoSandbox, forge_http: httpx.Client, webhook_receiver: Any
) -> None:
    """A hook subscribed to ``wiki`` gets created, edited and deleted, naming the page by its
    web path and carrying the commit message as ``comment``."""
    with forge.state.lock:
        repo = forge.state.repo("fleet-admin/demo", forge.state.user_named("fleet-admin"))
        forge.state.create_hook(
            repo,
            repo.owner,
            type="forgejo",
            config={"url": webhook_receiver.url, "content_type": "json", "secret": "s"},
            events=["wiki"],
            active=True,
        )
    _new(forge_http, "fleet-notes-ci", "one", "first note")
    forge_http.patch(f"{WIKI}/page/fleet-notes-ci.-", json={"content_base64": _b64("two")})
    forge_http.delete(f"{WIKI}/page/fleet-notes-ci.-")
    forge.flush_webhooks()
    seen = [(d.event, d.json()["action"], d.json()["page"]) for d in forge.deliveries]
    assert seen == [
        ("wiki", "created", "fleet-notes-ci.-"),
        ("wiki", "edited", "fleet-notes-ci.-"),
        ("wiki", "deleted", "fleet-notes-ci.-"),
    ]
    first = forge.deliveries[0].json()
    assert first["comment"] == "first note"
    assert first["repository"]["full_name"] == "fleet-admin/demo"
    assert first["sender"]["login"] == "fleet-admin"
