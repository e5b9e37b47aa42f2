"""The configuration model: every section and field of agent-fleet's settings, with their
validation. ``reconciler.settings.loading`` reads a file and the environment into it."""

from __future__ import annotations

import contextlib
import os
import re
import string
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    NonNegativeFloat,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

ENV_PREFIX = "AGENT_FLEET_"
ENV_NESTING = "__"

# Placeholders an adapter's command may use; the executor substitutes each argv element.
COMMAND_PLACEHOLDERS = frozenset({"prompt", "workdir", "session_id"})


# --- value types ---------------------------------------------------------------------------


def _raw_host_problems(data: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """Unknown adapters and duplicate names of ``[[hosts]]`` in unvalidated input."""
    if not isinstance(data, Mapping) or not isinstance(data.get("hosts"), list | tuple):
        return []
    adapters = data.get("adapters")
    known = set(BUILTIN_ADAPTERS) | (set(adapters) if isinstance(adapters, Mapping) else set())
    problems: list[tuple[tuple[str | int, ...], str]] = []
    first_index: dict[str, int] = {}
    for index, host in enumerate(data["hosts"]):
        if not isinstance(host, Mapping):
            continue
        name, adapter = host.get("name"), host.get("adapter", "claude-code")
        if isinstance(name, str):
            if name in first_index:
                problems.append(
                    (
                        ("hosts", index, "name"),
                        f"duplicate host name {name!r} (also hosts.{first_index[name]})",
                    )
                )
            first_index.setdefault(name, index)
        if isinstance(adapter, str) and adapter not in known:
            problems.append(
                (
                    ("hosts", index, "adapter"),
                    f"no adapter named {adapter!r} in [adapters] (known: {', '.join(sorted(known))})",
                )
            )
    return problems


def _details_of(exc: ValidationError) -> list[InitErrorDetails]:
    """A ValidationError's errors as details to raise again (their messages kept)."""
    return [
        InitErrorDetails(
            type=_custom(error["type"], error["msg"]),
            loc=tuple(error["loc"]),
            input=error.get("input"),
        )
        for error in exc.errors()
    ]


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


# --- sections ------------------------------------------------------------------------------


class ForgejoSettings(Section):
    """Where the desired state lives."""

    url: HttpUrlText = Field(
        description="Base URL of the Forgejo instance, without /api/v1.",
    )
    token: Secret = Field(
        description="API token of the bot account (scopes: issue and repository read/write).",
    )
    repos: tuple[RepoNameText, ...] = Field(
        default=(), description='Repositories to watch, each as "owner/name".'
    )
    bot_login: str = Field(
        min_length=1,
        description="Login of the bot account; only comments by this account are edited.",
    )
    timeout: Seconds = Field(default=30.0, description="Seconds to wait for one API call.")
    read_retries: int = Field(
        default=3,
        ge=0,
        description="Extra attempts for a read that failed with a connection error, 5xx or 429.",
    )
    webhook_url: HttpUrlText | None = Field(
        default=None,
        description="URL Forgejo should deliver webhooks to; used when manage_webhooks is on.",
    )
    manage_webhooks: bool = Field(
        default=False,
        description="Create or update the webhook on each watched repository (needs webhook_url).",
    )
    manage_labels: bool = Field(
        default=True,
        description="Create the label vocabulary in each watched repository.",
    )
    trusted_authors: tuple[str, ...] = Field(
        default=(),
        description=(
            "Logins whose issue text and comments go into agent prompts besides the "
            "repository's collaborators with write access (everyone else's text is left out)."
        ),
    )

    @field_validator("url")
    @classmethod
    def _no_api_suffix(cls, value: str) -> str:
        if value.rstrip("/").endswith("/api/v1"):
            raise _custom("forgejo_url", "give the base URL of the instance, without /api/v1")
        return value

    @field_validator("repos")
    @classmethod
    def _repos_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for repo in value:
            if repo.lower() in seen:
                raise _custom("duplicate_repo", f"{repo!r} is listed twice")
            seen.add(repo.lower())
        return value


def _not_below(value: float, floor: float | None, *, name: str) -> float:
    if floor is not None and value < floor:
        raise _custom("range", f"must be at least {name} ({floor:g})")
    return value


# The controllers a process runs (reconciler/keys.py names their keys the same way).
CONTROLLER_NAMES = ("assignment", "registry", "review", "receipts")


class LoopSettings(Section):
    """The work queue and the periodic resync."""

    workers: int = Field(
        default=4,
        ge=1,
        description="Keys each controller reconciles concurrently, on workers of its own "
        "(unless controller_workers says otherwise for it).",
    )
    controller_workers: Mapping[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="Workers of one controller (assignment, registry, review, receipts), "
        "e.g. { registry = 2 }; a slow controller never takes another's workers.",
    )
    health_check_workers: int = Field(
        default=16,
        ge=1,
        description="ssh health checks and restarts of [[hosts]] run at once, beside the loop.",
    )
    resync_interval: Seconds = Field(
        default=60.0, description="Seconds between polls of recently updated issues and PRs."
    )
    resync_jitter: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="Random spread of each resync interval, as a fraction of it (at least 0, below 1).",
    )
    full_resync_interval: Seconds = Field(
        default=3600.0, description="Seconds between full relists of every watched repository."
    )
    backoff_initial: Seconds = Field(
        default=1.0, description="First delay in seconds before a failed key is retried."
    )
    backoff_max: Seconds = Field(
        default=600.0, description="Longest delay in seconds between retries of a failed key."
    )
    shutdown_grace: Seconds = Field(
        default=30.0, description="Seconds in-flight keys may take to finish after SIGTERM."
    )
    stuck_after: Seconds = Field(
        default=600.0,
        description="Seconds one reconcile may run before /readyz reports its worker stuck.",
    )

    @field_validator("backoff_max")
    @classmethod
    def _max_not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        return _not_below(value, info.data.get("backoff_initial"), name="backoff_initial")

    @field_validator("controller_workers")
    @classmethod
    def _known_controllers(cls, value: Mapping[str, int]) -> Mapping[str, int]:
        unknown = sorted(set(value) - set(CONTROLLER_NAMES))
        if unknown:
            raise ValueError(
                f"no controller named {', '.join(unknown)}; the controllers are "
                + ", ".join(CONTROLLER_NAMES)
            )
        return value

    def workers_of(self, controller: str) -> int:
        """How many workers reconcile ``controller``'s keys."""
        return self.controller_workers.get(controller, self.workers)


