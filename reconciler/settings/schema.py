"""The configuration model: every section and field of agent-fleet's settings, with their
validation. ``reconciler.settings.loading`` reads a file and the environment into it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pydantic import (
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from reconciler.settings.approval import ApprovalSettings
from reconciler.settings.budgets import BudgetsSettings
from reconciler.settings.hosts import BUILTIN_ADAPTERS, AdapterSettings, HostSettings
from reconciler.settings.labels import LabelsSettings
from reconciler.settings.mcp import McpSettings
from reconciler.settings.sections import (
    ApiSettings,
    DashboardSettings,
    ForgejoSettings,
    LoopSettings,
    MatrixSettings,
    RetriesSettings,
    ReviewSettings,
    StoreSettings,
    TimeoutsSettings,
    WebhookSettings,
)
from reconciler.settings.values import (
    ENV_NESTING,
    ENV_PREFIX,
    _custom,
    label_scope,
)


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
    approval: ApprovalSettings = Field(
        default_factory=ApprovalSettings,
        description="Work that always needs a maintainer's approval before it starts.",
    )
    budgets: BudgetsSettings = Field(
        default_factory=BudgetsSettings,
        description="Spending limits per task (role defaults, budget labels) and per UTC day.",
    )
    mcp: McpSettings = Field(
        default_factory=McpSettings,
        description="What agents may do through the fleet's MCP tools: questions, shared "
        "notes, their limits and trust.",
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
