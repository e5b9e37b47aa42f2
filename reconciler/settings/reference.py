"""The configuration reference: the field tables of ``docs/configuration.md``, generated from
the model's field descriptions (a test keeps the document in sync)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    SecretStr,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

# --- the reference -------------------------------------------------------------------------
from reconciler.settings.schema import Settings
from reconciler.settings.values import ENV_NESTING, ENV_PREFIX, _http_url


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (Union, UnionType):
        args = [arg for arg in get_args(annotation) if arg is not NoneType]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def nested_model(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """How a field holds a section: ("", M) itself, ("[]", M) a list, ("<name>", M) a table."""
    annotation, _ = _strip_optional(_strip_annotated(annotation))
    if _is_model(annotation):
        return "", annotation
    args = get_args(annotation)
    if get_origin(annotation) is tuple and args and _is_model(args[0]):
        return "[]", args[0]
    if get_origin(annotation) in (Mapping, dict) and len(args) == 2 and _is_model(args[1]):
        return "<name>", args[1]
    return None


def _is_url(annotation: Any) -> bool:
    if get_origin(annotation) is not Annotated:
        return False
    return any(_is_url_validator(meta) for meta in get_args(annotation)[1:])


def _is_url_validator(meta: object) -> bool:
    return isinstance(meta, BeforeValidator) and meta.func is _http_url


def _type_name(annotation: Any) -> str:
    annotation, optional = _strip_optional(_strip_annotated(annotation))
    if _is_url(annotation):
        return "URL (optional)" if optional else "URL"
    annotation = _strip_annotated(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        name = " | ".join(f'"{arg}"' for arg in args)
    elif origin is tuple:
        name = f"list of {_type_name(args[0])}s"
    elif origin in (Mapping, dict):
        name = f"table of {_type_name(args[1])}s"
    else:
        simple = {bool: "boolean", int: "integer", float: "number", str: "string",
                  SecretStr: "secret", Path: "path"}  # fmt: skip
        name = simple.get(annotation, getattr(annotation, "__name__", str(annotation)))
    return f"{name} (optional)" if optional else name


def _toml_value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Path):
        return f'"{value.as_posix()}"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        if any(isinstance(item, BaseModel) for item in value.values()):
            return "built in: " + ", ".join(value)
        return "{" + ", ".join(f"{key} = {_toml_value(v)}" for key, v in value.items()) + "}"
    return str(value)


@dataclass(frozen=True)
class FieldReference:
    """One row of the configuration reference."""

    path: str
    type: str
    default: str
    env: str
    description: str


def iter_field_reference(
    model: type[BaseModel] = Settings, *, prefix: str = "", env: str | None = ENV_PREFIX
) -> Iterator[FieldReference]:
    """Every field under ``model``, depth first, by the path a config file writes it at.

    Sections are walked into; a list of tables (``hosts``) or a table of tables (``adapters``)
    gets a row of its own, then rows for its items' fields as ``hosts[].name`` and
    ``adapters.<name>.command``. ``env`` is the variable-name prefix, None inside such items
    (they are set through the container's variable, as JSON).
    """
    for name, field in model.model_fields.items():
        path = prefix + name
        env_name = f"{env}{name.upper()}" if env is not None else ""
        nested = nested_model(field.annotation)
        if nested is not None and nested[0] == "":
            inner_env = env_name + ENV_NESTING if env is not None else None
            yield from iter_field_reference(nested[1], prefix=path + ".", env=inner_env)
            continue
        yield FieldReference(
            path=path,
            type=_field_type(field, nested),
            default=_field_default(field),
            env=env_name if env is not None else f"in `{ENV_PREFIX}{_section_of(path).upper()}`",
            description=field.description or "",
        )
        if nested is not None:
            shape, item_model = nested
            item_prefix = f"{path}[]." if shape == "[]" else f"{path}.<name>."
            yield from iter_field_reference(item_model, prefix=item_prefix, env=None)


def _section_of(path: str) -> str:
    return path.split(".", 1)[0].split("[", 1)[0]


def _field_type(field: FieldInfo, nested: tuple[str, type[BaseModel]] | None) -> str:
    if nested is not None:
        return "list of tables" if nested[0] == "[]" else "table of tables"
    if any(_is_url_validator(meta) for meta in field.metadata):
        return "URL"
    return _type_name(field.annotation)


def _field_default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    return _toml_value(field.get_default(call_default_factory=True))


def render_reference() -> str:
    """The generated part of docs/configuration.md: one table per top-level key."""
    rows = list(iter_field_reference())
    out: list[str] = []
    for name, field in Settings.model_fields.items():
        nested = nested_model(field.annotation)
        shape = nested[0] if nested else None
        heading = {"": f"[{name}]", "[]": f"[[{name}]]", "<name>": f"[{name}.<name>]"}
        out += [f"### `{heading.get(shape, name) if shape is not None else name}`", ""]
        out += [f"{field.description}", ""]
        out += ["| key | type | default | environment | description |", "|---|---|---|---|---|"]
        for row in rows:
            if _section_of(row.path) != name:
                continue
            default = row.default if row.default in ("required", "unset") else f"`{row.default}`"
            env = f"`{row.env}`" if row.env.startswith(ENV_PREFIX) else row.env + " (JSON)"
            cells = (f"`{row.path}`", row.type, default, env, row.description)
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        out.append("")
    return "\n".join(out)
