"""ROS parameters declared once from a config dataclass, validated on every change.

A node describes its parameters as a frozen dataclass whose fields carry :func:`param` metadata
(description, allowed values, range). :class:`NodeParameters` declares one ROS parameter per
field (typed from the default value, with the description and constraints in the descriptor, so
``ros2 param describe`` shows them), builds the dataclass from the values given at start-up, and
validates every later change in an on-set callback: a wrong value is rejected with a reason and
the old one kept (ros2/demos ``set_parameters_callback.py``, realsense-ros). The dataclass's own
``__post_init__`` may raise ValueError for rules spanning several fields; those reject too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType,
                                SetParametersResult)
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data, qos_profile_system_default

# Values of the per-stream QoS parameters (realsense-ros's names), and what they mean.
QOS_CHOICES = ("SENSOR_DATA", "DEFAULT", "SYSTEM_DEFAULT")
QOS_HELP = ("SENSOR_DATA: best effort, keep last 5 (subscribers such as rviz must use Best Effort); "
            "DEFAULT: reliable, keep last 10; SYSTEM_DEFAULT: the RMW's defaults")


def qos_profile(name: str) -> QoSProfile:
    """The QoS profile for one of :data:`QOS_CHOICES`."""
    if name == "SENSOR_DATA":
        return qos_profile_sensor_data
    if name == "DEFAULT":
        return QoSProfile(depth=10)
    if name == "SYSTEM_DEFAULT":
        return qos_profile_system_default
    raise ValueError(f"qos: expected one of {QOS_CHOICES}, got {name!r}")


def param(description: str, choices: Optional[Sequence[Any]] = None, min: Optional[float] = None,
          max: Optional[float] = None, read_only: bool = False) -> Dict[str, Any]:
    """Field metadata for a ROS parameter: ``field(default=..., metadata=param(...))``.

    :param choices: the only values allowed (strings or numbers), listed in the description.
    :param min: inclusive lower bound (numbers).
    :param max: inclusive upper bound (numbers).
    :param read_only: the value can only be set at start-up.
    """
    return {"ros_param": dict(description=description, choices=tuple(choices) if choices else None,
                              min=min, max=max, read_only=read_only)}


_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING}


def _spec(f: dataclasses.Field) -> Dict[str, Any]:
    spec = f.metadata.get("ros_param")
    if spec is None:
        raise ValueError(f"{f.name}: a parameter dataclass field needs metadata=param(...)")
    return spec


def check_value(name: str, value: Any, default: Any, spec: Dict[str, Any]) -> Optional[str]:
    """The reason ``value`` is not allowed for parameter ``name``, or None when it is."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        return f"{name}: expected a {kind.__name__}, got {type(value).__name__} {value!r}"
    if spec["choices"] is not None and value not in spec["choices"]:
        return f"{name}: expected one of {list(spec['choices'])}, got {value!r}"
    if spec["min"] is not None and value < spec["min"]:
        return f"{name}: expected >= {spec['min']}, got {value!r}"
    if spec["max"] is not None and value > spec["max"]:
        return f"{name}: expected <= {spec['max']}, got {value!r}"
    return None


