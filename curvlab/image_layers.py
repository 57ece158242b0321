"""Image layers of a layer list (the runner's ``net.layers``): ``conv(...)``, ``maxpool(...)``, …

An entry is written as a call with the arguments of the torch module after its input channels,
so ``conv(32, 5, padding=2)`` is ``nn.Conv2d(C_in, 32, 5, padding=2)`` with ``C_in`` taken from
the layer before, ``maxpool(3, 2)`` is ``nn.MaxPool2d(3, 2)`` (``avgpool`` likewise,
``adaptiveavgpool(1)`` is ``nn.AdaptiveAvgPool2d(1)``) and ``zeropad([0, 1, 0, 1])`` is
``nn.ZeroPad2d((0, 1, 0, 1))`` (left, right, top, bottom). Arguments are integers, lists of
integers, or (a convolution's padding) ``same`` / ``valid``. :func:`parse_call` checks an entry
and writes it in one normal form; :func:`build_call` makes the module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

__all__ = ["CALLS", "Call", "parse_call", "build_call", "is_call"]


@dataclass(frozen=True)
class _Signature:
    """A call's argument names (positional order) and how many are required."""

    names: tuple[str, ...]
    required: int
    make: Callable[..., nn.Module]  # (in_channels, bias, **arguments) -> module


CALLS: dict[str, _Signature] = {
    "conv": _Signature(("out_channels", "kernel_size", "stride", "padding", "dilation"), 2,
                       lambda c_in, bias, **kw: nn.Conv2d(c_in, bias=bias, **kw)),
    "maxpool": _Signature(("kernel_size", "stride", "padding"), 1, lambda c_in, bias, **kw: nn.MaxPool2d(**kw)),
    "avgpool": _Signature(("kernel_size", "stride", "padding"), 1, lambda c_in, bias, **kw: nn.AvgPool2d(**kw)),
    "adaptiveavgpool": _Signature(("output_size",), 1, lambda c_in, bias, **kw: nn.AdaptiveAvgPool2d(**kw)),
    "zeropad": _Signature(("padding",), 1, lambda c_in, bias, **kw: nn.ZeroPad2d(**kw)),
}


@dataclass(frozen=True)
class Call:
    """A parsed entry: the call's name and its arguments by name (lists as tuples)."""

    name: str
    args: dict[str, Any]

    def __str__(self) -> str:
        def show(v: Any) -> str:
            return f"[{', '.join(map(str, v))}]" if isinstance(v, tuple) else str(v)

        return f"{self.name}({', '.join(f'{k}={show(v)}' for k, v in self.args.items())})"


def is_call(item: Any) -> bool:
    """Whether a layer-list entry is written as a call, e.g. ``conv(32, 5)``."""
    return isinstance(item, str) and "(" in item


def _value(node: ast.expr, name: str, where: str) -> Any:
    """An argument: a positive int (>= 0 for padding), a list of them, or same/valid for padding."""
    if name == "padding" and isinstance(node, ast.Name) and node.id in ("same", "valid"):
        return node.id
    try:
        value = ast.literal_eval(node)
    except ValueError:
        value = ast.unparse(node)
    if name == "padding" and value in ("same", "valid"):
        return value
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    low = 0 if name == "padding" else 1
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in items):
        kind = "same, valid, " if name == "padding" else ""
        raise ValueError(f"{where}: {name}={value!r} must be {kind}an integer >= {low} or a list of them")
    return tuple(items) if isinstance(value, (list, tuple)) else value


def parse_call(text: str, where: str = "net.layers") -> Call:
    """Check a call entry (name, argument names, values) and return it parsed.

    Raises:
        ValueError: naming the entry, what is wrong and the allowed form.
    """
    forms = ", ".join(f"{n}({', '.join(s.names[: s.required])}, ...)" for n, s in CALLS.items())
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        node = None
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        raise ValueError(f"{where}: cannot read {text!r}; write a call such as conv(32, 5, padding=2); forms: {forms}")
    name = node.func.id.lower()
    sig = CALLS.get(name)
    if sig is None:
        raise ValueError(f"{where}: unknown layer {node.func.id!r} in {text!r}; allowed: {forms}")
    if len(node.args) > len(sig.names):
        raise ValueError(f"{where}: {name} takes at most {len(sig.names)} arguments ({', '.join(sig.names)}), "
                         f"got {len(node.args)} in {text!r}")
    args = {n: _value(a, n, where) for n, a in zip(sig.names, node.args)}
    for kw in node.keywords:
        if kw.arg not in sig.names:
            raise ValueError(f"{where}: {name} has no argument {kw.arg!r} (in {text!r}); its arguments: "
                             f"{', '.join(sig.names)}")
        if kw.arg in args:
            raise ValueError(f"{where}: {name} gets {kw.arg} twice in {text!r}")
        args[kw.arg] = _value(kw.value, kw.arg, where)
    missing = [n for n in sig.names[: sig.required] if n not in args]
    if missing:
        raise ValueError(f"{where}: {name} needs {', '.join(missing)} (in {text!r}); e.g. {forms}")
    if name != "conv" and isinstance(args.get("padding"), str):
        raise ValueError(f"{where}: {name}'s padding must be integers, got {args['padding']!r}; "
                         "put zeropad([left, right, top, bottom]) in front of it for an uneven padding")
    return Call(name, {n: args[n] for n in sig.names if n in args})  # in signature order: one normal form


def build_call(call: Call, in_channels: int, bias: bool) -> nn.Module:
    """The torch module of a parsed call on ``in_channels`` input channels."""
    return CALLS[call.name].make(in_channels, bias, **call.args)
