"""Property-based fuzzing of the daemon's HTTP surfaces: the agent API and the webhook receiver.

Run by hand: ``python bench/fuzz.py`` (10,000 cases per surface; ``--cases N`` for another
number, ``--quick`` for 300). ``tests/test_fuzz.py`` runs the quick mode in CI.

The daemon's whole HTTP app (``webhook.daemon.build`` + ``http_app``, on a real store in a
temporary directory) is driven in process through WSGI. Cases come from hypothesis:

* **agent API** — for every operation of the OpenAPI document (``/api/v1/openapi.json``):
  bodies generated from the operation's request schema (hypothesis-jsonschema), arbitrary
  JSON, arbitrary bytes and deeply nested documents; every credential kind (none, an agent's
  token, the operator token, the enrolment secret, garbage, bytes outside ASCII); path
  parameters and query strings from arbitrary text.
* **webhook** — payloads shaped like Forgejo's (each event the receiver knows) with arbitrary
  values, arbitrary JSON and bytes, correct, wrong and missing signatures, every content type.

Each case checks two properties: the answer is never a 5xx (and is JSON whenever it is an
error), and a refused request (4xx) changed nothing — the store's agents, tasks, receipts and
the work queue are as they were. The table prints the cases run, the 5xx count and the
count of refused requests that changed state, next to their targets (0).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import io
import json
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Imported before the project's modules: it takes bench/ off sys.path, where this directory's
# webhook.py would shadow the `webhook` package (see bench/harness.py).
from harness import Row, print_notes, print_table, verdict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pydantic import SecretStr

from reconciler.engine.logs import configure_logging
from reconciler.fleet.operations import OPERATIONS
from reconciler.settings import (
    ApiSettings,
    ForgejoSettings,
    Settings,
    StoreSettings,
    WebhookSettings,
)
from reconciler.store import Store
from webhook.daemon import Assembly, build, http_app
from webhook.openapi import openapi_document

OPERATOR = "fuzz-operator-token"
ENROLMENT = "fuzz-enrolment-secret"
SECRET = "fuzz-webhook-secret"
MAX_BODY = 64 * 1024
EVENTS = ("issues", "issue_comment", "pull_request", "pull_request_review", "push", "create")


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes


@dataclass
class Tally:
    """What one surface's run found."""

    cases: int = 0
    server_errors: list[str] = field(default_factory=list)
    non_json_errors: list[str] = field(default_factory=list)
    changed_on_refusal: list[str] = field(default_factory=list)
    by_status: dict[int, int] = field(default_factory=dict)

    def count(self, answer: Answer, what: str, *, changed: bool) -> None:
        self.cases += 1
        self.by_status[answer.status] = self.by_status.get(answer.status, 0) + 1
        if answer.status >= 500:
            self.server_errors.append(f"{what} -> {answer.status} {answer.body[:200]!r}")
        if answer.status >= 400 and not answer.content_type.startswith("application/json"):
            self.non_json_errors.append(f"{what} -> {answer.status} {answer.content_type}")
        if answer.status >= 400 and changed:
            self.changed_on_refusal.append(f"{what} -> {answer.status}")


class Target:
    """The daemon's HTTP app on a real store, called through WSGI."""

    def __init__(self, assembly: Assembly, app: Any) -> None:
        self.assembly = assembly
        self.app = app
        self.enqueued = 0
        self.agent_token = ""

    def call(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Answer:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            # As a server passes it (PEP 3333): the path's bytes as latin-1 text.
            "PATH_INFO": path.encode("utf-8", "surrogatepass").decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": "fleet",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.input_terminated": True,
            "CONTENT_LENGTH": str(len(body)),
        }
        for name, value in (headers or {}).items():
            key = name.upper().replace("-", "_")
            environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
            started.append((status, headers))

        content = b"".join(self.app(environ, start_response))
        status, answer_headers = started[-1]
        content_type = next((v for k, v in answer_headers if k.lower() == "content-type"), "")
        return Answer(int(status.split()[0]), content_type, content)

    def state(self) -> tuple[object, ...]:
        """A digest of everything a request could change durably."""
        store = self.assembly.store
        agents = tuple(
            (a.id, a.token_hash, a.status, a.deregistered, a.type, a.hostname, a.model_dump_json())
            for a in store.list_agents()
        )
        tasks = tuple((t.id, t.state, t.lease_generation) for t in store.list_tasks())
        receipts = tuple(len(store.receipts_for(t.id)) for t in store.list_tasks())
        return agents, tasks, receipts, self.enqueued


