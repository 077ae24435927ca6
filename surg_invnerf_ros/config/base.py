"""Configuration as data: frozen dataclasses with documented, range-checked fields (STYLE §4).

Every field is declared with `option(default, doc, lo=, hi=)`. Validation (`check_fields`) runs in
`__post_init__`, so an invalid config cannot exist. `load_config` reads YAML, rejects unknown keys
and parses `key.sub=value` overrides with the field's own type. The same classes drive the CLI, the
node (`ros/params.py`) and the benchmark.

This module holds the machinery; the configs live beside it, one module per layer: `frontend`,
`model`, `fit`, `kinematics`, `synth`, `bench`, `node` and `sources`. `field_meta` gives the
command line a field's default, help, range and choices, so none of them is typed twice.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, get_args, get_origin

import yaml

from ..errors import ConfigError

C = TypeVar("C")


def option(default: Any, doc: str, lo: float | None = None, hi: float | None = None) -> Any:
    """A config field with its help text and inclusive range kept in metadata."""
    meta = {"doc": doc, "lo": lo, "hi": hi}
    if is_dataclass(default) and not isinstance(default, type):
        return field(default_factory=lambda d=default: dataclasses.replace(d), metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def nested(cls: type, doc: str) -> Any:
    """A nested component config, built from its own defaults."""
    return field(default_factory=cls, metadata={"doc": doc, "lo": None, "hi": None})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check Literal choices, numeric types and lo/hi ranges; raise ConfigError naming the key."""
    hints = _hints(type(obj))
    for f in fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        tp = hints[f.name]
        _check_type(key, value, tp)
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        values = value if isinstance(value, (tuple, list)) else [value]
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if lo is not None and v < lo:
                    raise ConfigError(f"{key}: expected >= {lo}, got {v}")
                if hi is not None and v > hi:
                    raise ConfigError(f"{key}: expected <= {hi}, got {v}")


def _check_type(key: str, value: Any, tp: Any) -> None:
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            choices = "|".join(str(a) for a in get_args(tp))
            raise ConfigError(f"{key}: expected one of {choices}, got {value!r}")
    elif tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    elif origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        for v in value:
            if item_tp in (int, float, str, bool):
                _check_type(key, v, item_tp)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Turn YAML/override values into the field's type (int → float, list → tuple)."""
    origin = get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_coerce(key, v, item_tp) for v in value)
    return value


def from_dict(cls: type[C], data: Mapping[str, Any] | None, prefix: str = "") -> C:
    """Build `cls` from a nested mapping; unknown keys are refused by name."""
    data = dict(data or {})
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}  # pyright: ignore[reportArgumentType]  (C is a dataclass)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (expected one of {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # pyright: ignore[reportArgumentType]
        if f.name not in data:
            continue
        tp = hints[f.name]
        value = data[f.name]
        if isinstance(tp, type) and is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{f.name}: expected a mapping, got {value!r}")
            kwargs[f.name] = from_dict(tp, value, prefix=f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = _coerce(f"{prefix}{f.name}", value, tp)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists), for YAML dumps and track-file `meta`."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if is_dataclass(v):
            out[f.name] = to_dict(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` strings; the value is parsed as YAML so `3`, `0.5`, `true` keep types."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item}: expected key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {p} is not a group")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file ({} when empty); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return loaded or {}


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """Load `cls` from an optional YAML file plus overrides; errors name the file and key."""
    return _from_data(cls, read_yaml_mapping(path) if path is not None else {}, overrides, path)


def _from_data(cls: type[C], data: dict[str, Any], overrides: Sequence[str], path: str | Path | None,
               section: str = "") -> C:
    """`cls` from a mapping plus overrides; errors start with the file and the dotted key under `section`."""
    try:
        return from_dict(cls, apply_overrides(data, overrides))
    except ConfigError as err:
        msg = str(err) if str(err).startswith(section) else section + str(err)
        raise ConfigError(f"{path}: {msg}" if path is not None else msg) from None


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, Any, str, float | None, float | None]]:
    """(dotted name, default, doc, lo, hi) for every leaf field: the one table for help and ROS."""
    rows = []
    hints = _hints(cls)
    inst = cls()
    for f in fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and is_dataclass(tp):
            rows += field_docs(tp, f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", getattr(inst, f.name), f.metadata.get("doc", ""),
                         f.metadata.get("lo"), f.metadata.get("hi")))
    return rows


@dataclass(frozen=True)
class FieldMeta:
    """What a config field declares: its default, help text, inclusive range, choices and type."""

    name: str
    default: Any
    doc: str
    lo: float | None
    hi: float | None
    choices: tuple[Any, ...]  #: the values of a Literal field; () otherwise
    type: Any  #: the declared type (bool, int, float, str, a Literal, a tuple type, ...)


def field_meta(cls: type, name: str) -> FieldMeta:
    """The metadata of the field `name` of the config class `cls` (a dotted name reaches nested ones)."""
    head, _, rest = name.partition(".")
    hints = _hints(cls)
    if head not in hints:
        raise ConfigError(f"{cls.__name__}: no field {head!r} (expected one of {', '.join(sorted(hints))})")
    if rest:
        if not (isinstance(hints[head], type) and is_dataclass(hints[head])):
            raise ConfigError(f"{cls.__name__}.{head}: not a group, so {rest!r} names nothing")
        return field_meta(hints[head], rest)
    f = next(f for f in fields(cls) if f.name == head)
    tp = hints[head]
    choices = tuple(get_args(tp)) if get_origin(tp) is Literal else ()
    return FieldMeta(name=head, default=getattr(cls(), head), doc=f.metadata.get("doc", ""), lo=f.metadata.get("lo"),
                     hi=f.metadata.get("hi"), choices=choices, type=tp)
