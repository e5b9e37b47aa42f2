"""The sandbox forge answers in the shapes Forgejo's OpenAPI document declares.

One scenario calls every route the sandbox serves; every JSON body is validated against the
schema the spec declares for that path, method and status (Swagger 2.0 turned into JSON Schema),
with objects closed, so a property the spec does not declare fails the test and the fake cannot
drift from Forgejo's shapes.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]  # no stubs installed
import pytest

from reconciler.sandbox import ForgejoSandbox

pytest_plugins = ("tests.sandbox_fixtures",)

from tests.forgejo_data import SPEC_PATH

REPO = "/repos/fleet-admin/demo"

# Properties real Forgejo sends that its spec does not declare, each with its reason.
UNDECLARED_BUT_REAL = {
    # modules/structs/user.go: User.MarshalJSON adds "username", a copy of login, for old clients.
    "User": {"username": {"type": "string"}},
}


@dataclass(frozen=True)
class Exchange:
    """One request and its answer, as recorded from the client."""

    method: str
    path: str
    status: int
    body: bytes


def _spec() -> dict[str, Any]:
    if not SPEC_PATH.exists():
        pytest.skip(f"the Forgejo spec is not at {SPEC_PATH}")
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return spec


def _closed(schema: Any) -> Any:
    """Swagger 2.0 schema -> JSON Schema: objects closed, Go's nil allowed for non-scalars."""
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {k: _closed(v) for k, v in schema.items() if not k.startswith("x-")}
    if "properties" in schema:
        if "additionalProperties" not in schema:
            converted["additionalProperties"] = False
        converted["properties"] = {
            name: _nullable(_closed(prop)) for name, prop in schema["properties"].items()
        }
    return converted


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    # Go marshals nil pointers, slices and maps as null; booleans and numbers never are.
    if schema.get("type") in ("boolean", "integer", "number"):
        return schema
    return {"anyOf": [schema, {"type": "null"}]}


def _definitions(spec: dict[str, Any]) -> dict[str, Any]:
    definitions = copy.deepcopy(spec["definitions"])
    for name, extra in UNDECLARED_BUT_REAL.items():
        definitions[name]["properties"].update(extra)
    return {name: _closed(schema) for name, schema in definitions.items()}


def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


FORMATS = jsonschema.FormatChecker(formats=())
FORMATS.checks("date-time", raises=())(_date_time)


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.sub(r"\{[^}]+\}", "\x00", template)
    pattern = re.escape(pattern).replace("\x00", ".+")
    return re.compile(f"^/api/v1{pattern}$")


