"""Build, record and replay the vcrpy cassettes in ``cassettes/`` for the Forgejo gateway.

Two kinds of cassette live there:

* ``cassettes/examples/*.yaml`` — made from the recorded Forgejo/Gitea API responses in
  ``tests/data/forgejo/examples`` (their origin is listed in that directory's SOURCES.md and
  copied into each cassette's ``metadata``). The response bodies and headers are the recorded
  bytes; where the source kept only a body, the request line is reconstructed as the gateway
  sends it and the metadata says so.
* ``cassettes/scenarios/*.yaml`` — recorded by running ``run_write_scenario`` through the
  gateway against the in-memory Forgejo (the default) or a real Forgejo.

The tests replay cassettes with ``record_mode="none"`` always; only this script writes them::

    python -m tests.record_cassettes                    # examples + scenario vs the sandbox
    AGENT_FLEET_TEST_FORGEJO_URL=https://forgejo.example.org \\
    AGENT_FLEET_TEST_FORGEJO_TOKEN=... python -m tests.record_cassettes   # scenario vs that Forgejo

``test_cassettes.py`` and ``test_contract.py`` import the helpers below.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import vcr  # type: ignore[import-untyped]
import yaml  # type: ignore[import-untyped]
from vcr.cassette import Cassette  # type: ignore[import-untyped]
from vcr.serializers import yamlserializer  # type: ignore[import-untyped]

from reconciler.errors import ForgejoError
from reconciler.forgejo.gateway import ForgejoGateway
from reconciler.forgejo.types import LabelSpec

ROOT = Path(__file__).resolve().parents[1]
CASSETTES = ROOT / "cassettes"
EXAMPLE_CASSETTES = CASSETTES / "examples"
SCENARIO_CASSETTES = CASSETTES / "scenarios"
WRITE_SCENARIO = SCENARIO_CASSETTES / "write-path.yaml"
DEFAULT_EXAMPLES = ROOT / "tests" / "data" / "forgejo" / "examples"

URL_ENV = "AGENT_FLEET_TEST_FORGEJO_URL"
TOKEN_ENV = "AGENT_FLEET_TEST_FORGEJO_TOKEN"

# The sandbox's ROOT_URL while it is not listening: using it as the gateway's base URL makes
# request URIs and the links inside answers agree in sandbox recordings.
SANDBOX_BASE_URL = "http://localhost:3000"
REPLAY_TOKEN = "replayed-token-not-sent-anywhere"
SCRUBBED = "<scrubbed>"

# pyforgejo adds these to every request; they say which machine recorded, nothing more.
_NOISY_HEADERS = ("authorization", "x-fern-language", "x-fern-runtime", "x-fern-platform")


def real_forgejo() -> tuple[str, str] | None:
    """``(url, token)`` of a real Forgejo to use, when both environment variables are set."""
    url, token = os.environ.get(URL_ENV, ""), os.environ.get(TOKEN_ENV, "")
    return (url, token) if url and token else None


# --- vcrpy configuration ---------------------------------------------------------------------


def _scrub_request(request: Any) -> Any:
    """Keep secrets out of recorded request bodies (webhook secrets); runs on replay too."""
    body = request.body
    if not body:
        return request
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return request
    if (
        isinstance(data, dict)
        and isinstance(data.get("config"), dict)
        and "secret" in data["config"]
    ):
        data["config"]["secret"] = SCRUBBED
        request.body = json.dumps(data).encode()
    return request


class _ReadableDumper(yamlserializer._CassetteDumper):  # type: ignore[misc]
    """vcrpy's safe YAML dumper, writing multi-line bodies as literal blocks people can read."""


def _represent_text(dumper: Any, value: str) -> Any:
    # PyYAML falls back to a quoted scalar by itself when a literal block cannot hold the text.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReadableDumper.add_representer(str, _represent_text)


class ReadableYaml:
    """The cassette serializer: vcrpy's safe loader, and the readable dumper above."""

    @staticmethod
    def deserialize(cassette_string: str) -> Any:
        return yamlserializer.deserialize(cassette_string)

    @staticmethod
    def serialize(cassette_dict: Any) -> str:
        return str(yaml.dump(cassette_dict, Dumper=_ReadableDumper, allow_unicode=True))


