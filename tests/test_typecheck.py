"""The generic type check behind every config field and solver option (curvlab.typecheck)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import torch

from curvlab.curvature.options import Kind
from curvlab.typecheck import INT_LIMIT, check_fields, check_value


@pytest.mark.parametrize(("value", "tp", "expected"), [
    (12.0, int, 12), (3, float, 3.0), (None, int | None, None), ("gn", Kind, Kind.GN), ([1, 2.0], list[int], [1, 2]),
    ([0.9, 0.99], tuple[float | torch.Tensor, float | torch.Tensor], (0.9, 0.99)), (2024, str, "2024"),
    ("a", Literal["a", "b"], "a"), ({"x": 1}, dict[str, float], {"x": 1.0}), ("anything", Any, "anything"),
    (0.5, float | torch.Tensor, 0.5), (-INT_LIMIT, int, -INT_LIMIT),
])
def test_good_values_are_converted(value, tp, expected):
    out = check_value(value, tp, "f")
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(("value", "tp", "message"), [
    (1.5, int, "f must be an integer, got 1.5"),
    (True, int, "f must be an integer, got True"),
    ("1", int, "f must be an integer, got '1'"),
    (float("nan"), int, "f must be an integer, got nan"),
    (INT_LIMIT + 1, int, f"f must be an integer of at most {INT_LIMIT} in size, got {INT_LIMIT + 1}"),
    (float("inf"), float, "f must be a finite number, got inf"),
    ("maybe", bool, "f must be true or false, got 'maybe'"),
    (1, bool, "f must be true or false, got 1"),
    ([1, "x"], list[int], "f[1] must be an integer, got 'x'"),
    ([1, 2, 3], tuple[float, float], "f must be a list of 2 values (a number, a number), got [1, 2, 3]"),
    ("c", Literal["a", "b"], "f must be one of a, b, got 'c'"),
    ({"x": "y"}, dict[str, float], "f.x must be a number, got 'y'"),
    ("big", float | torch.Tensor, "f must be a number, got 'big'"),  # Tensor: nothing a config holds
    ([1], str, "f must be a string, got [1]"),
    (3, Kind, "f must be one of exact, gn, fisher, pch, pch1, pch2, got 3"),
])
def test_bad_values_name_the_field_value_and_allowed(value, tp, message):
    with pytest.raises(ValueError) as err:
        check_value(value, tp, "f")
    assert str(err.value) == message


@dataclass
class Layer:
    """A stand-in for a new config field: a net given as a list of layers."""

    width: int
    activation: Kind = Kind.PCH1


@dataclass
class Section:
    layers: list[Layer] = field(default_factory=list)
    scale: float | None = None


def test_a_new_config_field_is_type_checked_without_further_code():
    ok = Section(**check_fields(Section, {"layers": [{"width": 3.0, "activation": "gn"}]}, "net"))
    assert ok.layers == [Layer(3, Kind.GN)]
    for data, message in [
        ({"layers": [{"width": 2.5}]}, "net.layers[0].width must be an integer, got 2.5"),
        ({"layers": [{"width": 2, "foo": 1}]}, "net.layers[0].foo: unknown field; allowed: activation, width"),
        ({"layers": [{"width": 2, "activation": "x"}]}, "net.layers[0].activation: unknown value 'x'"),
        ({"layers": 3}, "net.layers must be a list of items that are a mapping with keys width, activation"),
        ({"scale": "big"}, "net.scale must be a number or null, got 'big'"),
    ]:
        with pytest.raises(ValueError) as err:
            check_fields(Section, data, "net")
        assert message in str(err.value)
