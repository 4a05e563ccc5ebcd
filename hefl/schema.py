"""Generic JSON-to-dataclass parsing: unknown keys refused with a hint, types checked, paths named."""

from __future__ import annotations

import difflib
import json
import math
import re
import types
from collections.abc import Mapping
from dataclasses import MISSING, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from hefl.errors import ConfigError

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # experiment names: file- and URL-safe

def check_keys(raw: Mapping[str, Any], allowed: list[str], path: str) -> None:
    """Refuse the first unknown key, suggesting the closest allowed one (a typo must not pass)."""
    for key in raw:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (allowed: {', '.join(allowed)})"
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check one JSON value against a field type; ints are accepted where floats are."""
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        return _coerce(value, next(a for a in get_args(tp) if a is not type(None)), path)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        inner = get_args(tp)[0]
        return tuple(_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value}")
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {json.dumps(value)}")
    return value


def parse_section(raw: Any, cls: type, path: str, skip: tuple[str, ...] = (), **extra: Any) -> Any:
    """Build dataclass `cls` from a JSON object, refusing unknown keys and wrong types."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected an object, got {json.dumps(raw)}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.name not in skip]
    check_keys(raw, names, path)
    values = {k: _coerce(v, hints[k], f"{path}.{k}") for k, v in raw.items()} | extra
    missing = [f.name for f in fields(cls) if f.name not in values and f.name not in skip
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{path}: missing key {missing[0]!r}")
    return cls(**values)