class WebhookSettings(Section):
    """The HTTP server that receives Forgejo webhooks and serves the agent API."""

    bind: str = Field(default="127.0.0.1", min_length=1, description="Address to listen on.")
    port: int = Field(
        default=8080,
        ge=0,
        le=65535,
        description="TCP port to listen on; 0 picks a free port (the daemon logs the one it bound).",
    )
    secret: Secret | None = Field(
        default=None,
        description="Webhook secret shared with Forgejo; without it deliveries are not verified.",
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1, description="Largest request body accepted, in bytes."
    )
    threads: int = Field(default=4, ge=1, description="Worker threads of the HTTP server.")
    connection_limit: int = Field(
        default=1000,
        ge=10,
        description=(
            "Open connections the HTTP server holds at once; past it, new ones wait until one "
            "closes (keep it below the process's open-file limit)."
        ),
    )
    channel_timeout: int = Field(
        default=30,
        ge=1,
        description="Seconds a connection may send nothing before the HTTP server closes it.",
    )
    cleanup_interval: int = Field(
        default=2,
        ge=1,
        description="Seconds between the HTTP server's sweeps for connections past channel_timeout.",
    )


class ApiSettings(Section):
    """The agent API: who may read, who may register, how liveness is judged."""

    operator_token: Secret | None = Field(
        default=None,
        description="Bearer token for the read endpoints used by people and tools.",
    )
    enrolment_secret: Secret | None = Field(
        default=None,
        description="Secret a pull agent presents to register (or re-register) an agent id.",
    )
    heartbeat_interval: Seconds = Field(
        default=60.0, description="Seconds between heartbeats an agent is asked to send."
    )
    missed_heartbeats: int = Field(
        default=3, ge=1, description="Missed heartbeats after which an agent is offline."
    )
    drain_after_failed_runs: int = Field(
        default=3,
        ge=0,
        description="Failed runs in a row after which a pull agent is drained automatically "
        "(a successful run or an undrain ends it); 0: never.",
    )
    token_prices: Mapping[str, NonNegativeFloat] = Field(
        default_factory=dict,
        description="USD per million tokens by agent type (e.g. `codex-cli = 2.5`): the cost of "
        "a run whose CLI reports none is estimated from its tokens, and marked estimated.",
    )


