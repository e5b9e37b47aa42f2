"""How raw Forgejo JSON is read: field readers that are lenient where real servers differ and
raise ``MalformedResponse`` where agent-fleet cannot work without a value, and the frozen base
of every wire model. The model modules re-exported by ``reconciler.forgejo.types`` use them.

This module imports neither pyforgejo nor httpx on purpose: it is safe to import anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict


class MalformedResponse(ValueError):
    """A Forgejo response lacks a field agent-fleet needs, or has it in an unusable shape."""


# Each reader takes the raw mapping and a key; ``required`` readers raise MalformedResponse.

_GO_ZERO_YEAR = 1  # Go's zero time.Time ("0001-01-01T00:00:00Z") means "never set".


def _mapping(raw: object, what: str) -> Mapping[str, object]:
    if not isinstance(raw, Mapping):
        raise MalformedResponse(f"expected a JSON object for {what}, got {type(raw).__name__}")
    return raw


def _req_int(raw: Mapping[str, object], key: str, what: str) -> int:
    value = raw.get(key)
    # bool is an int subclass; a boolean where an id belongs is a malformed payload.
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedResponse(f"{what}: field {key!r} must be an integer, got {value!r}")
    return value


def _opt_int(raw: Mapping[str, object], key: str) -> int | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _int(raw: Mapping[str, object], key: str) -> int:
    return _opt_int(raw, key) or 0


def _req_str(raw: Mapping[str, object], key: str, what: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedResponse(f"{what}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _str(raw: Mapping[str, object], key: str) -> str:
    value = raw.get(key)
    return value if isinstance(value, str) else ""


def _opt_str(raw: Mapping[str, object], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) and value else None


def _bool(raw: Mapping[str, object], key: str) -> bool:
    return raw.get(key) is True


def _objects(raw: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    """A list of objects; ``null`` or a missing key is an empty list, null elements are dropped."""
    value = raw.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _strings(raw: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def parse_time(value: object) -> datetime | None:
    """Parse a Forgejo RFC 3339 timestamp into an aware datetime; ``None`` when unset."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise MalformedResponse(f"not an RFC 3339 timestamp: {value!r}") from exc
    if parsed.year == _GO_ZERO_YEAR:
        return None
    if parsed.tzinfo is None:
        # Forgejo always sends an offset; a naive value can only come from a proxy or an old
        # server, and Forgejo stores times as UTC unix seconds, so UTC is the honest reading.
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _time(raw: Mapping[str, object], key: str) -> datetime | None:
    return parse_time(raw.get(key))


def _req_time(raw: Mapping[str, object], key: str, what: str) -> datetime:
    parsed = _time(raw, key)
    if parsed is None:
        raise MalformedResponse(f"{what}: field {key!r} must be a timestamp, got {raw.get(key)!r}")
    return parsed


def _login(raw: object) -> str:
    """The login of an embedded user object; legacy servers send only ``username``."""
    if not isinstance(raw, Mapping):
        return ""
    return _str(raw, "login") or _str(raw, "username")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
