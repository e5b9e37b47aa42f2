"""Loading settings: a TOML file plus ``AGENT_FLEET_…`` environment overrides into a frozen
``Settings``, or a ``ConfigError`` naming every problem with its field path and origin."""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_settings import (
    SettingsError,
)

from reconciler.errors import ConfigError
from reconciler.settings.reference import nested_model
from reconciler.settings.schema import _LOADING, Settings, _LoadInputs
from reconciler.settings.values import ENV_NESTING, ENV_PREFIX

# --- loading -------------------------------------------------------------------------------


def load_settings(path: Path | str | None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Load settings from the TOML file at ``path`` (None: defaults only) and the environment.

    ``env`` replaces ``os.environ`` (tests, reloads with a fixed environment). Raises
    ``ConfigError`` listing every problem as ``(field path, message)``; has no side effects.
    """
    environment: Mapping[str, str] = os.environ if env is None else env
    source = "" if path is None else str(path)
    file_data = {} if path is None else _read_toml(Path(path))
    problems = _unknown_environment_names(environment)
    settings: Settings | None = None
    while True:
        token = _LOADING.set(_LoadInputs(file_data=file_data, environment=environment))
        try:
            settings = Settings()  # type: ignore[call-arg]  # values come from the sources
        except ValidationError as exc:
            problems.extend(_problem(error, environment) for error in exc.errors())
        except SettingsError as exc:  # an environment value that should be JSON is not
            message, names = _environment_parse_problem(exc, environment)
            problems.append(("<environment>", message))
            if names:  # load again without them, so that the other problems show too
                environment = {k: v for k, v in environment.items() if k not in names}
                continue
        finally:
            _LOADING.reset(token)
        break
    if problems or settings is None:
        raise ConfigError(problems, source=source)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([("<file>", "file not found")], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([("<file>", f"cannot read: {exc}")], source=str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message already ends with "(at line L, column C)".
        raise ConfigError([("<file>", f"TOML syntax error: {exc}")], source=str(path)) from None


def _environment_parse_problem(
    exc: SettingsError, environment: Mapping[str, str]
) -> tuple[str, list[str]]:
    """What to say about an environment value that is not the JSON it must be, and the
    variables at fault as the environment spells them (empty when they cannot be told)."""
    field = re.search(r'field "(\w+)"', str(exc))
    wanted = f"{ENV_PREFIX}{field.group(1)}".upper() if field else ""
    # The variables as the environment spells them: the one for the field, or its nested ones.
    names = sorted(
        name
        for name in environment
        if wanted and (name.upper() == wanted or name.upper().startswith(wanted + ENV_NESTING))
    )
    variables = " or ".join(names) or (f"{wanted}..." if wanted else f"an {ENV_PREFIX}... variable")
    return (
        f"cannot parse {variables}: lists and tables must be given as JSON ({exc.__cause__})",
        names,
    )


# Variables read by commands and tools, not by the settings model: never typos.
COMMAND_VARIABLES = frozenset(
    {
        "AGENT_FLEET_SERVER",  # agent-fleet status|agents|tasks --server
        "AGENT_FLEET_TOKEN",  # agent-fleet status|agents|tasks --token
        "AGENT_FLEET_WORKER_TOKEN",  # agent-fleet agent run --token
        "AGENT_FLEET_WORKER_FORGEJO_TOKEN",  # agent-fleet agent run --forgejo-token
        "AGENT_FLEET_CLI_DIR",  # where the tests find the pinned agent CLIs
        "AGENT_FLEET_TEST_FORGEJO_URL",  # the contract tests against a real Forgejo
        "AGENT_FLEET_TEST_FORGEJO_TOKEN",
    }
)


def _unknown_environment_names(environment: Mapping[str, str]) -> list[tuple[str, str]]:
    """``AGENT_FLEET_…`` variables naming no section: most likely a typo, never ignored."""
    problems = []
    for name in sorted(environment):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in COMMAND_VARIABLES:
            continue
        section = name[len(ENV_PREFIX) :].split(ENV_NESTING, 1)[0].lower()
        if section in Settings.model_fields:
            continue
        hint = ""
        for candidate in Settings.model_fields:
            if section.startswith(candidate + "_"):
                rest = section[len(candidate) + 1 :].upper()
                hint = (
                    f"; nesting needs a double underscore: {ENV_PREFIX}{candidate.upper()}__{rest}"
                )
                break
        problems.append((name, f"no setting {section!r} for this variable{hint}"))
    return problems


def _problem(error: Any, environment: Mapping[str, str]) -> tuple[str, str]:
    loc: tuple[str | int, ...] = tuple(error["loc"])
    message: str = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key" + _suggestion(loc)
    origin = _environment_origin(loc, environment)
    if origin:
        message += f" (value from {origin})"
    # A rule that another setting switches on ("required when matrix.enabled = true"): when
    # that setting came from the environment, its variable is the one to look at.
    trigger = re.search(r"when ([a-z_]+(?:\.[a-z_]+)+) = ", message)
    if trigger and not origin:
        switched = _environment_origin(tuple(trigger.group(1).split(".")), environment)
        if switched:
            message += f" ({trigger.group(1)} from {switched})"
    return ".".join(str(part) for part in loc), message


def _suggestion(loc: tuple[str | int, ...]) -> str:
    model = _model_at(loc[:-1])
    if model is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """The model class that validates the value at ``loc`` in the settings tree."""
    model: type[BaseModel] = Settings
    position = 0
    while position < len(loc):
        field = model.model_fields.get(str(loc[position]))
        nested = nested_model(field.annotation) if field else None
        if nested is None:
            return None
        shape, model = nested
        position += 1 if shape == "" else 2  # lists and tables add an index/key to the path
    return model if position == len(loc) else None


def _environment_origin(loc: tuple[str | int, ...], environment: Mapping[str, str]) -> str:
    """The variable that set the value at ``loc`` (or the table or list holding it), spelled
    as the environment spells it; "" when the value did not come from the environment."""
    names = {name.upper(): name for name in environment}
    for length in range(len(loc), 0, -1):
        candidate = ENV_PREFIX + ENV_NESTING.join(str(part) for part in loc[:length]).upper()
        if candidate in names:
            return names[candidate]
    return ""
