"""Edits of the ``[[hosts]]`` tables of a configuration file, keeping everything else as it is.

``agent-fleet hosts add|scale|remove`` (``webhook/cli_hosts.py``) call :func:`add_host`,
:func:`scale_host` and :func:`remove_host`. Each reads the file with tomlkit (comments, order
and formatting survive), makes its one change, validates the whole result exactly as the
daemon would load it (:func:`~reconciler.settings.load_settings`, environment overrides
included), and only then replaces the file atomically (a temporary file in the same directory,
fsync, rename). An edit that would make the configuration invalid changes nothing and raises
:class:`~reconciler.errors.ConfigError` with every problem. The running daemon watches the file
and takes the valid change up by itself.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table
from tomlkit.toml_document import TOMLDocument

from reconciler.errors import ConfigError
from reconciler.settings.hosts import HostSettings
from reconciler.settings.loading import load_settings
from reconciler.settings.schema import Settings


def _read(path: Path) -> TOMLDocument:
    try:
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror or exc}")]) from None
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError([("", f"{path} is not valid TOML: {exc}")]) from None


def _hosts(document: TOMLDocument) -> AoT:
    hosts = document.get("hosts")
    if hosts is None:
        hosts = tomlkit.aot()
        document.append("hosts", hosts)
    if not isinstance(hosts, AoT):
        raise ConfigError([("hosts", "is not an array of [[hosts]] tables")])
    return hosts


def _find(hosts: AoT, name: str) -> Table:
    for table in hosts:
        if isinstance(table, Table) and str(table.get("name", "")) == name:
            return table
    raise ConfigError([("hosts", f"no host named {name!r} in the configuration")])


def _write_validated(
    path: Path, document: TOMLDocument, *, env: Mapping[str, str] | None
) -> Settings:
    """Validate ``document`` as the daemon would load it, then replace ``path`` atomically."""
    text = tomlkit.dumps(document)
    directory = path.resolve().parent
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        try:
            settings = load_settings(temporary, env=env)
        except ConfigError as exc:  # nothing replaced; the problems named after the real file
            raise ConfigError(exc.problems, source=f"{path} (as edited)") from None
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return settings


def add_host(
    path: Path, fields: Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> HostSettings:
    """Append one ``[[hosts]]`` table with ``fields`` (validated as a whole file); the host."""
    document = _read(path)
    hosts = _hosts(document)
    name = str(fields.get("name", ""))
    if any(str(t.get("name", "")) == name for t in hosts):
        raise ConfigError([("hosts", f"a host named {name!r} is already declared")])
    table = tomlkit.table()
    for key, value in fields.items():
        if value is not None and value != ():
            table.add(key, list(value) if isinstance(value, tuple) else value)
    hosts.append(table)
    settings = _write_validated(path, document, env=env)
    return next(h for h in settings.hosts if h.name == name)


def scale_host(
    path: Path, name: str, max_concurrency: int, *, env: Mapping[str, str] | None = None
) -> HostSettings:
    """Set the host's ``max_concurrency``; the host as the file now declares it."""
    document = _read(path)
    _find(_hosts(document), name)["max_concurrency"] = max_concurrency
    settings = _write_validated(path, document, env=env)
    return next(h for h in settings.hosts if h.name == name)


def remove_host(path: Path, name: str, *, env: Mapping[str, str] | None = None) -> None:
    """Remove the host's ``[[hosts]]`` table."""
    document = _read(path)
    hosts = _hosts(document)
    table = _find(hosts, name)
    index = next(i for i, t in enumerate(hosts) if t is table)
    del hosts[index]
    _write_validated(path, document, env=env)


def declared_host(path: Path, name: str, *, env: Mapping[str, str] | None = None) -> HostSettings:
    """The host ``name`` as the (valid) file declares it."""
    for host in load_settings(path, env=env).hosts:
        if host.name == name:
            return host
    raise ConfigError([("hosts", f"no host named {name!r} in the configuration")])


__all__ = ["add_host", "declared_host", "remove_host", "scale_host"]
