"""The one validator of config dataclasses, and their dict / YAML / JSON round trip.

Every config dataclass of vlkit.config declares each field's type (a `Literal` lists the allowed choices) and,
for numbers, its range (`ranged`, `positive`, `non_negative`); `check_fields` checks both when a config is built
from Python (`_Checked.__post_init__`) and `from_dict` when it is read from a recipe, so unknown keys and bad
values raise `ConfigError` naming the dotted key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional


from vlkit.errors import UserError
from vlkit.io import write_json


class ConfigError(UserError):
    """A configuration value a user wrote is wrong; the message names the key and what is allowed."""


# ---------------------------------------------------------------------------------------------------------
# field ranges: declared next to each field, checked by `check_fields` (every from_dict and every construction)


@dataclass(frozen=True)
class Range:
    """The interval a numeric field must lie in (None: unbounded); tuple fields are checked element-wise."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False  # lo itself is excluded
    hi_open: bool = False

    def __contains__(self, v: float) -> bool:
        above = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        below = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
        return above and below

    def __str__(self) -> str:
        lo, hi = _number_text(self.lo), _number_text(self.hi)
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return f"in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"


def _number_text(v: Optional[float]) -> str:
    return str(v) if isinstance(v, int) or v is None else f"{v:g}"  # integer bounds (seeds: 2**63 - 1) in full


def ranged(default: Any, lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Any:
    """A dataclass field whose value must lie in the range (None, for Optional fields, is always allowed)."""
    return field(default=default, metadata={"range": Range(lo, hi, lo_open, hi_open)})


def positive(default: Any) -> Any:
    return ranged(default, 0, lo_open=True)


def non_negative(default: Any) -> Any:
    return ranged(default, 0)


class _Checked:
    """Config dataclasses check their fields when built, from Python or from a dict (errors name the key).
    `SECTION` is the key prefix of a config built directly (default: the class name without `Config`, lowered:
    `StageConfig` -> `stage`); "" for settings passed as keyword arguments (`temperature=...`)."""

    SECTION: typing.ClassVar[Optional[str]] = None

    def __post_init__(self) -> None:
        check_fields(self, _section(self))


# ---------------------------------------------------------------------------------------------------------
# dict <-> dataclass


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a dict: unknown keys, wrong types, choices and ranges raise ConfigError naming
    the dotted key (`stages.0.lr=-1.0 must be > 0`)."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{path or cls.__name__}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    hints = _hints(cls)
    kwargs = {key: _check_value(fields[key], hints[key], value, f"{path}.{key}" if path else key)
              for key, value in data.items()}
    return cls(**kwargs)  # __post_init__ checks the defaults of the keys not given


def check_fields(obj: Any, path: str = "") -> None:
    """The one validator of config dataclasses: each field against its type (Literal = the allowed choices) and its
    declared range (`ranged`, `positive`, ...). Values are normalized in place (an int for a float field becomes a
    float); nested config dataclasses are checked too. Errors name the key as `path.field`."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        key = f"{path}.{f.name}" if path else f.name
        # object.__setattr__: frozen config dataclasses (SynthConfig) are normalized the same way
        object.__setattr__(obj, f.name, _check_value(f, hints[f.name], getattr(obj, f.name), key))


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _section(obj: Any) -> str:
    """The key prefix of a config built directly (`TrainConfig` -> `train`, `StageConfig` -> `stage`)."""
    section = getattr(obj, "SECTION", None)
    return type(obj).__name__.replace("Config", "").lower() if section is None else section


def _check_value(f: dataclasses.Field, tp: Any, value: Any, key: str) -> Any:
    value = _coerce(tp, value, key)
    rng = f.metadata.get("range")
    for v in (value if isinstance(value, tuple) else (value,)):
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        if rng is not None and v is not None and v not in rng:
            raise ConfigError(f"{key}={value!r} must be {rng}")
    return value


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        return _coerce(tp, value, path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}={value!r} is not allowed; choose one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            check_fields(value, path)
            return value
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={value!r} must be an integer")
        return value
    if tp is float:
        return _number(value, path)
    if tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r} must be a list of numbers")
        return tuple(_number(v, path) for v in value)
    if origin is tuple:  # tuple[X, ...] (any length) or tuple[X, Y] (exactly these)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r} must be a list")
        if args[-1] is Ellipsis:
            return tuple(_coerce(args[0], v, path) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{path}={value!r} must have {len(args)} entries")
        return tuple(_coerce(a, v, path) for a, v in zip(args, value))
    for kind, what in ((str, "a string"), (list, "a list"), (dict, "a mapping")):
        if tp is kind and not isinstance(value, kind):
            raise ConfigError(f"{path}={value!r} must be {what}")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{path}={value!r} must be a number")
    return float(value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML scalar)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: the value is not valid YAML") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each `a.b.c=value` in the recipe dict; a list is indexed by position (`stages.1.lr=...`)."""
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = data
        for depth, k in enumerate(keys):
            where = ".".join(keys[:depth]) or "the recipe"
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise ConfigError(f"override {item!r}: {where} has {len(node)} entries (0..{len(node) - 1}), "
                                      f"no {k!r}")
                k = int(k)
            elif not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {where}={node!r} has no key {k!r}")
            if depth == len(keys) - 1:
                node[k] = value
            else:
                if isinstance(node, dict) and node.get(k) is None:
                    node[k] = {}
                node = node[k]
    return data


def load_yaml(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def save_json(cfg: Any, path: str | Path) -> None:
    write_json(Path(path), to_dict(cfg))
