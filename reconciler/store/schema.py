"""The state store's schema version and its migrations.

:class:`~reconciler.store.store.Store` calls :func:`migrate` when it opens a directory, before
it reads any record: a store written by an older agent-fleet is brought up to
:data:`SCHEMA_VERSION` step by step, a new one is stamped with it, and one written by a newer
agent-fleet is refused with :class:`StoreVersionError` rather than misread. The version lives
in ``state.json``'s ``meta`` table under ``schema_version``.

Adding a migration: bump :data:`SCHEMA_VERSION`, add the step from the previous version to
:data:`MIGRATIONS`, commit a fixture of a store in the previous format under ``tests/data/``,
and say so in ``CHANGELOG.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from reconciler import __version__
from reconciler.errors import StoreError
from reconciler.store.storage import StateDatabase

log = structlog.get_logger(__name__)

META_TABLE = "meta"
VERSION_KEY = "schema_version"

#: The version this agent-fleet writes. 1 is the format of 0.1.0, which recorded no version.
SCHEMA_VERSION = 2

#: A step from version N to N + 1: rewrites what it must in the database or the directory.
Migration = Callable[[StateDatabase, Path], None]


class StoreVersionError(StoreError):
    """The store was written by a newer agent-fleet, or has a version this one cannot read."""


def _record_version(db: StateDatabase, directory: Path) -> None:
    """1 → 2: the records are unchanged; from now on the store says which version wrote it."""


MIGRATIONS: Mapping[int, Migration] = {1: _record_version}


def stored_version(db: StateDatabase) -> int | None:
    """The version recorded in the store; 1 for a store with data but no version (0.1.0);
    None for a store that holds nothing yet."""
    doc = db.keyed(META_TABLE).get_doc(VERSION_KEY)
    if doc is not None:
        value = doc.get("value")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise StoreVersionError(f"the store's {VERSION_KEY} is {value!r}, not a version number")
        return value
    if any(db.keyed(name).docs() for name in db.tables()):
        return 1
    return None


def migrate(db: StateDatabase, directory: Path) -> tuple[int, int]:
    """Bring the store in ``directory`` to :data:`SCHEMA_VERSION`; (version found, version now).

    Raises :class:`StoreVersionError` for a store newer than this agent-fleet understands.
    Each step is followed by writing its version, so a crash mid-way resumes at that step.
    """
    found = stored_version(db)
    if found is None:
        _write_version(db, SCHEMA_VERSION)
        return SCHEMA_VERSION, SCHEMA_VERSION
    if found > SCHEMA_VERSION:
        raise StoreVersionError(
            f"the state store at {directory} has schema version {found}, written by a newer "
            f"agent-fleet; this one ({__version__}) reads versions up to {SCHEMA_VERSION}. "
            "Run the newer agent-fleet, or restore the backup taken before the upgrade."
        )
    version = found
    while version < SCHEMA_VERSION:
        MIGRATIONS[version](db, directory)
        version += 1
        _write_version(db, version)
    if found != version:
        log.info("store.migrated", path=str(directory), from_version=found, to_version=version)
    return found, version


def _write_version(db: StateDatabase, version: int) -> None:
    db.keyed(META_TABLE).put_doc(VERSION_KEY, {"value": version})


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "StoreVersionError",
    "migrate",
    "stored_version",
]
