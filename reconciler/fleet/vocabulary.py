"""The labels agent-fleet ensures in each watched repository, as the gateway's ``LabelSpec``:
the fixed vocabulary of ``[labels]`` (trigger, priorities, statuses, retry, hold, approval), the role and
capability labels of the declared hosts and the registered agents, and the pin labels. Built
here, in one place, from the settings: the repository set-up controller
(``controllers/setup.py``) ensures :func:`label_specs`, and the Matrix room's ``!fleet assign``
ensures the pin label it sets (:func:`assign_spec`).
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.forgejo.types import LabelSpec
from reconciler.settings import LabelsSettings, Settings

__all__ = ["assign_spec", "capability_spec", "label_specs", "role_spec", "vocabulary_specs"]


def role_spec(labels: LabelsSettings, role: str) -> LabelSpec:
    """The label that requires ``role``."""
    return LabelSpec(
        name=labels.role_prefix + role,
        color=labels.color_role,
        description=f"Needs an agent with role {role}.",
        exclusive=False,
    )


def capability_spec(labels: LabelsSettings, capability: str) -> LabelSpec:
    """The label that requires ``capability``."""
    return LabelSpec(
        name=labels.capability_prefix + capability,
        color=labels.color_capability,
        description=f"Needs an agent with capability {capability}.",
        exclusive=False,
    )


def assign_spec(labels: LabelsSettings, agent_id: str) -> LabelSpec:
    """The label that pins a task to ``agent_id``."""
    return LabelSpec(
        name=labels.assign_prefix + agent_id,
        color=labels.color_assign,
        description=f"agent-fleet runs this task on agent {agent_id} only.",
        exclusive=False,
    )


def vocabulary_specs(
    labels: LabelsSettings, *, roles: tuple[str, ...] = (), capabilities: tuple[str, ...] = ()
) -> tuple[LabelSpec, ...]:
    """The labels to create in a watched repository; only status and priority are exclusive."""

    def spec(name: str, color: str, description: str, exclusive: bool) -> LabelSpec:
        return LabelSpec(name=name, color=color, description=description, exclusive=exclusive)

    fixed = (
        spec(labels.trigger, labels.color_trigger, "Work for agent-fleet.", False),
        spec(labels.priority_high, labels.color_priority_high, "Priority: high.", True),
        spec(labels.priority_medium, labels.color_priority_medium, "Priority: medium.", True),
        spec(labels.priority_low, labels.color_priority_low, "Priority: low.", True),
        spec(
            labels.status_todo,
            labels.color_status_todo,
            "Waiting for an agent (set by agent-fleet).",
            True,
        ),
        spec(
            labels.status_doing,
            labels.color_status_doing,
            "An agent is working on it (set by agent-fleet).",
            True,
        ),
        spec(
            labels.status_review,
            labels.color_status_review,
            "Pull request awaits review (set by agent-fleet).",
            True,
        ),
        spec(labels.status_done, labels.color_status_done, "Completed (set by agent-fleet).", True),
        spec(
            labels.status_failed, labels.color_status_failed, "Failed (set by agent-fleet).", True
        ),
        spec(
            labels.retry,
            labels.color_retry,
            "Ask agent-fleet to retry; removed once requeued.",
            False,
        ),
        spec(labels.hold, labels.color_hold, "Paused: agent-fleet dispatches nothing.", False),
        spec(
            labels.approved,
            labels.color_approved,
            "A maintainer approves work on an issue whose author is not trusted.",
            False,
        ),
        spec(
            labels.question,
            labels.color_question,
            "A question an agent asked; close it with the answer.",
            False,
        ),
        spec(
            labels.decision,
            labels.color_decision,
            "A decision an agent asked for; close it stating the option chosen.",
            False,
        ),
    )
    return (
        fixed
        + tuple(role_spec(labels, role) for role in dict.fromkeys(roles))
        + tuple(capability_spec(labels, cap) for cap in dict.fromkeys(capabilities))
    )


def label_specs(
    settings: Settings, *, roles: Sequence[str] = (), capabilities: Sequence[str] = ()
) -> tuple[LabelSpec, ...]:
    """The label vocabulary of the settings, as the gateway's specs: the fixed labels, and
    ``agent/<role>``/``needs/<capability>`` for the declared hosts and for ``roles`` and
    ``capabilities`` (those of the registered agents)."""
    return vocabulary_specs(
        settings.labels,
        roles=(*(r for h in settings.hosts for r in h.roles), *roles),
        capabilities=(*(c for h in settings.hosts for c in h.capabilities), *capabilities),
    )
