"""The settings sections of the daemon's own machinery: Forgejo, the loop, the HTTP server,
the agent API, the fleet page, the store, Matrix, timeouts, retries and review. The model
in ``schema.py`` assembles them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import (
    Field,
    NonNegativeFloat,
    ValidationInfo,
    field_validator,
)

from reconciler.settings.values import (
    HttpUrlText,
    MatrixRoomId,
    MatrixUserId,
    RepoNameText,
    Seconds,
    Secret,
    Section,
    _custom,
    _not_below,
)


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
    permission_cache: Seconds = Field(
        default=60.0,
        description="Seconds a user's permission on a repository, once read, answers the "
        "trust checks (an issue author's, a reviewer's) before it is read again; 0 reads it "
        "every time. A permission taken away counts after at most this long.",
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
    task_token_secret: Secret | None = Field(
        default=None,
        description="Key of the task tokens `agent-fleet mcp` presents (docs/mcp.md); unset: a "
        "random key per daemon process, so runs started before a restart lose their fleet tools.",
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/\S*)?$",
        description="The daemon's URL as ssh hosts reach it (e.g. http://fleet.internal:8080): "
        "runs on ssh hosts get the fleet's MCP tools (docs/mcp.md) only when it is set.",
    )
    heartbeat_interval: Seconds = Field(
        default=60.0, description="Seconds between heartbeats an agent is asked to send."
    )
    missed_heartbeats: int = Field(
        default=3, ge=1, description="Missed heartbeats after which an agent is offline."
    )
    handout_grace: Seconds = Field(
        default=60.0,
        description="Seconds a pull agent has to mention a task it dequeued in its heartbeats; "
        "a task still `assigned` that its first heartbeat after this does not list is requeued "
        "(the dequeue answer was lost on its way).",
    )
    drain_after_failed_runs: int = Field(
        default=3,
        ge=0,
        description="Failed runs in a row after which a pull agent is drained automatically "
        "(a successful run or an undrain ends it); 0: never.",
    )
    token_prices: Mapping[str, NonNegativeFloat] = Field(
        default_factory=lambda: {"claude-code": 6.0, "codex-cli": 2.5},
        description="USD per million tokens by agent type (e.g. `codex-cli = 2.5`): the cost of "
        "a run whose CLI reports none is estimated from its tokens, and marked estimated (and "
        "judged against dollar budgets). A table here replaces the defaults.",
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
    queue_notice: Seconds = Field(
        default=30.0,
        description=(
            "Seconds a task waits for a free slot (every fitting agent busy, or a pull agent "
            "yet to ask) before its issue's status comment says so; a shorter wait posts "
            "nothing (agent-fleet status shows every wait at once). Other reasons to wait "
            "are said at once."
        ),
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
