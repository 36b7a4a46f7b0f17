"""Building dataclasses from parsed JSON/TOML with type checks, and errors that name
the file, the key path and the problem (``jobs[2] (id 'backup').timeout: expected a
number, got "soon"``). Used by the config and by jobs defined by data.

A dataclass field may carry ``metadata={"key": "class"}`` to be read from a key
that is not a valid Python name. A dataclass used as the item type of a list may
define ``item_key(index, value) -> str`` to name its items in errors (jobs name
their id).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from functools import lru_cache
from typing import Any, Union, get_args, get_origin

from task_scheduler.errors import ConfigError
from task_scheduler.redact import is_secret

__all__ = ["build", "check", "show"]


def build(cls: type, data: Any, path: str, source: str | None) -> Any:
    """``cls(**data)`` with every value converted to its annotated type; raises
    ConfigError for a non-object, an unknown or missing key, or a wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected an object, got {show(data)}", source=source, key=path or None)
    hints, fields = _schema(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})", source=source, key=path or None
        )
    values = {}
    for name, value in data.items():
        key = f"{path}.{name}" if path else name
        values[fields[name].name] = convert(hints[fields[name].name], value, key, source)
    missing = [
        key
        for key, f in fields.items()
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing required key {missing[0]!r}", source=source, key=path or None)
    return cls(**values)


def convert(hint: Any, value: Any, key: str, source: str | None) -> Any:
    """``value`` checked against (and, for dataclasses, built as) the type ``hint``."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, key, source)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        names = " or ".join(_type_name(o) for o in options)
        raise ConfigError(f"expected {names}, got {show(value, key)}", source=source, key=key)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, key, source)  # type: ignore[arg-type]
    if origin is list:
        (item,) = get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"expected a list, got {show(value, key)}", source=source, key=key)
        if dataclasses.is_dataclass(item) and hasattr(item, "item_key"):
            return [build(item, v, f"{key}{item.item_key(i, v)}", source) for i, v in enumerate(value)]  # type: ignore[arg-type]
        return [convert(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        _, item = get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"expected an object, got {show(value, key)}", source=source, key=key)
        return {str(k): convert(item, v, f"{key}.{k}", source) for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {show(value, key)}", source=source, key=key)
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"expected an integer, got {show(value, key)}", source=source, key=key)
        return value
    if hint is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"expected a number, got {show(value, key)}", source=source, key=key)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {show(value, key)}", source=source, key=key)
        return value
    raise TypeError(f"unsupported config type {hint!r}")  # pragma: no cover - a bug in the caller


def check(ok: bool, problem: str, *, source: str | None, key: str) -> None:
    """Raise ConfigError(problem) at ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(problem, source=source, key=key)


def show(value: Any, key: str = "") -> str:
    """A short, safe rendering of a value for an error message (secrets hidden)."""
    if is_secret(key.rsplit(".", 1)[-1]):
        return "a value (hidden: the key looks like a secret)"
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) < 60 else text[:57] + "..."


@lru_cache(maxsize=64)
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """A dataclass's resolved type hints and its fields by key (resolving hints is slow)."""
    fields = {_key(f): f for f in dataclasses.fields(cls) if f.init and f.name != "source"}
    return typing.get_type_hints(cls), fields


def _key(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata.get("key", field.name))


def _type_name(hint: Any) -> str:
    if get_origin(hint) is list:
        return "a list"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
