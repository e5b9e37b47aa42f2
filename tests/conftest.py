"""Shared pytest configuration. Fixtures that belong to one area live in that area's module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

# The in-memory Forgejo fixtures, registered here so every module can use them.
pytest_plugins = (
    "tests.sandbox_fixtures",
    "tests.sshd_fixtures",
    "tests.modelapi",
    "tests.synapse_fixtures",
)


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """CLI commands configure logging process-wide; no test may inherit another's set-up."""
    yield
    structlog.reset_defaults()