@contextmanager
def target() -> Iterator[Target]:
    with tempfile.TemporaryDirectory(prefix="fuzz-") as directory:
        path = Path(directory) / "state"
        config = Settings(
            forgejo=ForgejoSettings(
                url="http://forgejo.invalid", token=SecretStr("t"), bot_login="fleet"
            ),
            api=ApiSettings(
                operator_token=SecretStr(OPERATOR), enrolment_secret=SecretStr(ENROLMENT)
            ),
            webhook=WebhookSettings(secret=SecretStr(SECRET), max_body_bytes=MAX_BODY),
            store=StoreSettings(path=path),
        )
        with Store.open(path) as store:
            assembly = build(config, store=store)
            holder: list[Target] = []

            def counting(key: Any) -> None:
                holder[0].enqueued += 1
                assembly.queue.add(key)

            assembly.enqueue = counting
            made = Target(assembly, http_app(assembly, readiness=dict))
            holder.append(made)
            try:
                registered = made.call(
                    "POST",
                    "/api/v1/agents/register",
                    headers={"Authorization": f"Bearer {ENROLMENT}"},
                    body=b'{"agent_id": "a1", "type": "claude-code"}',
                )
                assert registered.status == 201, registered.body
                made.agent_token = json.loads(registered.body)["token"]
                yield made
            finally:
                assembly.gateway.close()


# --- strategies ------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def latin1(text_strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Header values as a server passes them: latin-1 text of arbitrary bytes."""
    return st.binary(max_size=60).map(lambda b: b.decode("latin-1")) | text_strategy


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def bodies(schema: dict[str, Any] | None) -> st.SearchStrategy[bytes]:
    choices: list[st.SearchStrategy[bytes]] = [
        JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
        st.sampled_from([b"", b"{}", b"[]", b"null", deep(40), deep(5_000), b'"\\ud800"']),
    ]
    if schema is not None:
        choices.insert(0, from_schema(schema).map(lambda v: json.dumps(v).encode()))
    return st.one_of(*choices)


def credentials(target: Target) -> st.SearchStrategy[dict[str, str]]:
    tokens = st.sampled_from([target.agent_token, OPERATOR, ENROLMENT, "guess", ""])
    valid = {"Authorization": f"Bearer {target.agent_token}"}
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    return st.one_of(
        # Half the cases carry a good credential, so they reach the body and the service.
        st.just(valid),
        st.just(valid),
        st.just(operator),
        st.just(valid),
        st.just(operator),
        st.just({}),
        tokens.map(lambda t: {"Authorization": f"Bearer {t}"}),
        latin1(st.text(max_size=40)).map(lambda t: {"Authorization": f"Bearer {t}"}),
        latin1(st.text(max_size=40)).map(lambda t: {"Authorization": t}),
        tokens.map(lambda t: {"Authorization": f"Bearer {t}\xff"}),
    )


def operations() -> list[tuple[str, str, dict[str, Any] | None]]:
    """(method, path template, request schema with its components) of every operation."""
    document = openapi_document(OPERATIONS)
    components = document["components"]
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            rooted = {**schema, "components": components} if schema else None
            found.append((method.upper(), path, rooted))
    return found


def path_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["a1", "a2", "12-3f9a1c2b", "%00", "..", "A1"]),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30).map(
            lambda t: t.replace("/", "")
        ),
    )


def fill(template: str, value: str) -> str:
    return re.sub(r"\{\w+\}", lambda _: value or "x", template)


# --- the runs --------------------------------------------------------------------------------