class DashboardSettings(Section):
    """The live fleet page the daemon serves to people (docs/dashboard.md)."""

    enabled: bool = Field(default=True, description="Serve the fleet page.")
    path: str = Field(
        default="/",
        pattern=r"^/([A-Za-z0-9_.-]+/)*$",
        description="Where the page lives: `/`, or a prefix such as `/fleet/` (starts and "
        "ends with a slash).",
    )
    read_only_without_token: bool = Field(
        default=False,
        description="Show the page to anyone who can reach it, without the operator token "
        "(the page has no actions; tokens are never shown).",
    )
    refresh_interval: Seconds = Field(
        default=5.0, description="Seconds between the page's updates of itself."
    )
    session_ttl: Seconds = Field(
        default=43_200.0, description="Seconds a login through the page's form lasts."
    )


class StoreSettings(Section):
    """Local state: agents, task bookkeeping, receipts, event log, outbox."""

    path: Path = Field(
        default=Path("./var/agent-fleet"),
        description="Directory for local state (relative to the daemon's working directory).",
    )
    archive_after: Seconds = Field(
        default=604_800.0,
        description="Seconds a finished task stays in the live store before it is archived.",
    )


@dataclass(frozen=True)
class LabelSpec:
    """One label agent-fleet ensures in a repository."""

    name: str
    color: str
    description: str
    exclusive: bool


_STATUS_FIELDS = ("status_todo", "status_doing", "status_review", "status_done", "status_failed")
_PRIORITY_FIELDS = ("priority_high", "priority_medium", "priority_low")


LabelName = Annotated[str, Field(min_length=1, max_length=50)]