class SpecIndex:
    """Finds the spec's path template and declared response schema for a recorded exchange."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.definitions = _definitions(spec)
        # Most literal text first, so /pulls/{index}/commits wins over /pulls/{base}/{head}.
        self.templates: list[str] = sorted(
            spec["paths"], key=lambda t: len(re.sub(r"\{[^}]+\}", "", t)), reverse=True
        )
        self.regexes = {t: _template_regex(t) for t in self.templates}

    def template(self, method: str, path: str) -> str:
        for template in self.templates:
            if (
                self.regexes[template].match(path)
                and method.lower() in self.spec["paths"][template]
            ):
                return template
        raise AssertionError(f"{method} {path} is not a path of the Forgejo spec")

    def response(self, template: str, method: str, status: int) -> dict[str, Any] | None:
        declared = self.spec["paths"][template][method.lower()]["responses"]
        response = declared.get(str(status))
        if response is None:
            return None
        if "$ref" in response:
            response = self.spec["responses"][response["$ref"].rsplit("/", 1)[-1]]
        return dict(response)

    def validate(self, schema: dict[str, Any], body: Any, where: str) -> None:
        root = {"definitions": self.definitions, **_closed(schema)}
        validator = jsonschema.Draft7Validator(root, format_checker=FORMATS)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        assert not errors, f"{where}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}"
            for e in errors[:5]
        )


def _normal(template: str) -> str:
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", template)


def _served_routes(app: Any) -> set[tuple[str, str]]:
    return {(route.method, _normal(route.rule.removeprefix("/api/v1"))) for route in app.routes}


@pytest.fixture
def recorded(forge: ForgejoSandbox) -> Iterator[tuple[httpx.Client, list[Exchange]]]:
    """An admin client on the sandbox that records every exchange."""
    exchanges: list[Exchange] = []

    def record(response: httpx.Response) -> None:
        response.read()
        exchanges.append(
            Exchange(
                response.request.method,
                response.request.url.path,
                response.status_code,
                response.content,
            )
        )

    client = httpx.Client(
        transport=httpx.WSGITransport(app=forge.app),
        base_url="http://localhost:3000/api/v1",
        headers={"Authorization": f"token {forge.admin_token}"},
        event_hooks={"response": [record]},
    )
    with client:
        yield client, exchanges


def _scenario(forge: ForgejoSandbox, client: httpx.Client) -> None:
    """Calls every route, with success and typical refusals."""
    expect: Callable[[httpx.Response, int], Any] = _expect
    forge.create_user("reviewer")
    forge.create_user("outsider")
    expect(client.get("/version"), 200)
    expect(client.get("/settings/api"), 200)
    expect(client.get("/user"), 200)
    expect(client.post("/user/repos", json={"name": "other", "auto_init": True}), 201)
    expect(client.post("/user/repos", json={"name": "other"}), 409)
    expect(client.post("/user/repos", json={"description": "no name"}), 422)
    expect(client.get("/user/repos"), 200)
    expect(client.get(REPO), 200)
    expect(client.get("/repos/fleet-admin/missing"), 404)

    task = expect(
        client.post(f"{REPO}/labels", json={"name": "fleet/task", "color": "00ff00"}), 201
    )
    todo = expect(
        client.post(
            f"{REPO}/labels", json={"name": "status/todo", "color": "#aaa", "exclusive": True}
        ),
        201,
    )
    doing = expect(
        client.post(
            f"{REPO}/labels", json={"name": "status/doing", "color": "bbbbbb", "exclusive": True}
        ),
        201,
    )
    expect(client.post(f"{REPO}/labels", json={"name": "x", "color": "nope"}), 422)
    expect(client.get(f"{REPO}/labels"), 200)
    expect(client.get(f"{REPO}/labels/{task['id']}"), 200)
    expect(client.get(f"{REPO}/labels/9999"), 404)
    expect(client.patch(f"{REPO}/labels/{task['id']}", json={"description": "work"}), 200)

    expect(client.post(f"{REPO}/issues", json={"title": "One", "labels": [task["id"]]}), 201)
    expect(client.post(f"{REPO}/issues", json={"body": "no title"}), 422)
    expect(client.get(f"{REPO}/issues", params={"state": "all", "limit": 1}), 200)
    expect(client.get(f"{REPO}/issues", params={"since": "yesterday"}), 422)
    expect(client.get(f"{REPO}/issues/1"), 200)
    expect(client.get(f"{REPO}/issues/77"), 404)
    expect(
        client.patch(f"{REPO}/issues/1", json={"title": "One!", "assignees": ["fleet-admin"]}), 201
    )
    expect(client.get(f"{REPO}/issues/1/labels"), 200)
    expect(client.post(f"{REPO}/issues/1/labels", json={"labels": [todo["id"]]}), 200)
    expect(
        client.put(f"{REPO}/issues/1/labels", json={"labels": ["status/doing", task["id"]]}), 200
    )
    expect(client.delete(f"{REPO}/issues/1/labels/status%2Fdoing"), 204)
    expect(client.delete(f"{REPO}/issues/1/labels/no-such-label"), 422)
    expect(client.delete(f"{REPO}/issues/1/labels"), 204)
    expect(client.delete(f"{REPO}/labels/{doing['id']}"), 204)

    expect(client.post(f"{REPO}/issues", json={"title": "Two"}), 201)
    expect(client.post(f"{REPO}/issues/1/dependencies", json={"index": 2}), 201)
    expect(client.post(f"{REPO}/issues/1/dependencies", json={"index": 2}), 409)
    expect(client.post(f"{REPO}/issues/1/dependencies", json={"index": 1}), 400)
    expect(client.post(f"{REPO}/issues/2/dependencies", json={"index": 1}), 400)
    expect(client.post(f"{REPO}/issues/1/dependencies", json={"index": 99}), 404)
    expect(client.get(f"{REPO}/issues/1/dependencies"), 200)
    expect(client.get(f"{REPO}/issues/2/blocks"), 200)
    expect(client.request("DELETE", f"{REPO}/issues/1/dependencies", json={"index": 2}), 200)
    expect(client.post(f"{REPO}/issues/2/blocks", json={"owner": "fleet-admin", "index": 1}), 201)
    expect(client.request("DELETE", f"{REPO}/issues/2/blocks", json={"index": 1}), 200)
    expect(client.get(f"{REPO}/issues/1/timeline"), 200)

    comment = expect(client.post(f"{REPO}/issues/1/comments", json={"body": "hello"}), 201)
    expect(client.get(f"{REPO}/issues/1/comments", params={"since": "2000-01-01T00:00:00Z"}), 200)
    expect(client.get(f"{REPO}/issues/comments/{comment['id']}"), 200)
    expect(client.patch(f"{REPO}/issues/comments/{comment['id']}", json={"body": "bye"}), 200)
    expect(client.delete(f"{REPO}/issues/comments/{comment['id']}"), 204)
    expect(client.get(f"{REPO}/issues/comments/{comment['id']}"), 404)

    forge.push("fleet-admin/demo", "task/1-one", files={"one.py": "print(1)\n"}, message="one")
    added = {"content": "cHJpbnQoMikK", "new_branch": "task/2-two"}
    expect(client.post(f"{REPO}/contents/two/two.py", json=added), 201)
    expect(client.post(f"{REPO}/contents/two/two.py", json={**added, "branch": "task/2-two"}), 422)
    expect(client.post(f"{REPO}/contents/three.py", json={**added, "branch": "gone"}), 404)
    expect(client.get(f"{REPO}/contents/two/two.py", params={"ref": "task/2-two"}), 200)
    expect(client.get(f"{REPO}/contents/two/two.py"), 404)
    pull = expect(
        client.post(
            f"{REPO}/pulls", json={"head": "task/1-one", "base": "main", "title": "Do one"}
        ),
        201,
    )
    expect(
        client.post(f"{REPO}/pulls", json={"head": "task/1-one", "base": "main", "title": "again"}),
        409,
    )
    expect(client.post(f"{REPO}/pulls", json={"head": "nope", "base": "main", "title": "x"}), 404)
    number = pull["number"]
    expect(client.get(f"{REPO}/pulls", params={"state": "all"}), 200)
    expect(client.get(f"{REPO}/pulls/{number}"), 200)
    expect(client.get(f"{REPO}/pulls/1"), 404)
    expect(client.patch(f"{REPO}/pulls/{number}", json={"body": "Closes #1"}), 201)
    expect(client.get(f"{REPO}/pulls/main/task/1-one"), 200)
    expect(client.get(f"{REPO}/pulls/main/nothing"), 404)
    expect(client.get(f"{REPO}/pulls/{number}/commits"), 200)
    expect(client.get(f"{REPO}/pulls/{number}/files"), 200)
    expect(client.get(f"{REPO}/pulls/{number}/merge"), 404)
    expect(client.post(f"{REPO}/pulls/{number}/reviews", json={"event": "APPROVED"}), 422)
    with _as(forge, client, "reviewer"):
        expect(
            client.post(
                f"{REPO}/pulls/{number}/reviews", json={"event": "REQUEST_CHANGES", "body": "fix"}
            ),
            200,
        )
    expect(client.get(f"{REPO}/pulls/{number}/reviews"), 200)

    head = pull["head"]["sha"]
    # No statuses yet: Forgejo's zero-valued CombinedStatus must fit the spec too.
    expect(client.get(f"{REPO}/commits/{head}/status"), 200)
    expect(client.post(f"{REPO}/statuses/{head}", json={"state": "success", "context": "ci"}), 201)
    expect(client.post(f"{REPO}/statuses/{head}", json={"state": "bogus"}), 422)
    expect(client.post(f"{REPO}/statuses/{'f' * 40}", json={"state": "success"}), 404)
    expect(client.get(f"{REPO}/statuses/{head}"), 200)
    expect(client.get(f"{REPO}/commits/task/1-one/statuses"), 200)
    expect(client.get(f"{REPO}/commits/task/1-one/status"), 200)
    expect(client.get(f"{REPO}/commits/{'f' * 40}/status"), 404)

    expect(client.get(f"{REPO}/branches"), 200)
    expect(client.get(f"{REPO}/branches/task/1-one"), 200)
    expect(client.get(f"{REPO}/branches/missing"), 404)
    expect(client.get(f"{REPO}/commits", params={"sha": "task/1-one", "limit": 1}), 200)
    expect(client.get(f"{REPO}/git/commits/{head}"), 200)
    expect(client.get(f"{REPO}/git/commits/{'e' * 40}"), 404)

    merge = {"Do": "merge", "delete_branch_after_merge": True}
    expect(client.post(f"{REPO}/pulls/{number}/merge", json=merge), 200)
    expect(client.post(f"{REPO}/pulls/{number}/merge", json={"Do": "merge"}), 405)
    expect(client.get(f"{REPO}/pulls/{number}/merge"), 204)
    # The head branch is gone: the PR's head ref is refs/pull/N/head, its label the branch.
    expect(client.get(f"{REPO}/pulls/{number}"), 200)
    expect(client.get(f"{REPO}/branches/task/1-one"), 404)

    forge.push("fleet-admin/demo", "task/2-two", files={"two.py": "print(2)\n"}, message="two")
    closed = expect(
        client.post(f"{REPO}/pulls", json={"head": "task/2-two", "base": "main", "title": "Two"}),
        201,
    )
    expect(client.patch(f"{REPO}/pulls/{closed['number']}", json={"state": "closed"}), 201)
    expect(client.post(f"{REPO}/pulls/{closed['number']}/merge", json={"Do": "merge"}), 404)

    hook_config = {"url": "http://127.0.0.1:9/hook", "content_type": "json", "secret": "s"}
    hook = expect(
        client.post(
            f"{REPO}/hooks",
            json={"type": "forgejo", "config": hook_config, "events": ["issues"], "active": False},
        ),
        201,
    )
    expect(client.post(f"{REPO}/hooks", json={"type": "forgejo", "config": {}}), 422)
    expect(client.get(f"{REPO}/hooks"), 200)
    expect(client.get(f"{REPO}/hooks/{hook['id']}"), 200)
    expect(client.patch(f"{REPO}/hooks/{hook['id']}", json={"events": ["push"]}), 200)
    expect(client.delete(f"{REPO}/hooks/{hook['id']}"), 204)
    expect(client.get(f"{REPO}/hooks/{hook['id']}"), 404)

    wiki = f"{REPO}/wiki"
    expect(client.get(f"{wiki}/pages"), 404)  # no wiki before its first page
    page = {"title": "build-cache", "content_base64": "IyBCdWlsZCBjYWNoZQo=", "message": ""}
    expect(client.post(f"{wiki}/new", json=page), 201)
    expect(client.post(f"{wiki}/new", json=page), 400)
    expect(client.post(f"{wiki}/new", json={"content_base64": "eA=="}), 400)
    expect(client.post(f"{wiki}/new", json={"title": "x", "content_base64": "%%"}), 400)
    expect(client.get(f"{wiki}/pages"), 200)
    expect(client.get(f"{wiki}/page/build-cache.-"), 200)
    expect(client.get(f"{wiki}/page/missing"), 404)
    expect(client.patch(f"{wiki}/page/build-cache.-", json={"content_base64": "eQ=="}), 200)
    expect(client.get(f"{wiki}/revisions/build-cache.-"), 200)
    expect(client.get(f"{wiki}/revisions/missing"), 404)
    expect(client.delete(f"{wiki}/page/build-cache.-"), 204)
    expect(client.delete(f"{wiki}/page/build-cache.-"), 404)

    expect(client.get(f"{REPO}/collaborators/reviewer/permission"), 200)
    expect(client.get(f"{REPO}/collaborators/nobody/permission"), 404)
    expect(client.get(f"{REPO}/collaborators/reviewer"), 404)
    expect(client.put(f"{REPO}/collaborators/reviewer", json={"permission": "write"}), 204)
    expect(client.get(f"{REPO}/collaborators/reviewer"), 204)
    with _as(forge, client, "outsider"):
        expect(client.post(f"{REPO}/labels", json={"name": "n", "color": "000000"}), 403)
        expect(client.put(f"{REPO}/collaborators/outsider", json={"permission": "admin"}), 403)
    client.headers["Authorization"] = "token not-a-token"
    expect(client.get("/user"), 401)


def _expect(response: httpx.Response, status: int) -> Any:
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url.path}: "
        f"{response.status_code} {response.text[:300]}"
    )
    return response.json() if response.content else None


class _as:
    """Within the block the client acts as another user, with a token issued for it."""

    def __init__(self, forge: ForgejoSandbox, client: httpx.Client, login: str) -> None:
        with forge.state.lock:
            self.token = forge.state.issue_token(forge.state.user_named(login))
        self.client = client

    def __enter__(self) -> None:
        self.saved = self.client.headers["Authorization"]
        self.client.headers["Authorization"] = f"token {self.token}"

    def __exit__(self, *exc: object) -> None:
        self.client.headers["Authorization"] = self.saved


def test_every_answer_matches_the_schema_the_spec_declares(
    forge: ForgejoSandbox, recorded: tuple[httpx.Client, list[Exchange]]
) -> None:
    """Each body validates against its declared response, with no undeclared properties."""
    client, exchanges = recorded
    index = SpecIndex(_spec())
    _scenario(forge, client)
    for exchange in exchanges:
        where = f"{exchange.method} {exchange.path} -> {exchange.status}"
        template = index.template(exchange.method, exchange.path)
        declared = index.response(template, exchange.method, exchange.status)
        if declared is not None and "schema" in declared:
            schema: dict[str, Any] = declared["schema"]
        elif exchange.status < 400:
            assert declared is not None, f"{where}: the spec declares no such success status"
            assert exchange.body == b"", f"{where}: the spec declares an empty body"
            continue
        else:
            # Forgejo answers 401 on every route without listing it, and some declared errors
            # carry no schema; all of them are written by ctx.Error / ctx.NotFound.
            error = "APINotFound" if exchange.status == 404 else "APIError"
            schema = {"$ref": f"#/definitions/{error}"}
        index.validate(schema, json.loads(exchange.body), where)


def test_the_scenario_calls_every_served_route(
    forge: ForgejoSandbox, recorded: tuple[httpx.Client, list[Exchange]]
) -> None:
    """No route escapes the schema check: the scenario exercises each one the app serves."""
    client, exchanges = recorded
    index = SpecIndex(_spec())
    _scenario(forge, client)
    called = {(e.method, _normal(index.template(e.method, e.path))) for e in exchanges}
    missing = _served_routes(forge.app) - called
    assert not missing, f"routes never called: {sorted(missing)}"


def test_every_served_route_is_a_path_of_the_spec(forge: ForgejoSandbox) -> None:
    """The sandbox serves no route Forgejo's API does not have."""
    spec = _spec()
    known = {
        (method.upper(), _normal(template))
        for template, operations in spec["paths"].items()
        for method in operations
    }
    extra = _served_routes(forge.app) - known
    assert not extra, f"routes not in the spec: {sorted(extra)}"
