"""The configuration model of agent-fleet and the one function that loads it.

``load_settings(path, env=...)`` reads a TOML file, applies ``AGENT_FLEET_…`` environment
overrides (``__`` separates nesting levels: ``AGENT_FLEET_FORGEJO__URL``) and returns a frozen
``Settings``, or raises ``ConfigError`` listing every problem with its dotted field path.
Precedence, highest first: environment, file, defaults.

Loading is a pure function of (file text, environment): the daemon calls it again whenever the
file changes and keeps its old settings when the new file is invalid. There is no global
settings object; the CLI loads one and passes it down. ``render_reference()`` produces the field
tables of ``docs/configuration.md`` from the field descriptions (a test keeps them in sync).
"""

from reconciler.settings.approval import ApprovalSettings
from reconciler.settings.budgets import BudgetsSettings, TaskBudget
from reconciler.settings.hosts import BUILTIN_ADAPTERS, AdapterSettings, HostSettings
from reconciler.settings.labels import LabelName, LabelsSettings
from reconciler.settings.loading import (
    COMMAND_VARIABLES,
    load_settings,
)
from reconciler.settings.mcp import McpSettings
from reconciler.settings.reference import (
    FieldReference,
    iter_field_reference,
    nested_model,
    render_reference,
)
from reconciler.settings.schema import Settings
from reconciler.settings.sections import (
    ApiSettings,
    DashboardSettings,
    ForgejoSettings,
    LoopSettings,
    MatrixSettings,
    RetriesSettings,
    ReviewSettings,
    StatusContext,
    StoreSettings,
    TimeoutsSettings,
    WebhookSettings,
)
from reconciler.settings.values import (
    COMMAND_PLACEHOLDERS,
    ENV_NESTING,
    ENV_PREFIX,
    CapabilityName,
    Color,
    HostName,
    HttpUrlText,
    MatrixRoomId,
    MatrixUserId,
    RepoNameText,
    RoleName,
    Seconds,
    Secret,
    Section,
    label_scope,
)

__all__ = [
    "BUILTIN_ADAPTERS",
    "COMMAND_PLACEHOLDERS",
    "COMMAND_VARIABLES",
    "ENV_NESTING",
    "ENV_PREFIX",
    "AdapterSettings",
    "ApiSettings",
    "ApprovalSettings",
    "BudgetsSettings",
    "CapabilityName",
    "Color",
    "DashboardSettings",
    "FieldReference",
    "ForgejoSettings",
    "HostName",
    "HostSettings",
    "HttpUrlText",
    "LabelName",
    "LabelsSettings",
    "LoopSettings",
    "MatrixRoomId",
    "MatrixSettings",
    "MatrixUserId",
    "McpSettings",
    "RepoNameText",
    "RetriesSettings",
    "ReviewSettings",
    "RoleName",
    "Seconds",
    "Secret",
    "Section",
    "Settings",
    "StatusContext",
    "StoreSettings",
    "TaskBudget",
    "TimeoutsSettings",
    "WebhookSettings",
    "iter_field_reference",
    "label_scope",
    "load_settings",
    "nested_model",
    "render_reference",
]
