"""The ``[mcp]`` section: what agents may do through the fleet's MCP tools (docs/mcp.md).

Read by the daemon's task endpoints (``webhook/mcp_api.py``), the assignment controller,
which opens the question and decision issues agents ask for and reads their answers, and the
knowledge book (``reconciler/fleet/knowledge.py``), which takes the notes agents share.
"""

from __future__ import annotations

from pydantic import Field, NonNegativeInt, PositiveInt

from reconciler.settings.values import RoleName, Section


class McpSettings(Section):
    """Limits and trust for the fleet MCP server's tools."""

    trusted_roles: tuple[RoleName, ...] = Field(
        default=(),
        description="Agent roles whose written text (answers to questions, decisions, shared "
        "notes) may go into another task's prompt without a trusted person's approval. By "
        "default no agent's text does.",
    )
    max_questions_per_task: NonNegativeInt = Field(
        default=3,
        description="Questions and decisions one task may ask in all its runs; 0 turns asking off.",
    )
    max_question_depth: PositiveInt = Field(
        default=2,
        description="How deep questions may nest: a task born from a question asked by "
        "another task is at depth 1, and may ask only while its depth is below this.",
    )
    max_note_bytes: int = Field(
        default=4096,
        ge=64,
        le=65536,
        description="Largest note an agent may share, in bytes of UTF-8.",
    )
    max_notes_per_task: NonNegativeInt = Field(
        default=20, description="Notes one task may share in all its runs; 0 turns sharing off."
    )
