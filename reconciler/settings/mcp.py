"""The ``[mcp]`` section: what agents may share through the fleet's MCP server, and whose
notes count as trusted. Read by the notes endpoints (``webhook/mcp_api.py``) and the knowledge
book (``reconciler/fleet/knowledge.py``); ``docs/mcp.md`` describes the tools.
"""

from __future__ import annotations

from pydantic import Field

from reconciler.settings.values import RoleName, Section


class McpSettings(Section):
    """The fleet tools agent runs load (``agent-fleet mcp``)."""

    trusted_roles: tuple[RoleName, ...] = Field(
        default=(),
        description="Agent roles whose shared notes are trusted text (e.g. architect); notes "
        "from any other role are agent-written text, labelled untrusted; empty: none is trusted.",
    )
    max_note_bytes: int = Field(
        default=4096,
        ge=64,
        le=65536,
        description="Largest note an agent may share, in bytes of UTF-8.",
    )
    max_notes_per_task: int = Field(
        default=20, ge=0, description="Notes one task may share (over all its runs); 0: none."
    )