def make_vcr(*, record_mode: str = "none", match_body: bool = False) -> vcr.VCR:
    """The one vcrpy configuration: replay-only unless the recorder asks for ``"all"``."""
    match_on = ["method", "scheme", "host", "port", "path", "query"]
    if match_body:
        match_on.append("body")
    recorder = vcr.VCR(
        cassette_library_dir=str(CASSETTES),
        serializer="yaml",
        record_mode=record_mode,
        match_on=match_on,
        filter_headers=list(_NOISY_HEADERS),
        before_record_request=_scrub_request,
        decode_compressed_response=True,
    )
    recorder.register_serializer("yaml", ReadableYaml)
    return recorder


# --- example cassettes -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleCassette:
    """How one recorded example becomes a cassette: the request the gateway sends for it."""

    example: str
    base_url: str
    path: str
    request_note: str

    @property
    def cassette(self) -> Path:
        return EXAMPLE_CASSETTES / (self.example.removesuffix(".json") + ".yaml")

    @property
    def headers_file(self) -> str:
        return self.example.removesuffix(".json") + ".headers.json"


_RECORDED = "recorded: the request line comes from the example's .headers.json"
_RECONSTRUCTED = "reconstructed: the source kept only the response body; this is the request the gateway sends for it"
_DERIVED = "reconstructed: the example is one element of a recorded list; this is the single-object request"

EXAMPLES: tuple[ExampleCassette, ...] = (
    ExampleCassette(
        "api-issues-list-page3.json",
        "https://gitea.com",
        "repos/gitea/test_repo/issues?limit=2&page=3&state=all&type=issues",
        _RECORDED,
    ),
    ExampleCassette(
        "api-pulls-list-page1.json",
        "https://gitea.com",
        "repos/gitea/test_repo/pulls?limit=3&page=1&state=all",
        _RECORDED,
    ),
    ExampleCassette(
        "api-labels-list.json",
        "https://gitea.com",
        "repos/gitea/test_repo/labels?limit=50&page=1",
        _RECORDED,
    ),
    ExampleCassette(
        "api-pull-reviews-list.json",
        "https://gitea.com",
        "repos/gitea/test_repo/pulls/7/reviews?limit=50&page=1",
        _RECORDED,
    ),
    ExampleCassette(
        "api-issue.json", "https://gitea.com", "repos/gitea/test_repo/issues/10", _DERIVED
    ),
    ExampleCassette(
        "api-label.json", "https://gitea.com", "repos/gitea/test_repo/labels/3731", _DERIVED
    ),
    ExampleCassette(
        "api-repo-legacy.json", "https://try.gitea.io", "repos/go-gitea/gitea", _RECONSTRUCTED
    ),
    ExampleCassette(
        "api-branch.json",
        "https://try.gitea.io",
        "repos/go-gitea/gitea/branches/master",
        _RECONSTRUCTED,
    ),
    ExampleCassette(
        "api-commit.json",
        "https://try.gitea.io",
        "repos/gitea/gitea/git/commits/c43399cad8766ee521b873a32c1652407c5a4630"
        "?stat=false&verification=false&files=false",
        _RECONSTRUCTED,
    ),
    ExampleCassette("api-user.json", "https://try.gitea.io", "user", _RECONSTRUCTED),
    ExampleCassette(
        "api-comment-legacy.json",
        "https://try.gitea.io",
        "repos/go-gitea/gitea/issues/comments/74",
        _RECONSTRUCTED,
    ),
    ExampleCassette(
        "api-settings-api.json",
        "https://code.forgejo.org",
        "settings/api",
        _RECORDED.replace(
            "the example's .headers.json", "the source file name (GET_/api/v1/settings/api)"
        ),
    ),
    ExampleCassette(
        "api-version.json",
        "https://code.forgejo.org",
        "version",
        _RECORDED.replace(
            "the example's .headers.json", "the source file name (GET_/api/v1/version)"
        ),
    ),
)


def _sources_rows(examples_dir: Path) -> dict[str, list[str]]:
    """SOURCES.md table rows by file name: ``[repository, path, commit, notes]``."""
    rows: dict[str, list[str]] = {}
    sources = examples_dir / "SOURCES.md"
    for line in sources.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*`([^`]+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [cell.strip().strip("`") for cell in match.group(2).split("|")]
    return rows


