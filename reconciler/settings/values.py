"""The value types and validators every settings section uses: durations, URLs, secrets,
colours, names, the label scope rule and the ``Section`` base. ``reconciler.settings``'s
section modules and the model in ``schema.py`` import them."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import PydanticCustomError

ENV_PREFIX = "AGENT_FLEET_"
ENV_NESTING = "__"

# Placeholders an adapter's command may use; the executor substitutes each argv element.
COMMAND_PLACEHOLDERS = frozenset({"prompt", "workdir", "session_id"})


def _custom(kind: str, message: str) -> PydanticCustomError:
    """A validation error with a finished message (pydantic shows it without a prefix)."""
    return PydanticCustomError(kind, message)


def _name_matching(pattern: str, what: str, example: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise _custom(
                "invalid_name", f"{value!r} is not a valid {what} (expected e.g. {example!r})"
            )
        return value

    return AfterValidator(check)


_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def _http_url(value: object) -> str:
    """Validate as an http(s) URL and keep it as text without a trailing slash."""
    try:
        url = _HTTP_URL.validate_python(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        # Re-raised as a custom error so the message keeps its wording and gains no prefix.
        raise _custom(first["type"], first["msg"]) from None
    return str(url).rstrip("/")


def _not_empty_secret(value: SecretStr) -> SecretStr:
    if not value.get_secret_value():
        raise _custom("empty_secret", "must not be empty; leave the key out instead")
    return value


def _hex_color(value: str) -> str:
    if not re.fullmatch(r"#?[0-9a-fA-F]{6}", value):
        raise _custom("invalid_color", f"{value!r} is not a colour like '#d93f0b'")
    return "#" + value.removeprefix("#").lower()


Seconds = Annotated[float, Field(gt=0)]
HttpUrlText = Annotated[str, BeforeValidator(_http_url)]
Secret = Annotated[SecretStr, AfterValidator(_not_empty_secret)]
Color = Annotated[str, AfterValidator(_hex_color)]
RepoNameText = Annotated[
    str, _name_matching(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", "repository", "owner/name")
]
HostName = Annotated[str, _name_matching(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "host name", "build-01")]
RoleName = Annotated[str, _name_matching(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "role", "developer")]
CapabilityName = Annotated[
    str, _name_matching(r"[A-Za-z0-9][A-Za-z0-9_.:+-]*", "capability", "code:python")
]
MatrixUserId = Annotated[
    str, _name_matching(r"@[^:\s]+:\S+", "Matrix user id", "@agent-fleet:example.org")
]
# Room ids of room version 12 (Synapse's default) carry no ":server" part (`!AbC…`); older
# ones do (`!AbC:example.org`); an alias always does (`#fleet:example.org`).
MatrixRoomId = Annotated[
    str,
    _name_matching(
        r"![^:\s]+(:\S+)?|#[^:\s]+:\S+", "Matrix room id or alias", "!abc123 or #fleet:example.org"
    ),
]


def label_scope(name: str) -> str | None:
    """The scope Forgejo derives from a label name: the text before the last "/".

    Like Forgejo, a "/" in first or last position gives no scope (``/x``, ``x/``).
    """
    cut = name.rfind("/")
    if cut <= 0 or cut == len(name) - 1:
        return None
    return name[:cut]


def _describe_scope(scope: str | None) -> str:
    return "no scope" if scope is None else f"scope {scope!r}"


class Section(BaseModel):
    """Base of every section: immutable, and an unknown key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_below(value: float, floor: float | None, *, name: str) -> float:
    if floor is not None and value < floor:
        raise _custom("range", f"must be at least {name} ({floor:g})")
    return value