class NodeParameters:
    """Declares a node's parameters from ``config_cls`` and keeps ``self.config`` valid and current.

    :param node: the node to declare on.
    :param config_cls: a dataclass whose fields all have :func:`param` metadata and defaults.
    :param on_change: called as ``on_change(old, new)`` after a change was accepted.
    :param check: called as ``check(config)`` on every candidate config, start-up included, after
        the dataclass accepted it; raises ValueError for what only the node can judge (e.g. topic
        names against the node's own namespace). Runs before anything is applied.
    :raises ValueError: the start-up values (launch file, command line) are invalid.
    """

    def __init__(self, node: Node, config_cls, on_change: Optional[Callable[[Any, Any], None]] = None,
                 check: Optional[Callable[[Any], None]] = None):
        self._node = node
        self._cls = config_cls
        self._fields = {f.name: f for f in dataclasses.fields(config_cls)}
        self._on_change = on_change
        self._check = check
        values = {}
        for name, f in self._fields.items():
            spec = _spec(f)
            default = f.default
            if type(default) not in _TYPES:
                raise ValueError(f"{name}: parameter defaults must be bool/int/float/str, got "
                                 f"{type(default).__name__}")
            constraints = []
            if spec["choices"] is not None:
                constraints.append(f"one of {list(spec['choices'])}")
            if spec["min"] is not None or spec["max"] is not None:
                constraints.append(f"range [{spec['min']}, {spec['max']}]")
            desc = ParameterDescriptor(name=name, type=_TYPES[type(default)], description=spec["description"],
                                       additional_constraints="; ".join(constraints),
                                       read_only=spec["read_only"])
            # Ranges only where both ends are given (the descriptor needs both); the callback checks all.
            if spec["min"] is not None and spec["max"] is not None:
                if isinstance(default, float):
                    desc.floating_point_range = [FloatingPointRange(
                        from_value=float(spec["min"]), to_value=float(spec["max"]), step=0.0)]
                elif isinstance(default, int) and not isinstance(default, bool):
                    desc.integer_range = [IntegerRange(from_value=int(spec["min"]),
                                                       to_value=int(spec["max"]), step=0)]
            overrides = getattr(node, "_parameter_overrides", {})  # rclpy keeps them here, unexposed
            given = overrides.get(name)
            if isinstance(default, float) and given is not None and given.type_ == Parameter.Type.INTEGER:
                # `-p x:=0` parses as an integer, which rclpy refuses for a double parameter at
                # start-up; take it as 0.0 (a later set_parameters with an int is a plain rejection).
                overrides[name] = Parameter(name, value=float(given.value))
            values[name] = node.declare_parameter(name, default, desc).value
        reason = self._validate(values)
        if reason:
            raise ValueError(f"invalid parameter: {reason}")
        self.config = self._build(values)
        node.add_on_set_parameters_callback(self._on_set)

    def _build(self, values: Dict[str, Any]):
        cast = {k: (float(v) if isinstance(self._fields[k].default, float) else v) for k, v in values.items()}
        return self._cls(**cast)

    def _validate(self, values: Dict[str, Any]) -> Optional[str]:
        for name, value in values.items():
            f = self._fields[name]
            reason = check_value(name, value, f.default, _spec(f))
            if reason:
                return reason
        try:
            config = self._build(values)
            if self._check is not None:
                self._check(config)
        except (ValueError, TypeError) as exc:
            return str(exc)
        return None

    def _on_set(self, params: Sequence[Parameter]) -> SetParametersResult:
        values = dataclasses.asdict(self.config)
        for p in params:
            if p.name not in self._fields:
                continue  # not ours (e.g. use_sim_time)
            if _spec(self._fields[p.name])["read_only"]:
                return SetParametersResult(successful=False, reason=f"{p.name} is read-only")
            values[p.name] = p.value
        reason = self._validate(values)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        old, self.config = self.config, self._build(values)
        if self._on_change is not None and old != self.config:
            try:
                self._on_change(old, self.config)
            except Exception as exc:  # noqa: BLE001 -- an escaping exception would kill the node
                # Validation should have caught it; keep node and parameter state as they were.
                self.config = old
                self._node.get_logger().error(f"parameter change not applied: {type(exc).__name__}: {exc}")
                return SetParametersResult(successful=False, reason=f"not applied: {exc}")
        return SetParametersResult(successful=True)


def params_markdown(config_cls) -> str:
    """A Markdown table of a parameter dataclass (name, type, default, description): README's source."""
    rows = ["| parameter | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(config_cls):
        spec = _spec(f)
        desc = spec["description"]
        if spec["min"] is not None or spec["max"] is not None:
            lo = "" if spec["min"] is None else f"{spec['min']} ≤ "
            hi = "" if spec["max"] is None else f" ≤ {spec['max']}"
            desc += f" ({lo}value{hi})"
        if spec["choices"] and not all(str(c) in desc for c in spec["choices"]):
            desc += " (one of " + ", ".join(f"`{c}`" for c in spec["choices"]) + ")"
        if spec["read_only"]:
            desc += " (read-only: set at start-up)"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{f.name}` | {type(default).__name__} | `{default!r}` | "
                    f"{desc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
