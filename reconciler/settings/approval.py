"""The ``[approval]`` section: work that always needs a maintainer's approval before it starts.

Issues from authors who are not trusted always need it; these settings add work that needs it
whoever opened the issue. Read by the assignment controller through ``fleet/holds.py``.
"""

from __future__ import annotations

from pydantic import Field

from reconciler.settings.labels import LabelName
from reconciler.settings.values import RoleName, Section


class ApprovalSettings(Section):
    """Work that needs a maintainer's approval label before it is dispatched."""

    roles: tuple[RoleName, ...] = Field(
        default=(),
        description="Roles whose tasks always need approval (e.g. devops), even from a trusted "
        "author; a trusted user other than the author adds the approval label.",
    )
    labels: tuple[LabelName, ...] = Field(
        default=(),
        description="Labels whose issues always need approval before their task starts, even "
        "from a trusted author.",
    )