def example_cassette_text(spec: ExampleCassette, examples_dir: Path) -> str:
    """The YAML cassette for one example, byte-for-byte what ``build_example_cassettes`` writes."""
    body = (examples_dir / spec.example).read_text(encoding="utf-8")
    headers: dict[str, list[str]] = {"Content-Type": ["application/json;charset=utf-8"]}
    status = 200
    headers_path = examples_dir / spec.headers_file
    if headers_path.exists():
        recorded = json.loads(headers_path.read_text(encoding="utf-8"))
        headers = {name: [value] for name, value in recorded["headers"].items()}
        status = int(recorded["status"])
        if spec.request_note == _RECORDED:
            line = recorded["request"].split(" ", 1)[1].removeprefix("/api/v1/")
            if line != spec.path:
                raise ValueError(f"{spec.example}: recorded request {line!r} != {spec.path!r}")
    row = _sources_rows(examples_dir).get(spec.example)
    if row is None:
        raise ValueError(f"{spec.example} is not listed in {examples_dir / 'SOURCES.md'}")
    repository, source_path, commit, notes = (row + ["", "", "", ""])[:4]
    cassette = {
        "version": 1,
        "interactions": [
            {
                "request": {
                    "body": None,
                    "headers": {},
                    "method": "GET",
                    "uri": f"{spec.base_url}/api/v1/{spec.path}",
                },
                "response": {
                    "status": {"code": status, "message": httpx.codes.get_reason_phrase(status)},
                    "headers": headers,
                    "body": {"string": body},
                },
            }
        ],
        "metadata": {
            "origin": {
                "generated_by": "tests/record_cassettes.py (python -m tests.record_cassettes)",
                "example": f"tests/data/forgejo/examples/{spec.example}",
                "headers_file": spec.headers_file if headers_path.exists() else None,
                "source_repository": repository,
                "source_path": source_path,
                "source_commit": commit,
                "source_notes": notes,
                "request": spec.request_note,
            }
        },
    }
    header = (
        f"# Generated by tests/record_cassettes.py from tests/data/forgejo/examples/{spec.example};\n"
        "# do not edit by hand. metadata.origin says where the recording came from.\n"
    )
    return header + ReadableYaml.serialize(cassette)


def build_example_cassettes(examples_dir: Path) -> list[Path]:
    """Write every example cassette; refuses if an ``api-*.json`` example has no entry here."""
    listed = {spec.example for spec in EXAMPLES}
    present = {
        p.name for p in examples_dir.glob("api-*.json") if not p.name.endswith(".headers.json")
    }
    if present - listed:
        raise ValueError(f"examples without a cassette entry: {sorted(present - listed)}")
    EXAMPLE_CASSETTES.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in EXAMPLES:
        spec.cassette.write_text(example_cassette_text(spec, examples_dir), encoding="utf-8")
        written.append(spec.cassette)
    return written


@contextmanager
def replay_example(
    spec: ExampleCassette, *, on_call: Callable[[str, int], None] | None = None
) -> Iterator[ForgejoGateway]:
    """A gateway whose only possible answers are the example cassette's recording."""
    with (
        make_vcr().use_cassette(str(spec.cassette.relative_to(CASSETTES))),
        ForgejoGateway(spec.base_url, REPLAY_TOKEN, read_retries=0, on_call=on_call) as gateway,
    ):
        yield gateway


# --- the write-path scenario ------------------------------------------------------------------

SCENARIO_LABELS = (
    LabelSpec(name="fleet/task", color="0e8a16", description="work for the fleet"),
    LabelSpec(
        name="status/todo", color="ededed", description="waiting for an agent", exclusive=True
    ),
    LabelSpec(
        name="status/doing", color="1d76db", description="an agent works on it", exclusive=True
    ),
    LabelSpec(
        name="status/review", color="fbca04", description="pull request in review", exclusive=True
    ),
    LabelSpec(name="priority/high", color="b60205", description="do this first", exclusive=True),
)
TASK_BRANCH = "task/1-add-greeting"
HOOK_URL = "https://fleet.invalid/webhooks/forgejo"
HOOK_EVENTS = ("issues", "issue_comment", "pull_request", "push")
HOOK_SECRET = "scenario-webhook-secret"

