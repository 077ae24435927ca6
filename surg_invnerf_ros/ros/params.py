"""Config dataclasses ↔ declared ROS parameters (STYLE §4, §9; nvblox's one parameter table).

One read-only parameter per leaf field, named by its dotted path (`sync.slop_s`), described by the
field's doc plus its unit-bearing name, range and choices. Values are checked by the config's own
validation, not by rclpy, so the node and the CLI refuse a bad value with the same one-line
`ConfigError` that names the key. Parameters are declared with dynamic typing because a YAML `0`
for a float would otherwise make rclpy raise its own, less helpful exception; `from_dict` coerces.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin

from ..config import from_dict
from ..errors import ConfigError

if TYPE_CHECKING:  # rclpy is imported where a node is given, so the table reads without a ROS install
    from rclpy.node import Node

# Parameters rclpy or launch may set that are not ours.
_FOREIGN_PREFIXES = ("qos_overrides.",)
_FOREIGN_NAMES = {"use_sim_time", "start_type_description_service"}

C = TypeVar("C")


def range_text(meta: dict[str, Any], tp: Any) -> str:
    """Human range/choice text for a descriptor's additional_constraints."""
    if get_origin(tp) is Literal:
        return "one of: " + ", ".join(str(a) for a in get_args(tp))
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        return f"range [{lo}, {hi}]"
    if lo is not None:
        return f">= {lo}"
    if hi is not None:
        return f"<= {hi}"
    return ""


def leaf_fields(cfg_type: type, prefix: str = "") -> list[tuple[str, Any, Any, dict[str, Any]]]:
    """(dotted name, type, default, metadata) for every leaf field of `cfg_type`."""
    hints = typing.get_type_hints(cfg_type)
    inst = cfg_type()
    out = []
    for f in fields(cfg_type):
        tp = hints[f.name]
        if isinstance(tp, type) and is_dataclass(tp):
            out += leaf_fields(tp, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", tp, getattr(inst, f.name), dict(f.metadata)))
    return out


def _set_nested(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def declare_config(node: Node, cfg_type: type[C], prefix: str = "") -> C:
    """Declare one read-only parameter per leaf field of `cfg_type`; return the validated config.

    A parameter already declared (a managed node configured again after a cleanup) is read, not
    declared twice.

    Raises:
        ConfigError: a value out of range, of the wrong type or not among the choices; the message
            starts with the parameter name.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    data: dict[str, Any] = {}
    for name, tp, default, meta in leaf_fields(cfg_type, prefix):
        desc = ParameterDescriptor(description=meta.get("doc", ""), read_only=True, dynamic_typing=True,
                                   additional_constraints=range_text(meta, tp))
        if isinstance(default, tuple):
            ros_default: Any = list(default) if default else None  # dynamic typing: any array type
        else:
            ros_default = default
        if node.has_parameter(name):
            value = node.get_parameter(name).value
        else:
            value = node.declare_parameter(name, ros_default, desc).value
        if value is None:  # an empty list default that nobody set
            continue
        if isinstance(value, (list, tuple)) or type(value).__name__ == "array":
            value = list(value)
        _set_nested(data, name[len(prefix):], value)
    return from_dict(cfg_type, data, prefix=prefix)


def unknown_overrides(node: Node, cfg_type: type, prefix: str = "") -> list[str]:
    """Parameter overrides given to the node (YAML, --ros-args -p) that match no config field."""
    known = {name for name, *_ in leaf_fields(cfg_type, prefix)}
    given = getattr(node, "_parameter_overrides", {}) or {}
    return sorted(n for n in given if n not in known and n not in _FOREIGN_NAMES
                  and not n.startswith(_FOREIGN_PREFIXES))


def check_no_unknown(node: Node, cfg_type: type, prefix: str = "") -> None:
    """Refuse a misspelt parameter instead of silently ignoring it.

    Raises:
        ConfigError: `<name>: unknown parameter (did you mean <closest>?)`.
    """
    unknown = unknown_overrides(node, cfg_type, prefix)
    if unknown:
        known = [name for name, *_ in leaf_fields(cfg_type, prefix)]
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{unknown[0]}: unknown parameter{hint}")