def fuzz_agent_api(cases: int) -> Tally:
    tally = Tally()
    with target() as t:
        ops = operations()

        @settings(
            max_examples=cases,
            database=None,
            deadline=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def case(data: st.DataObject) -> None:
            method, template, schema = data.draw(st.sampled_from(ops))
            path = fill(template, data.draw(path_values()))
            headers = {"Content-Type": "application/json", **data.draw(credentials(t))}
            body = data.draw(bodies(schema))
            query = data.draw(
                st.one_of(
                    st.just(""),
                    st.sampled_from(["status=online", "capability=review", "state=created"]),
                    latin1(st.text(max_size=30)),
                )
            )
            before = t.state()
            answer = t.call(method, path, query=query, headers=headers, body=body)
            tally.count(answer, f"{method} {path}", changed=t.state() != before)

        case()
    return tally


def webhook_payloads() -> st.SearchStrategy[Any]:
    repository = st.fixed_dictionaries(
        {"full_name": st.one_of(st.just("acme/web"), st.text(max_size=30))}
    )
    shaped = st.fixed_dictionaries(
        {
            "action": st.one_of(
                st.sampled_from(["opened", "edited", "closed", "labeled", "synchronized"]),
                st.text(max_size=10),
            ),
            "repository": repository | JSON,
        },
        optional={
            "issue": st.fixed_dictionaries({"number": st.integers() | JSON}) | JSON,
            "pull_request": st.fixed_dictionaries(
                {"number": st.integers(), "head": st.fixed_dictionaries({"ref": st.text()})}
            )
            | JSON,
            "number": st.integers() | JSON,
            "ref": st.text(max_size=40) | JSON,
            "ref_type": st.sampled_from(["branch", "tag"]) | JSON,
        },
    )
    return shaped | JSON


def fuzz_webhook(cases: int) -> Tally:
    tally = Tally()
    with target() as t:

        @settings(
            max_examples=cases,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def case(data: st.DataObject) -> None:
            body = data.draw(
                st.one_of(
                    webhook_payloads().map(lambda v: json.dumps(v).encode()),
                    st.binary(max_size=200),
                    st.sampled_from([deep(40), deep(5_000), b'{"repository": "\\udcff"}']),
                )
            )
            signing = data.draw(st.sampled_from(["right", "wrong", "none", "garbage"]))
            headers = {
                "X-Forgejo-Event": data.draw(
                    st.one_of(st.sampled_from(EVENTS), latin1(st.text(max_size=20)))
                ),
                "Content-Type": data.draw(
                    st.sampled_from(
                        ["application/json", "application/x-www-form-urlencoded", "text/plain", ""]
                    )
                ),
            }
            if signing == "right":
                headers["X-Forgejo-Signature"] = hmac.new(
                    SECRET.encode(), body, hashlib.sha256
                ).hexdigest()
            elif signing == "wrong":
                headers["X-Forgejo-Signature"] = hashlib.sha256(body).hexdigest()
            elif signing == "garbage":
                headers["X-Hub-Signature-256"] = data.draw(latin1(st.text(max_size=70)))
            before = t.state()
            answer = t.call("POST", "/webhooks/forgejo", headers=headers, body=body)
            tally.count(answer, f"webhook {signing}", changed=t.state() != before)

        case()
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="cases per surface")
    parser.add_argument("--quick", action="store_true", help="300 cases per surface (CI)")
    args = parser.parse_args(argv)
    cases = 300 if args.quick else args.cases
    log = io.StringIO()
    configure_logging(level="error", json=True, stream=log)
    rows: list[Row] = []
    notes: list[str] = []
    failed = False
    for name, run in (("agent API", fuzz_agent_api), ("webhook", fuzz_webhook)):
        started = time.monotonic()
        tally = run(cases)
        took = time.monotonic() - started
        rows.append(
            (f"{name}: cases", str(tally.cases), f">= {cases}", verdict(tally.cases >= cases))
        )
        for measure, found in (
            ("5xx answers", tally.server_errors),
            ("errors not JSON", tally.non_json_errors),
            ("refusals that changed state", tally.changed_on_refusal),
        ):
            rows.append((f"{name}: {measure}", str(len(found)), "0", verdict(not found)))
            failed = failed or bool(found)
            notes += [f"{name}: {each}" for each in found[:5]]
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(tally.by_status.items()))
        notes.append(f"{name}: {tally.cases} cases in {took:.1f}s; answers by status: {statuses}")
    wheres = {
        line.get("error_type", "?") + " " + " < ".join(line.get("where", [])[-3:])
        for line in map(json.loads, log.getvalue().splitlines())
        if line.get("event") == "http.internal_error"
    } | {
        f"{line.get('event')}: {line.get('error_type', '')} {line.get('exception', '')[-300:]}"
        for line in map(json.loads, log.getvalue().splitlines())
        if line.get("level") == "error" and line.get("event") != "http.internal_error"
    }
    notes += [f"500 raised at {where}" for where in sorted(wheres)[:10]]
    print_table(rows)
    print_notes(notes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