class LabelsSettings(Section):
    """The label vocabulary on Forgejo; every name can be changed."""

    trigger: LabelName = Field(
        default="fleet/task", description="Marks an issue as work for the fleet."
    )
    role_prefix: LabelName = Field(
        default="agent/", description="Prefix of role labels: `agent/<role>` requires that role."
    )
    capability_prefix: LabelName = Field(
        default="needs/", description="Prefix of capability labels: `needs/<capability>`."
    )
    priority_high: LabelName = Field(default="priority/high", description="High priority.")
    priority_medium: LabelName = Field(
        default="priority/medium", description="Medium priority (also the default order)."
    )
    priority_low: LabelName = Field(default="priority/low", description="Low priority.")
    status_todo: LabelName = Field(
        default="status/todo", description="Status: waiting for an agent."
    )
    status_doing: LabelName = Field(
        default="status/doing", description="Status: an agent is working on it."
    )
    status_review: LabelName = Field(
        default="status/review", description="Status: a pull request awaits review."
    )
    status_done: LabelName = Field(default="status/done", description="Status: completed.")
    status_failed: LabelName = Field(default="status/failed", description="Status: failed.")
    retry: LabelName = Field(
        default="fleet/retry", description="A person asks for a retry; removed once requeued."
    )
    hold: LabelName = Field(
        default="fleet/hold", description="Pauses the task; nothing is dispatched meanwhile."
    )
    assign_prefix: LabelName = Field(
        default="fleet/assign:", description="Prefix of pin labels: `fleet/assign:<agent-id>`."
    )
    color_trigger: Color = Field(default="#1d76db", description="Colour of the trigger label.")
    color_role: Color = Field(default="#5319e7", description="Colour of role labels.")
    color_capability: Color = Field(default="#0e8a16", description="Colour of capability labels.")
    color_priority_high: Color = Field(default="#b60205", description="Colour of priority_high.")
    color_priority_medium: Color = Field(
        default="#fbca04", description="Colour of priority_medium."
    )
    color_priority_low: Color = Field(default="#c2e0c6", description="Colour of priority_low.")
    color_status_todo: Color = Field(default="#ededed", description="Colour of status_todo.")
    color_status_doing: Color = Field(default="#0052cc", description="Colour of status_doing.")
    color_status_review: Color = Field(default="#d4c5f9", description="Colour of status_review.")
    color_status_done: Color = Field(default="#0e8a16", description="Colour of status_done.")
    color_status_failed: Color = Field(default="#d93f0b", description="Colour of status_failed.")
    color_retry: Color = Field(default="#f9d0c4", description="Colour of the retry label.")
    color_hold: Color = Field(default="#000000", description="Colour of the hold label.")
    color_assign: Color = Field(default="#bfdadc", description="Colour of pin labels.")

    @field_validator(*_STATUS_FIELDS, *_PRIORITY_FIELDS)
    @classmethod
    def _one_scope_per_group(cls, value: str, info: ValidationInfo) -> str:
        # Forgejo keeps one label per exclusive scope on an issue; that is what makes "one
        # status at a time" hold, so every status label must share a scope (same for priority).
        group = _STATUS_FIELDS if info.field_name in _STATUS_FIELDS else _PRIORITY_FIELDS
        kind, first = group[0].split("_")[0], group[0]
        scope = label_scope(value)
        if info.field_name == first:
            if scope is None:
                raise _custom(
                    "label_scope",
                    f"{kind} labels need a scope, the text before the last '/' (e.g. "
                    f"'{kind}/...'), so Forgejo keeps only one per issue; {value!r} has none",
                )
            return value
        head = info.data.get(first)
        if head is not None and scope != label_scope(head):
            raise _custom(
                "label_scope",
                f"all {kind} labels must share one scope (the text before the last '/') so "
                f"Forgejo keeps only one per issue: {value!r} has {_describe_scope(scope)} but "
                f"{first} {head!r} has {_describe_scope(label_scope(head))}",
            )
        return value

    def role_spec(self, role: str) -> LabelSpec:
        """The label that requires ``role``."""
        return LabelSpec(
            self.role_prefix + role, self.color_role, f"Needs an agent with role {role}.", False
        )

    def capability_spec(self, capability: str) -> LabelSpec:
        """The label that requires ``capability``."""
        return LabelSpec(
            self.capability_prefix + capability,
            self.color_capability,
            f"Needs an agent with capability {capability}.",
            False,
        )

    def assign_spec(self, agent_id: str) -> LabelSpec:
        """The label that pins a task to ``agent_id``."""
        return LabelSpec(
            self.assign_prefix + agent_id,
            self.color_assign,
            f"agent-fleet runs this task on agent {agent_id} only.",
            False,
        )

    def specs(
        self, *, roles: tuple[str, ...] = (), capabilities: tuple[str, ...] = ()
    ) -> tuple[LabelSpec, ...]:
        """The labels to create in a watched repository; only status and priority are exclusive."""
        fixed = (
            LabelSpec(self.trigger, self.color_trigger, "Work for agent-fleet.", False),
            LabelSpec(self.priority_high, self.color_priority_high, "Priority: high.", True),
            LabelSpec(self.priority_medium, self.color_priority_medium, "Priority: medium.", True),
            LabelSpec(self.priority_low, self.color_priority_low, "Priority: low.", True),
            LabelSpec(
                self.status_todo,
                self.color_status_todo,
                "Waiting for an agent (set by agent-fleet).",
                True,
            ),
            LabelSpec(
                self.status_doing,
                self.color_status_doing,
                "An agent is working on it (set by agent-fleet).",
                True,
            ),
            LabelSpec(
                self.status_review,
                self.color_status_review,
                "Pull request awaits review (set by agent-fleet).",
                True,
            ),
            LabelSpec(
                self.status_done, self.color_status_done, "Completed (set by agent-fleet).", True
            ),
            LabelSpec(
                self.status_failed, self.color_status_failed, "Failed (set by agent-fleet).", True
            ),
            LabelSpec(
                self.retry,
                self.color_retry,
                "Ask agent-fleet to retry; removed once requeued.",
                False,
            ),
            LabelSpec(self.hold, self.color_hold, "Paused: agent-fleet dispatches nothing.", False),
        )
        wanted = (
            fixed
            + tuple(self.role_spec(role) for role in dict.fromkeys(roles))
            + tuple(self.capability_spec(cap) for cap in dict.fromkeys(capabilities))
        )
        return wanted

    def duplicate_names(self) -> Iterator[tuple[str, str]]:
        """(field, other field) for every label name used by two fields."""
        owner: dict[str, str] = {}
        for field in ("trigger", "retry", "hold", *_PRIORITY_FIELDS, *_STATUS_FIELDS):
            name = getattr(self, field)
            if name in owner:
                yield field, owner[name]
            owner.setdefault(name, field)


