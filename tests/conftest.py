"""Shared pytest configuration. Fixtures that belong to one area live in that area's module."""