Transcript = list[tuple[str, Any]]
PublishBranch = Callable[[ForgejoGateway, str], None]
"""Puts one commit adding ``greeting.txt`` on ``TASK_BRANCH`` of the repo (``owner/name``)."""


def publish_with_contents_api(gateway: ForgejoGateway, repo: str) -> None:
    """What a real Forgejo offers: commit the file through the contents API on a new branch."""
    gateway.create_file(
        repo,
        "greeting.txt",
        content=b"hello from the fleet\n",
        message="Add a greeting",
        branch="main",
        new_branch=TASK_BRANCH,
    )


def _outcome(call: Callable[[], object]) -> dict[str, Any]:
    """The error class and status a failing call raises (the scenario's error-mapping steps)."""
    try:
        call()
    except ForgejoError as error:
        return {"error": type(error).__name__, "status": error.status}
    return {"error": None}


def _wait_mergeable(
    gateway: ForgejoGateway, repo: str, number: int, sleep: Callable[[float], None]
) -> None:
    # A real Forgejo checks mergeability in the background after a PR opens.
    for _ in range(20):
        if gateway.get_pull(repo, number).mergeable:
            return
        sleep(0.5)
    raise AssertionError(f"pull request {repo}#{number} never became mergeable")


def run_write_scenario(
    gateway: ForgejoGateway,
    *,
    repo_name: str,
    publish_branch: PublishBranch,
    sleep: Callable[[float], None] = lambda _: None,
) -> Transcript:
    """Drive every gateway write (and the reads around them) once; returns what was observed.

    The same function runs against a cassette, the in-memory Forgejo and a real Forgejo; its
    transcript, passed through ``normalise``, must be the same for all three.
    """
    t: Transcript = []
    me = gateway.whoami()
    t.append(("whoami", me.login))
    t.append(("version_has_gitea_level", "+gitea-" in gateway.version()))
    t.append(("api_settings.max_response_items", gateway.api_settings().max_response_items))

    repo = gateway.create_repo(repo_name, default_branch="main", auto_init=True)
    full = repo.full_name
    t.append(("create_repo", repo))
    t.append(("get_repo", gateway.get_repo(full)))
    t.append(("create_repo.again", _outcome(lambda: gateway.create_repo(repo_name))))
    t.append(("get_permission", gateway.get_permission(full, me.login)))

    writes = gateway.writes
    t.append(("ensure_labels", gateway.ensure_labels(full, SCENARIO_LABELS)))
    t.append(("ensure_labels.writes", gateway.writes - writes))
    writes = gateway.writes
    gateway.ensure_labels(full, SCENARIO_LABELS)
    t.append(("ensure_labels.second_pass_writes", gateway.writes - writes))
    drifted = (SCENARIO_LABELS[0].model_copy(update={"color": "5319e7"}), *SCENARIO_LABELS[1:])
    writes = gateway.writes
    labels = gateway.ensure_labels(full, drifted)
    t.append(("ensure_labels.drift_writes", gateway.writes - writes))
    task_label = next(label for label in labels if label.name == "fleet/task")
    t.append(("get_label", gateway.get_label(full, task_label.id)))

    issue = gateway.create_issue(
        full,
        title="Add a greeting",
        body="Goal: greet.\n\nValidation: greeting.txt exists.",
        labels=["fleet/task", "status/todo", "priority/high"],
    )
    t.append(("create_issue", issue))
    other = gateway.create_issue(full, title="Second task", labels=["fleet/task"])
    now = gateway.add_labels(full, issue.number, ["status/doing"], current=issue.labels)
    t.append(("add_labels.exclusive_scope", now))
    writes = gateway.writes
    t.append(
        (
            "add_labels.already_there",
            gateway.add_labels(full, issue.number, ["status/doing"], current=now),
        )
    )
    t.append(("add_labels.already_there_writes", gateway.writes - writes))
    gateway.remove_label(full, issue.number, "priority/high")
    t.append(
        (
            "replace_labels",
            gateway.replace_labels(full, other.number, ["fleet/task", "status/review"]),
        )
    )
    t.append(("get_issue", gateway.get_issue(full, issue.number)))
    t.append(("get_issue.missing", _outcome(lambda: gateway.get_issue(full, 9999))))
    t.append(
        (
            "add_labels.unknown_name",
            _outcome(lambda: gateway.add_labels(full, issue.number, ["nope/none"])),
        )
    )

    page = gateway.list_issues_page(full, page=1, limit=1, state="all", kind="issues")
    t.append(
        (
            "list_issues_page",
            {
                "numbers": [i.number for i in page.items],
                "total": page.total_count,
                "next": page.next_page,
            },
        )
    )
    t.append(
        (
            "list_issues.all_labels",
            [i.number for i in gateway.list_issues(full, labels=["fleet/task", "status/doing"])],
        )
    )
    t.append(
        (
            "list_issues.kind",
            [i.number for i in gateway.list_issues(full, kind="issues", state="all")],
        )
    )

    first, outcome = gateway.upsert_marker_comment(
        full, issue.number, marker="assignment", body="Assigned to agent-1."
    )
    t.append(("marker.first", (first, outcome)))
    comments = gateway.list_comments(full, issue.number)
    t.append(
        (
            "marker.same_text",
            gateway.upsert_marker_comment(
                full,
                issue.number,
                marker="assignment",
                body="Assigned to agent-1.",
                comments=comments,
            )[1],
        )
    )
    # The recording's upsert listed the comments itself; a gateway that keeps the record of its
    # marker comments does not, so the listing is made here to keep the requests in step.
    gateway.list_comments(full, issue.number)
    t.append(
        (
            "marker.new_text",
            gateway.upsert_marker_comment(
                full, issue.number, marker="assignment", body="Assigned to agent-2."
            ),
        )
    )
    plain = gateway.create_comment(full, issue.number, "A person's remark.")
    t.append(("get_comment", gateway.get_comment(full, plain.id)))
    t.append(("list_comments", gateway.list_comments(full, issue.number)))

    publish_branch(gateway, full)
    branch = gateway.get_branch(full, TASK_BRANCH)
    assert branch is not None, f"{TASK_BRANCH} was not published"
    t.append(("get_branch", branch))
    t.append(("get_branch.missing", gateway.get_branch(full, "task/does-not-exist")))
    t.append(
        ("list_branch_commits", [c.title for c in gateway.list_branch_commits(full, TASK_BRANCH)])
    )
    t.append(("get_commit", gateway.get_commit(full, branch.commit_sha).title))

    pull = gateway.create_pull(
        full, head=TASK_BRANCH, base="main", title="Add a greeting", body=f"Closes #{issue.number}"
    )
    t.append(("create_pull", pull))
    found = gateway.find_pull_by_head(full, TASK_BRANCH)
    t.append(("find_pull_by_head", found.number if found else None))
    t.append(("find_pull_by_head.none", gateway.find_pull_by_head(full, "task/none")))
    t.append(("list_pulls", [p.number for p in gateway.list_pulls(full)]))
    t.append(("list_pull_commits", [c.title for c in gateway.list_pull_commits(full, pull.number)]))
    t.append(("list_pull_files", gateway.list_pull_files(full, pull.number)))

    gateway.create_status(
        full, branch.commit_sha, context="ci/test", state="pending", description="running"
    )
    t.append(
        (
            "create_status",
            gateway.create_status(
                full,
                branch.commit_sha,
                context="ci/test",
                state="success",
                description="passed",
                target_url="https://ci.invalid/1",
            ),
        )
    )
    t.append(("combined_status", gateway.combined_status(full, branch.commit_sha)))

    t.append(
        (
            "create_review",
            gateway.create_review(full, pull.number, event="COMMENT", body="Reads well."),
        )
    )
    t.append(
        (
            "create_review.own_approval",
            _outcome(lambda: gateway.create_review(full, pull.number, event="APPROVED", body="")),
        )
    )
    t.append(("list_reviews", gateway.list_reviews(full, pull.number)))

    t.append(("is_merged.before", gateway.is_merged(full, pull.number)))
    _wait_mergeable(gateway, full, pull.number, sleep)
    gateway.merge_pull(full, pull.number)
    t.append(("is_merged.after", gateway.is_merged(full, pull.number)))
    t.append(("get_pull.merged", gateway.get_pull(full, pull.number)))
    t.append(("merge_pull.again", _outcome(lambda: gateway.merge_pull(full, pull.number))))

    t.append(
        (
            "ensure_webhook",
            gateway.ensure_webhook(full, url=HOOK_URL, secret=HOOK_SECRET, events=HOOK_EVENTS)[1],
        )
    )
    writes = gateway.writes
    t.append(
        (
            "ensure_webhook.again",
            gateway.ensure_webhook(full, url=HOOK_URL, secret=HOOK_SECRET, events=HOOK_EVENTS)[1],
        )
    )
    t.append(("ensure_webhook.again_writes", gateway.writes - writes))
    t.append(("list_hooks", gateway.list_hooks(full)))

    t.append(("edit_issue.close", gateway.edit_issue(full, issue.number, state="closed")))
    t.append(
        (
            "list_issues.closed",
            [i.number for i in gateway.list_issues(full, state="closed", kind="issues")],
        )
    )
    return t