class MatrixSettings(Section):
    """The Matrix room for notifications and !fleet commands (see docs/matrix.md)."""

    enabled: bool = Field(default=False, description="Post to Matrix and accept commands.")
    homeserver: HttpUrlText | None = Field(
        default=None, description="Base URL of the homeserver (required when enabled)."
    )
    user_id: MatrixUserId | None = Field(
        default=None, description="The bot's Matrix user id (required when enabled)."
    )
    access_token: Secret | None = Field(
        default=None, description="The bot's access token (required when enabled)."
    )
    room_id: MatrixRoomId | None = Field(
        default=None, description="Room id or alias of the fleet room (required when enabled)."
    )
    allowed_users: tuple[MatrixUserId, ...] = Field(
        default=(), description="Matrix users whose !fleet commands are obeyed."
    )
    device_name: str = Field(
        default="agent-fleet", min_length=1, description="Device name of the bot's session."
    )
    forgejo_logins: Mapping[MatrixUserId, str] = Field(
        default_factory=dict,
        description=(
            "Matrix user → Forgejo login; a mapped user's write access to the repo is checked "
            "before a command acts."
        ),
    )
    mention_users: tuple[MatrixUserId, ...] = Field(
        default=(), description="Matrix users mentioned in messages that need a person."
    )
    max_text_length: int = Field(
        default=300,
        ge=40,
        description="Text from agents, issues and reviews is cut to this many characters.",
    )
    poll_interval: Seconds = Field(
        default=1.0, description="Seconds between looks at the event log and the outbox."
    )
    sync_timeout: Seconds = Field(
        default=20.0, description="Seconds one /sync long-poll waits for new room events."
    )
    retry_initial: Seconds = Field(
        default=1.0, description="First wait before delivering again after a failure."
    )
    retry_max: Seconds = Field(
        default=60.0, description="Longest wait between deliveries while the homeserver is away."
    )

    REQUIRED_WHEN_ENABLED: ClassVar[tuple[str, ...]] = (
        "homeserver",
        "user_id",
        "access_token",
        "room_id",
    )


def _check_placeholders(argv: tuple[str, ...]) -> tuple[str, ...]:
    known = ", ".join("{" + name + "}" for name in sorted(COMMAND_PLACEHOLDERS))
    for index, arg in enumerate(argv):
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(arg) if name is not None]
        except ValueError as exc:
            raise _custom(
                "command_template",
                f"argument {index} {arg!r}: {exc} (write a literal brace as {{{{ or }}}})",
            ) from None
        for name in fields:
            if name not in COMMAND_PLACEHOLDERS:
                raise _custom(
                    "command_template",
                    f"argument {index} {arg!r}: unknown placeholder {{{name}}}; known: {known}",
                )
    return argv


class AdapterSettings(Section):
    """How to run one kind of agent CLI and read its output."""

    command: tuple[str, ...] = Field(
        min_length=1,
        description="Argv template; each element may use {prompt}, {workdir}, {session_id}.",
    )
    parser: Literal["claude-json", "codex-jsonl", "raw"] = Field(
        default="raw", description="How the output is read: summary, session id, cost, tokens."
    )
    env: Mapping[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the command."
    )
    resume_command: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description="Argv template to continue a session; must use {session_id}.",
    )
    package: str | None = Field(
        default=None,
        pattern=r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*@[0-9]+\.[0-9]+\.[0-9]+[0-9A-Za-z.+-]*$",
        description="The npm package of the CLI, pinned to an exact version "
        "(`@openai/codex@0.169.0`): what `agent-fleet hosts install` installs.",
    )

    @field_validator("command")
    @classmethod
    def _command_placeholders(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_placeholders(value)

    @field_validator("resume_command")
    @classmethod
    def _resume_placeholders(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        _check_placeholders(value)
        if not any("{session_id}" in arg for arg in value):
            raise _custom("command_template", "must contain {session_id}")
        return value


# Only the agent's git worktree and the task prompt vary between runs; the executor sets the
# working directory (Claude Code has no --cwd flag) and passes stdin=/dev/null.
BUILTIN_ADAPTERS: Mapping[str, AdapterSettings] = {
    "claude-code": AdapterSettings(
        command=(
            "claude", "-p", "{prompt}", "--output-format", "json",
            "--permission-mode", "bypassPermissions",
        ),
        parser="claude-json",
        resume_command=(
            "claude", "-p", "{prompt}", "--resume", "{session_id}", "--output-format", "json",
            "--permission-mode", "bypassPermissions",
        ),
        package="@anthropic-ai/claude-code@2.1.329",
    ),
    # danger-full-access: with workspace-write Codex cannot commit in a git worktree (the
    # worktree's index lives under the main repository's .git, which it keeps read-only), and
    # `exec resume` takes no --sandbox flag (a resumed run would silently be read-only).
    "codex": AdapterSettings(
        command=(
            "codex", "exec", "--json", "--color", "never", "--sandbox", "danger-full-access",
            "--cd", "{workdir}", "{prompt}",
        ),
        parser="codex-jsonl",
        resume_command=(
            "codex", "exec", "resume", "{session_id}", "--json",
            "-c", 'sandbox_mode="danger-full-access"', "{prompt}",
        ),
        package="@openai/codex@0.169.0",
    ),
}  # fmt: skip


class HostSettings(Section):
    """One ssh host declared in the file; it becomes an agent that is pushed tasks over ssh."""

    name: HostName = Field(description="Unique name; also the agent id (`fleet/assign:<name>`).")
    address: str = Field(
        min_length=1, description='Host name or IP; "localhost" runs locally without ssh.'
    )
    port: int = Field(default=22, ge=1, le=65535, description="ssh port.")
    user: str | None = Field(default=None, description="ssh user (unset: ssh's default).")
    key_file: Path | None = Field(
        default=None, description="Private key file (unset: ssh agent and ssh config)."
    )
    known_hosts_file: Path | None = Field(
        default=None,
        description=(
            "known_hosts file holding this host's key (unset: ~/.ssh/known_hosts, "
            "/etc/ssh/ssh_known_hosts and the host's ssh config); unknown keys are refused."
        ),
    )
    agent_type: str = Field(
        default="claude-code", min_length=1, description="Kind of agent, e.g. claude-code, codex."
    )
    adapter: str = Field(
        default="claude-code", description="Name of the entry in [adapters] used to run tasks."
    )
    roles: tuple[RoleName, ...] = Field(default=(), description="Roles this agent takes.")
    capabilities: tuple[CapabilityName, ...] = Field(
        default=(), description="Capabilities this agent offers, e.g. code:python."
    )
    max_concurrency: int = Field(default=1, ge=1, description="Tasks run at the same time.")
    cli_prefix: str = Field(
        default="~/.local",
        min_length=1,
        description="npm prefix `agent-fleet hosts install` installs the agent CLI into "
        "(`<prefix>/bin` must be on the host's PATH).",
    )
    forgejo_login: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,39}$",
        description="The agent's own Forgejo account: the issues of its tasks are assigned "
        "to it (unset: no assignee).",
    )
    workdir: str = Field(
        min_length=1, description="Directory on the host where task worktrees are created."
    )
    restart_command: str | None = Field(
        default=None, description="Shell command run on the host after repeated health failures."
    )
    health_interval: Seconds = Field(default=60.0, description="Seconds between health checks.")
    failures_before_offline: int = Field(
        default=3, ge=1, description="Consecutive failed checks before the host is offline."
    )
    min_free_disk_mb: int = Field(
        default=1024,
        ge=0,
        description="Free disk (MiB) in workdir below which the host is unhealthy.",
    )

    @property
    def is_local(self) -> bool:
        """True when tasks run on this machine without ssh."""
        return self.address == "localhost"


