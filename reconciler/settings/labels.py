"""The ``[labels]`` section: the label vocabulary on Forgejo, its scope checks and the label
specs to ensure in each repository. The model in ``schema.py`` uses it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
)

from reconciler.settings.values import (
    Color,
    Section,
    _custom,
    _describe_scope,
    label_scope,
)

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
    approved: LabelName = Field(
        default="fleet/approved",
        description=(
            "A maintainer's approval of an issue whose author is not trusted: its task waits "
            "until a trusted user other than the author adds it."
        ),
    )
    question: LabelName = Field(
        default="fleet/question",
        description="A question an agent asked (through the fleet's `ask` tool) for people or "
        "a role; its task waits until the issue is closed with the answer.",
    )
    decision: LabelName = Field(
        default="fleet/decision",
        description="A decision an agent asked for (the `decide` tool), listing the options; "
        "its task waits until a trusted user closes it stating the option chosen.",
    )
    assign_prefix: LabelName = Field(
        default="fleet/assign:", description="Prefix of pin labels: `fleet/assign:<agent-id>`."
    )
    budget_prefix: LabelName = Field(
        default="budget/",
        description="Prefix of budget labels, which override the role's task budget: "
        "`budget/5usd` (dollars), `budget/200k` or `budget/2m` (tokens).",
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
    color_approved: Color = Field(default="#2cbe4e", description="Colour of the approval label.")
    color_question: Color = Field(default="#cc317c", description="Colour of the question label.")
    color_decision: Color = Field(default="#fef2c0", description="Colour of the decision label.")

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

    def duplicate_names(self) -> Iterator[tuple[str, str]]:
        """(field, other field) for every label name used by two fields."""
        owner: dict[str, str] = {}
        for field in (
            "trigger",
            "retry",
            "hold",
            "approved",
            "question",
            "decision",
            *_PRIORITY_FIELDS,
            *_STATUS_FIELDS,
        ):
            name = getattr(self, field)
            if name in owner:
                yield field, owner[name]
            owner.setdefault(name, field)
