"""Generic JSON-to-dataclass parsing: unknown keys refused with a hint, types and ranges checked,
paths named.
"""

from __future__ import annotations

import collections.abc
import difflib
import functools
import json
import math
import re
import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, Protocol, Union, get_args, get_origin, get_type_hints

from hefl.errors import ConfigError, HeflError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # names in paths and URLs: use with fullmatch
NAME_LEN = 64  # the config's `name`
MAX_CLIENTS = (
    16_384  # logical clients of one experiment: the envelope's client mask holds this many
)
EXPERIMENT_ID_LEN = 128  # an experiment id: `<name>-<date>-<time>-<random>`

Error = type[HeflError]


class Check(Protocol):
    """A constraint on one field's value, given in the field's metadata (`bounds`, `safe_name`)."""

    def check(self, value: Any, path: str, error: Error) -> None: ...


@dataclass(frozen=True)
class Bounds:
    """A numeric range; `also` lists values allowed outside it (a 0 that means "off")."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    also: tuple[float, ...] = ()

    def check(self, value: Any, path: str, error: Error) -> None:
        if isinstance(value, tuple):  # a list of numbers: each one
            for i, v in enumerate(value):
                self.check(v, f"{path}[{i}]", error)
        elif not self.holds(value):
            raise error(f"{path}: {self.describe()}, got {value}")

    def holds(self, value: float) -> bool:
        if value in self.also:
            return True
        return (
            (self.gt is None or value > self.gt)
            and (self.ge is None or value >= self.ge)
            and (self.lt is None or value < self.lt)
            and (self.le is None or value <= self.le)
        )

    def describe(self) -> str:
        extra = "".join(f"{a} or " for a in self.also)
        if (self.gt, self.ge, self.lt, self.le) == (0, None, None, None) and not self.also:
            return "must be positive"
        if (self.gt, self.ge, self.lt, self.le) == (None, 0, None, None) and not self.also:
            return "must not be negative"
        if self.ge is not None and self.le is not None and self.gt is None and self.lt is None:
            return f"must be {extra}in {self.ge}..{self.le}"
        words = [
            f"{w} {b}"
            for w, b in (
                ("greater than", self.gt),
                ("at least", self.ge),
                ("less than", self.lt),
                ("at most", self.le),
            )
            if b is not None
        ]
        return f"must be {extra}{' and '.join(words)}"


@dataclass(frozen=True)
class SafeName:
    """A file- and URL-safe name: ASCII letters, digits, '-', '_', '.', at most `max_len` long."""

    max_len: int

    def check(self, value: Any, path: str, error: Error) -> None:
        if not is_safe_name(value, self.max_len):
            raise error(
                f"{path}: {value!r} must be 1-{self.max_len} ASCII letters, digits, '-', '_', '.' "
                f"(starting with a letter or digit)"
            )


def is_safe_name(text: Any, max_len: int) -> bool:
    """Whether `text` is a name safe in paths and URLs, `max_len` characters at most."""
    return isinstance(text, str) and len(text) <= max_len and SAFE_NAME.fullmatch(text) is not None


def bounds(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    also: tuple[float, ...] = (),
) -> dict[str, Check]:
    """Field metadata for a numeric range: `field(default=1, metadata=bounds(gt=0))`."""
    return {"check": Bounds(gt, ge, lt, le, also)}


def safe_name(max_len: int) -> dict[str, Check]:
    """Field metadata for a name: `field(default="experiment", metadata=safe_name(NAME_LEN))`."""
    return {"check": SafeName(max_len)}


def check_keys(
    raw: Mapping[str, Any], allowed: list[str], path: str, error: Error = ConfigError
) -> None:
    """Refuse the first unknown key, suggesting the closest allowed one (a typo must not pass)."""
    for key in raw:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else f" (allowed: {', '.join(allowed)})"
            raise error(f"{path}: unknown key {key!r}{hint}")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _coerce(value: Any, tp: Any, path: str, error: Error) -> Any:
    """Check one JSON value against a field type; ints are accepted where floats are."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise error(f"{path}: {value!r} is not one of {_type_name(tp)}")
        return value
    if origin in (Union, types.UnionType):
        return _coerce(value, next(a for a in get_args(tp) if a is not type(None)), path, error)
    if origin is tuple:
        if not isinstance(value, list):
            raise error(f"{path}: expected a list, got {type(value).__name__}")
        inner = get_args(tp)[0]
        return tuple(_coerce(v, inner, f"{path}[{i}]", error) for i, v in enumerate(value))
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise error(f"{path}: expected an object, got {_show(value)}")
        inner = get_args(tp)[1]
        return {k: _coerce(v, inner, f"{path}[{k!r}]", error) for k, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise error(f"{path}: expected a finite number, got {_show(value)}") from None
        if not math.isfinite(number):
            raise error(f"{path}: expected a finite number, got {value}")
        return number
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise error(f"{path}: expected {_type_name(tp)}, got {_show(value)}")
    return value


@functools.cache
def _rules(cls: type) -> dict[str, tuple[Any, Check | None]]:
    """Each field's type and metadata check (resolving the hints once per class)."""
    hints = get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata.get("check")) for f in fields(cls)}


def parse_value(cls: type, name: str, value: Any, path: str, error: Error = ConfigError) -> Any:
    """Check a value against field `name` of dataclass `cls`: its type, then its metadata check."""
    tp, check = _rules(cls)[name]
    value = _coerce(value, tp, path, error)
    if check is not None:
        check.check(value, path, error)
    return value


def parse_section(
    raw: Any,
    cls: type,
    path: str,
    skip: tuple[str, ...] = (),
    error: Error = ConfigError,
    **extra: Any,
) -> Any:
    """Build dataclass `cls` from a JSON object, refusing unknown keys, wrong types and values out
    of range; every problem is one line naming the path, raised as `error`."""
    if not isinstance(raw, dict):
        raise error(f"{path}: expected an object, got {_show(raw)}")
    names = [f.name for f in fields(cls) if f.name not in skip]
    check_keys(raw, names, path, error)
    values = {k: parse_value(cls, k, v, f"{path}.{k}", error) for k, v in raw.items()} | extra
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in values
        and f.name not in skip
        and f.default is MISSING
        and f.default_factory is MISSING
    ]
    if missing:
        raise error(f"{path}: missing key {missing[0]!r}")
    return cls(**values)