class TimeoutsSettings(Section):
    """How long things may take."""

    task_default: Seconds = Field(
        default=3600.0, description="Seconds an agent run may take before the task fails."
    )
    per_role: Mapping[str, Seconds] = Field(
        default_factory=dict, description="Task timeout in seconds by required role."
    )
    per_label: Mapping[str, Seconds] = Field(
        default_factory=dict, description="Task timeout in seconds by issue label (wins over role)."
    )
    dispatch: Seconds = Field(
        default=30.0, description="Seconds to connect over ssh and start a run."
    )

    def for_task(self, *, roles: tuple[str, ...], labels: tuple[str, ...]) -> float:
        """The timeout of a task: the longest matching per_label, else per_role, else default."""
        by_label = [self.per_label[label] for label in labels if label in self.per_label]
        if by_label:
            return max(by_label)
        by_role = [self.per_role[role] for role in roles if role in self.per_role]
        return max(by_role) if by_role else self.task_default


class RetriesSettings(Section):
    """How often a task is tried again."""

    max_retries: int = Field(default=3, ge=0, description="Retries after a failed run.")
    backoff_initial: Seconds = Field(
        default=60.0, description="Seconds before the first retry of a failed task."
    )
    backoff_max: Seconds = Field(
        default=3600.0, description="Longest delay in seconds between task retries."
    )
    max_review_rounds: int = Field(
        default=3, ge=1, description="Review rounds requesting changes before the task fails."
    )
    requeue_closed_unmerged: bool = Field(
        default=False,
        description="Retry a task whose PR was closed unmerged, instead of failing it.",
    )

    @field_validator("backoff_max")
    @classmethod
    def _max_not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        return _not_below(value, info.data.get("backoff_initial"), name="backoff_initial")


StatusContext = Annotated[str, Field(min_length=1, max_length=255)]


class ReviewSettings(Section):
    """Pull requests, reviews and the verification of receipts."""

    required_statuses: tuple[StatusContext, ...] = Field(
        default=(),
        description="Commit status contexts that must be success on a pull request's head "
        "before its task completes (e.g. ci/build); empty: no status is required.",
    )
    close_issue: bool = Field(
        default=False,
        description="Close the task's issue when the task completes (Forgejo also closes it "
        "on merge when the pull request body says Closes #N).",
    )
    receipt_grace: Seconds = Field(
        default=120.0,
        description="Seconds a running task's agent has after its last push to hand in the "
        "receipt for its open pull request; past it the task goes to review without one.",
    )
    status_recheck: Seconds = Field(
        default=60.0,
        description="Seconds between looks at required statuses still pending on a merged "
        "pull request.",
    )

    @field_validator("required_statuses")
    @classmethod
    def _contexts_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise _custom("duplicate_context", "a status context is listed twice")
        return value