# --- normalising a transcript -------------------------------------------------------------------

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_PERSON_FIELDS = frozenset({"email", "author_name", "author_email"})
_USER_FIELDS = frozenset({"author", "login", "owner", "author_login"})
_REPO_FIELDS = frozenset({"full_name", "repo", "head_repo", "base_repo"})


def normalise(transcript: Transcript) -> list[tuple[str, Any]]:
    """The transcript with what legitimately differs between servers replaced by placeholders.

    Ids and timestamps become ``<id>``/``<time>`` (timestamps must be aware datetimes), shas
    become ``<sha1>``, ``<sha2>``… in order of first appearance, the server's root URL
    ``<forgejo>``, the bot's login ``<bot>``, the scenario repo ``<owner>/<repo>``, and the git
    author's name and email ``<person>``. Everything else must match exactly.
    """
    login = next(value for step, value in transcript if step == "whoami")
    repo = next(value for step, value in transcript if step == "create_repo")
    root = repo.html_url.removesuffix(repo.full_name).rstrip("/")
    shas: dict[str, str] = {}

    def text(value: str) -> str:
        if _SHA.match(value):
            return shas.setdefault(value, f"<sha{len(shas) + 1}>")
        if root:
            value = value.replace(root, "<forgejo>")
        value = re.sub(re.escape(f"/{repo.full_name}") + r"(?=[/.#]|$)", "/<owner>/<repo>", value)
        value = re.sub(
            r"[0-9a-f]{40}", lambda m: shas.setdefault(m.group(0), f"<sha{len(shas) + 1}>"), value
        )
        return re.sub(r"#issuecomment-\d+", "#issuecomment-<id>", value)

    def walk(value: Any, key: str = "") -> Any:
        if hasattr(value, "model_dump"):
            return walk(value.model_dump(), key)
        if isinstance(value, datetime):
            assert value.tzinfo is not None, f"naive timestamp in {key}: {value!r}"
            return "<time>"
        if isinstance(value, Mapping):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(item, key) for item in value]
        if key == "id" and isinstance(value, int):
            return "<id>"
        if isinstance(value, str):
            if key in _USER_FIELDS and value == login:
                return "<bot>"
            if key in _REPO_FIELDS and value == repo.full_name:
                return "<owner>/<repo>"
            if key == "name" and value == repo.name:
                return "<repo>"
            if key in _PERSON_FIELDS:
                return "<person>"
            return text(value)
        return value

    normalised = []
    for step, value in transcript:
        if step == "whoami":
            normalised.append((step, "<bot>"))
        else:
            normalised.append((step, walk(value, step)))
    return normalised


