"""The agent API's wire contract (``reconciler/fleet/api.py``): how refusals decode, how an
operation's URL is built, and that requests refuse what answers tolerate."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from reconciler.errors import (
    ConflictError,
    ForbiddenError,
    NotFoundError,
    RefusedError,
    TransientError,
    UnauthenticatedError,
)
from reconciler.fleet import api, operations


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, UnauthenticatedError),
        (403, ForbiddenError),
        (409, ConflictError),
        (400, RefusedError),
        (413, RefusedError),
    ],
)
def test_a_refusal_keeps_the_daemons_code_and_message(
    status: int, kind: type[RefusedError]
) -> None:
    """A 4xx error answer becomes the error module's class for its status, with its code."""
    error = api.refusal(status, b'{"error": "some_code", "message": "why"}', url="http://d/x")
    assert type(error) is kind
    assert error.code == "some_code" and "why" in str(error)


def test_not_found_busy_and_broken_answers_decode_as_such() -> None:
    """404 is NotFoundError; 429 and 5xx are transient, even with a body that is not JSON."""
    assert isinstance(
        api.refusal(404, b'{"error": "task_not_found", "message": "no"}', url="u"), NotFoundError
    )
    assert isinstance(api.refusal(429, b"{}", url="u"), TransientError)
    broken = api.refusal(502, b"<html>bad   gateway</html>", url="u")
    assert isinstance(broken, TransientError) and "http_502" in str(broken)
    odd = api.refusal(418, b"[1, 2]", url="u")
    assert type(odd) is RefusedError and odd.code == "http_418"


def test_an_operations_url_quotes_its_path_parameters() -> None:
    """A task id with a slash cannot reach another route."""
    url = operations.GET_TASK.url("http://d:8/", task_id="a/b c")
    assert url == "http://d:8/api/v1/tasks/a%2Fb%20c"
    assert operations.DRAIN.route == "/api/v1/agents/<agent_id>/drain"


@pytest.mark.parametrize("operation", operations.OPERATIONS, ids=lambda op: op.operation_id)
def test_every_path_parameter_of_an_operation_is_described(operation: operations.Operation) -> None:
    """The OpenAPI document describes exactly the parameters the path has."""
    assert set(re.findall(r"{(\w+)}", operation.path)) == set(operation.path_params)
    assert operation.path.startswith(operations.API)


def test_operation_ids_and_routes_are_unique() -> None:
    """No two operations share an id, or a method and path."""
    ids = [op.operation_id for op in operations.OPERATIONS]
    routes = [(op.method, op.path) for op in operations.OPERATIONS]
    assert len(set(ids)) == len(ids) and len(set(routes)) == len(routes)


def test_requests_refuse_unknown_fields_and_answers_ignore_them() -> None:
    """A misspelt request field is an error; a field a newer daemon added is not."""
    with pytest.raises(ValidationError):
        api.HeartbeatRequest.model_validate({"lode": 1})
    answer = api.StopItem.model_validate(
        {"task_id": "1-a", "code": "requeued", "reason": "r", "added_later": True}
    )
    assert answer.code == "requeued"
