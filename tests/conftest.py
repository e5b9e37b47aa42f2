"""Shared pytest configuration. Fixtures that belong to one area live in that area's module."""

# The in-memory Forgejo fixtures, registered here so every module can use them.
pytest_plugins = ("tests.sandbox_fixtures",)