# --- the model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _LoadInputs:
    """What one ``load_settings`` call reads: the parsed file and the environment."""

    file_data: Mapping[str, Any]
    environment: Mapping[str, str]


# Set only while load_settings builds a Settings, so the sources read the caller's inputs
# instead of os.environ; a ContextVar keeps concurrent loads (e.g. a reload thread) apart.
_LOADING: ContextVar[_LoadInputs | None] = ContextVar("agent_fleet_settings_inputs", default=None)


class _EnvironmentSource(EnvSettingsSource):
    """``AGENT_FLEET_…`` variables, read from the mapping given to ``load_settings``."""

    def __init__(self, settings_cls: type[BaseSettings], environment: Mapping[str, str]) -> None:
        self._environment = environment
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environment, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class Settings(BaseSettings):
    """Everything agent-fleet reads from its configuration file and environment."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTING,
        case_sensitive=False,
    )

    forgejo: ForgejoSettings = Field(description="The Forgejo instance and what to watch.")
    loop: LoopSettings = Field(
        default_factory=LoopSettings, description="Work queue, resync and backoff."
    )
    webhook: WebhookSettings = Field(
        default_factory=WebhookSettings, description="The HTTP server for webhooks and the API."
    )
    api: ApiSettings = Field(
        default_factory=ApiSettings, description="Agent API access and heartbeats."
    )
    dashboard: DashboardSettings = Field(
        default_factory=DashboardSettings, description="The live fleet page."
    )
    store: StoreSettings = Field(default_factory=StoreSettings, description="Local state.")
    labels: LabelsSettings = Field(
        default_factory=LabelsSettings, description="The label vocabulary on Forgejo."
    )
    matrix: MatrixSettings = Field(
        default_factory=MatrixSettings, description="Matrix notifications and commands."
    )
    adapters: Mapping[str, AdapterSettings] = Field(
        default_factory=lambda: dict(BUILTIN_ADAPTERS),
        description="Agent CLIs by name; entries are added to the built-in claude-code and "
        "codex, and an entry of the same name replaces a built-in one.",
    )
    hosts: tuple[HostSettings, ...] = Field(
        default=(), description="ssh hosts that run agents, one [[hosts]] table each."
    )
    timeouts: TimeoutsSettings = Field(
        default_factory=TimeoutsSettings, description="Task and dispatch timeouts."
    )
    retries: RetriesSettings = Field(
        default_factory=RetriesSettings, description="Task retries and review rounds."
    )
    review: ReviewSettings = Field(
        default_factory=ReviewSettings,
        description="Pull requests, reviews and receipt verification.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then environment, then the file; no dotenv, no secrets dir."""
        inputs = _LOADING.get() or _LoadInputs(file_data={}, environment=os.environ)
        return (
            init_settings,
            _EnvironmentSource(settings_cls, inputs.environment),
            InitSettingsSource(settings_cls, init_kwargs=dict(inputs.file_data)),
        )

    @field_validator("adapters", mode="before")
    @classmethod
    def _keep_builtin_adapters(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {**BUILTIN_ADAPTERS, **value}
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _cross_check_despite_field_errors(cls, data: Any, handler: Any) -> Any:
        """When fields fail, the checks across sections below never run; the host checks
        are repeated on the raw values so that one pass reports them too."""
        try:
            return handler(data)
        except ValidationError as exc:
            reported = {tuple(error["loc"]) for error in exc.errors()}
            found = dict([*_raw_host_problems(data), *cls._section_problems(data)])
            extra = [
                InitErrorDetails(type=_custom("cross_check", message), loc=loc, input=None)
                for loc, message in found.items()
                if loc not in reported
            ]
            if not extra:
                raise
            raise ValidationError.from_exception_data(
                cls.__name__, [*_details_of(exc), *extra]
            ) from None

    @classmethod
    def _section_problems(cls, data: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """The checks across sections below, run on whichever of their sections validate by
        themselves, so a field error elsewhere does not hide them (config check, one pass)."""
        if not isinstance(data, Mapping):
            return []
        sections: dict[str, Any] = {}
        for name in ("forgejo", "matrix", "labels"):
            field = cls.model_fields[name]
            raw = data[name] if name in data else field.get_default(call_default_factory=True)
            try:
                sections[name] = TypeAdapter(field.annotation).validate_python(raw)
            except (ValidationError, TypeError):
                continue
        view = cls.model_construct(**sections)
        problems = []
        if "matrix" in sections:
            problems += list(view._matrix_problems())
        if "labels" in sections:
            problems += list(view._label_problems())
        forgejo = data.get("forgejo")
        if "forgejo" in sections:
            problems += list(view._forgejo_problems())
        elif isinstance(forgejo, Mapping) and forgejo.get("webhook_url") is None:
            # The section fails elsewhere (its URL, say): check the one pair this rule reads.
            manage = forgejo.get("manage_webhooks", False)
            with contextlib.suppress(ValidationError):
                if TypeAdapter(bool).validate_python(manage):
                    view = cls.model_construct(
                        forgejo=ForgejoSettings.model_construct(manage_webhooks=True)
                    )
                    problems += list(view._forgejo_problems())
        return problems

    @model_validator(mode="after")
    def _cross_check(self) -> Settings:
        """Checks that span sections, each reported at the field that must change."""
        problems = [
            *self._host_problems(),
            *self._matrix_problems(),
            *self._label_problems(),
            *self._forgejo_problems(),
        ]
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=_custom("cross_check", message),
                        loc=loc,
                        input=None,
                    )
                    for loc, message in problems
                ],
            )
        return self

    def _host_problems(self) -> Iterator[tuple[tuple[str | int, ...], str]]:
        first_index: dict[str, int] = {}
        for index, host in enumerate(self.hosts):
            if host.name in first_index:
                yield (
                    ("hosts", index, "name"),
                    f"duplicate host name {host.name!r} (also hosts.{first_index[host.name]})",
                )
            first_index.setdefault(host.name, index)
            if host.adapter not in self.adapters:
                known = ", ".join(sorted(self.adapters))
                yield (
                    ("hosts", index, "adapter"),
                    f"no adapter named {host.adapter!r} in [adapters] (known: {known})",
                )

    def _forgejo_problems(self) -> Iterator[tuple[tuple[str | int, ...], str]]:
        if self.forgejo.manage_webhooks and self.forgejo.webhook_url is None:
            yield ("forgejo", "webhook_url"), "required when forgejo.manage_webhooks = true"

    def _matrix_problems(self) -> Iterator[tuple[tuple[str | int, ...], str]]:
        if not self.matrix.enabled:
            return
        for field in MatrixSettings.REQUIRED_WHEN_ENABLED:
            if getattr(self.matrix, field) is None:
                yield ("matrix", field), "required when matrix.enabled = true"

    def _label_problems(self) -> Iterator[tuple[tuple[str | int, ...], str]]:
        labels = self.labels
        status, priority = label_scope(labels.status_todo), label_scope(labels.priority_high)
        if status == priority:
            message = (
                f"priority and status labels share the scope {status!r}; Forgejo would remove "
                "the status label whenever a priority is set"
            )
            yield ("labels", "priority_high"), message
        for field, other in labels.duplicate_names():
            yield ("labels", field), f"same label name as labels.{other}"

    def label_specs(self) -> tuple[LabelSpec, ...]:
        """The labels to ensure in each watched repo, with role/capability labels of the hosts."""
        return self.labels.specs(
            roles=tuple(role for host in self.hosts for role in host.roles),
            capabilities=tuple(cap for host in self.hosts for cap in host.capabilities),
        )

    def adapter_for(self, host: HostSettings) -> AdapterSettings:
        """The adapter a declared host runs its tasks with (validated to exist)."""
        return self.adapters[host.adapter]

    def warnings(self) -> tuple[str, ...]:
        """Valid but risky choices, for the CLI and the daemon's start-up log."""
        found: list[str] = []
        if self.webhook.secret is None:
            found.append(
                "webhook.secret is not set: webhook deliveries are accepted without a signature"
            )
        if not self.forgejo.repos:
            found.append("forgejo.repos is empty: no repository is watched")
        secrets = {
            "forgejo.token": self.forgejo.token,
            "webhook.secret": self.webhook.secret,
            "api.operator_token": self.api.operator_token,
            "api.enrolment_secret": self.api.enrolment_secret,
            "matrix.access_token": self.matrix.access_token,
        }
        for path, secret in secrets.items():
            if secret is not None and secret.get_secret_value().startswith("change-me"):
                found.append(f"{path} still holds the example placeholder")
        return tuple(found)
