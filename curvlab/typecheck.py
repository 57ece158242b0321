"""Check plain config values (from YAML or the command line) against type annotations.

:func:`check_value` is driven by the annotations of the config dataclasses and of the
solvers' constructors, so a field added there is checked without further code. It
converts where the meaning is unambiguous (an integral float such as ``12.0`` to ``12``,
an enum's name to the enum, a list to a fixed-length tuple) and otherwise raises a
``ValueError`` that names the field, the bad value and what is allowed, e.g.
``net.widths[1] must be an integer, got 2.5``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from enum import Enum
from typing import Any, Literal, Union

__all__ = ["INT_LIMIT", "check_value", "check_fields", "describe", "type_hints"]

# Larger integers are typos (batch_size=1e12) and overflow the int32 sizes of tensor kernels.
INT_LIMIT = 2**31 - 1

_PLURAL = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


class TypeMismatch(ValueError):
    """``value`` has the wrong type for ``name``; the message says which types are allowed."""

    def __init__(self, name: str, tp: Any, value: Any) -> None:
        super().__init__(f"{name} must be {describe(tp)}, got {_show(value)}")


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"  # 1e12, not 1000000000000.0
    return repr(value)


def _members(tp: Any) -> list[Any]:
    """The members of a union that a config can hold (drops e.g. ``Tensor``)."""
    return [a for a in typing.get_args(tp) if _configurable(a)]


def _configurable(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return bool(_members(tp))
    if origin in (list, tuple, dict, Literal):
        return True
    return tp is Any or tp in (type(None), bool, int, float, str) or (
        isinstance(tp, type) and (issubclass(tp, Enum) or dataclasses.is_dataclass(tp))
    )


def describe(tp: Any) -> str:
    """What a value of type ``tp`` looks like in a config, e.g. ``a list of integers``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in _members(tp))
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return f"a list of {_PLURAL.get(args[0]) or 'items that are ' + describe(args[0])}" if args else "a list"
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin is dict:
        return "a mapping (key: value)"
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return "a mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp) if f.init)
    named = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Any: "any value"}
    return named.get(tp, getattr(tp, "__name__", str(tp)))


def check_value(value: Any, tp: Any, name: str) -> Any:
    """``value`` as the annotated type ``tp`` (converted where unambiguous).

    Raises:
        ValueError: naming ``name``, the value and what is allowed.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or not _configurable(tp):
        return value  # e.g. a Tensor-only option: nothing a config could hold
    if origin in (Union, types.UnionType):
        for member in _members(tp):
            try:
                return check_value(value, member, name)
            except TypeMismatch:
                continue
        raise TypeMismatch(name, tp, value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeMismatch(name, tp, value)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise TypeMismatch(name, tp, value)
            return tuple(check_value(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [check_value(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeMismatch(name, tp, value)
        item = args[1] if len(args) == 2 else Any
        return {k: check_value(v, item, f"{name}.{k}") for k, v in value.items()}
    if origin is Literal:
        if value not in args:
            raise TypeMismatch(name, tp, value)
        return value
    return _check_scalar(value, tp, name)


def _check_scalar(value: Any, tp: Any, name: str) -> Any:
    if tp is type(None):
        if value is not None:
            raise TypeMismatch(name, tp, value)
        return None
    if isinstance(tp, type) and issubclass(tp, Enum):
        if isinstance(value, tp):
            return value
        if not isinstance(value, str):
            raise TypeMismatch(name, tp, value)
        from curvlab.curvature.options import parse_enum  # its message lists the allowed values

        return parse_enum(tp, value, name)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise TypeMismatch(name, tp, value)
        return tp(**check_fields(tp, value, name))
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeMismatch(name, tp, value)
        return value
    if tp is int:
        return _check_int(value, name)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeMismatch(name, tp, value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {_show(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeMismatch(name, tp, value)
        return str(value)  # experiment_name=2024 is a name
    return value


def _check_int(value: Any, name: str) -> int:
    """Integers, and integral floats (``12.0``; Hydra reads ``1e3`` as a float), within ±INT_LIMIT."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeMismatch(name, int, value)
    if isinstance(value, float) and not value.is_integer():
        raise TypeMismatch(name, int, value)
    if abs(value) > INT_LIMIT:
        raise ValueError(f"{name} must be an integer of at most {INT_LIMIT} in size, got {_show(value)}")
    return int(value)


def type_hints(obj: Any) -> dict[str, Any]:
    """Resolved annotations of a class or function (``Any`` where one cannot be resolved)."""
    try:
        return typing.get_type_hints(obj)
    except Exception:  # a name imported only for type checking: check nothing rather than fail
        return {k: Any for k in getattr(obj, "__annotations__", {})}


def check_fields(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The keyword arguments of dataclass ``cls`` from ``data``, each checked against its annotation.

    Raises:
        ValueError: for a key that is no field (naming the allowed ones) or a value of the wrong type.
    """
    names = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{_join(prefix, unknown[0])}: unknown field; allowed: {', '.join(names)}")
    hints = type_hints(cls)
    return {k: check_value(v, hints.get(k, Any), _join(prefix, k)) for k, v in data.items()}


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)