# --- recording and replaying the scenario -------------------------------------------------------


def replay_write_scenario() -> Transcript:
    """Run the scenario against the committed cassette; no network, no server."""
    with make_vcr(match_body=True).use_cassette(
        str(WRITE_SCENARIO.relative_to(CASSETTES))
    ) as cassette:
        meta = _scenario_metadata(cassette)
        publish = (
            publish_with_contents_api
            if meta["publish_branch"] == "contents-api"
            else _published_outside_api
        )
        with ForgejoGateway(meta["base_url"], REPLAY_TOKEN, read_retries=0) as gateway:
            return run_write_scenario(gateway, repo_name=meta["repo_name"], publish_branch=publish)


def _scenario_metadata(cassette: Cassette) -> dict[str, str]:
    meta = cassette.get_metadata("scenario", None)
    if not isinstance(meta, dict):
        raise TypeError(f"{WRITE_SCENARIO} has no scenario metadata; re-record it")
    return meta


def _published_outside_api(gateway: ForgejoGateway, repo: str) -> None:
    # Cassettes recorded before the sandbox served the contents API ("sandbox-push"): its
    # ``push`` made the branch without an API call and the cassette holds only the reads that
    # saw it, so on replay there is nothing to do.
    del gateway, repo


def run_against_sandbox(*, repo_name: str = "fleet-contract") -> Transcript:
    """Run the scenario live against a fresh in-memory Forgejo (in process, no socket)."""
    from reconciler.sandbox import ForgejoSandbox

    sandbox = ForgejoSandbox()
    transport = httpx.WSGITransport(app=sandbox.app)
    with ForgejoGateway(SANDBOX_BASE_URL, sandbox.admin_token, transport=transport) as gateway:
        return run_write_scenario(
            gateway, repo_name=repo_name, publish_branch=publish_with_contents_api
        )


def scratch_repo_name() -> str:
    """A fresh repository name for a run against a real Forgejo (which keeps what it made)."""
    return f"fleet-contract-{datetime.now(UTC):%Y%m%d%H%M%S}"


def run_against_real_forgejo(url: str, token: str, *, repo_name: str | None = None) -> Transcript:
    """Run the scenario live against a real Forgejo, in a new scratch repository."""
    with ForgejoGateway(url, token) as gateway:
        return run_write_scenario(
            gateway,
            repo_name=repo_name or scratch_repo_name(),
            publish_branch=publish_with_contents_api,
            sleep=time.sleep,
        )


def record_write_scenario() -> Path:
    """Re-record ``cassettes/scenarios/write-path.yaml`` (real Forgejo if configured, else sandbox).

    Records into a side file and replaces the committed cassette only when the run succeeded.
    """
    SCENARIO_CASSETTES.mkdir(parents=True, exist_ok=True)
    recording = WRITE_SCENARIO.with_suffix(".recording.yaml")
    recording.unlink(missing_ok=True)
    target = real_forgejo()
    metadata = {
        "recorded_against": "reconciler.sandbox.ForgejoSandbox" if target is None else "Forgejo",
        "base_url": SANDBOX_BASE_URL if target is None else target[0],
        "repo_name": "fleet-contract" if target is None else scratch_repo_name(),
        "publish_branch": "contents-api",
        "recorded_at": f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}",
    }
    cassette_name = str(recording.relative_to(CASSETTES))
    with make_vcr(record_mode="all", match_body=True).use_cassette(cassette_name) as cassette:
        cassette.get_metadata("scenario", metadata)
        if target is None:
            run_against_sandbox(repo_name=metadata["repo_name"])
        else:
            run_against_real_forgejo(*target, repo_name=metadata["repo_name"])
    recording.replace(WRITE_SCENARIO)
    return WRITE_SCENARIO


def main(argv: list[str] | None = None) -> int:
    """Rebuild the example cassettes and re-record the scenario cassette."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.record_cassettes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--examples",
        type=Path,
        default=DEFAULT_EXAMPLES,
        help="directory of recorded API examples (default: %(default)s)",
    )
    parser.add_argument("--only", choices=("examples", "scenarios"), help="rebuild only one kind")
    args = parser.parse_args(argv)
    if args.only in (None, "examples"):
        if not (args.examples / "SOURCES.md").exists():
            parser.error(f"no SOURCES.md in {args.examples}; pass --examples DIR")
        for path in build_example_cassettes(args.examples):
            print(f"wrote {path.relative_to(ROOT)}")
    if args.only in (None, "scenarios"):
        target = real_forgejo()
        print(
            f"recording the write scenario against {target[0] if target else 'the in-memory Forgejo'} …"
        )
        print(f"wrote {record_write_scenario().relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
