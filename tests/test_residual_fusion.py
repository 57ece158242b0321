"""The fused residual of sigmoid and tanh: σ'' ⊙ u straight from g = σ' ⊙ u and h = σ(z), and the
recursion that uses it (and carries nothing else new) against the unfused σ'' route in float64."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

import curvlab
from curvlab.curvature.recursion import curvature
from curvlab.modules import Chain, chain
from curvlab.modules.elementwise import SIGMOID, TANH

ACTS = {"sigmoid": (SIGMOID, nn.Sigmoid()), "tanh": (TANH, nn.Tanh())}


@pytest.mark.parametrize("name", ACTS)
def test_residual_from_gradient_and_output_is_second_derivative_times_u(name: str) -> None:
    fns, module = ACTS[name]
    gen = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(9, 13, dtype=torch.float64, generator=gen)
    u = torch.randn(9, 13, dtype=torch.float64, generator=gen)
    h = module(z)
    g = fns.df(z) * u
    second = torch.func.vmap(torch.func.grad(torch.func.grad(lambda s: module(s))))(z.flatten()).view_as(z)
    expected = second * u
    assert fns.residual_out is not None
    torch.testing.assert_close(fns.residual_out(g, h, None), expected, rtol=1e-13, atol=1e-15)
    buf = torch.empty_like(g)
    r = fns.residual_out(g, h, buf)
    assert r.data_ptr() == buf.data_ptr()  # written into the given buffer: no fresh pages
    torch.testing.assert_close(r, expected, rtol=1e-13, atol=1e-15)


def _unfused(net: nn.Module) -> Chain:
    """The net's chain with every activation on the σ'' route (``residual_out`` dropped)."""
    view = chain(net)
    return replace(view, acts=tuple(replace(f, residual_out=None) for f in view.acts))


def _nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mlp_sigmoid": curvlab.MLP([12, 10, 8, 6, 4], "sigmoid", init="xavier").double(),
        "mixed": nn.Sequential(
            nn.Linear(9, 7), nn.Tanh(), nn.Linear(7, 6), nn.Sigmoid(), nn.Linear(6, 5), nn.Softplus(), nn.Linear(5, 4)
        ).double(),
    }


@pytest.mark.parametrize("net_name", ["mlp_sigmoid", "mixed"])
@pytest.mark.parametrize("kind", ["exact", "pch1", "pch2", "gn"])
def test_fused_recursion_matches_the_second_derivative_route(net_name: str, kind: str) -> None:
    """Same blocks within 1e-15 of their size (one rounding moved: (1 − 2s)·(σ'u) for (σ'(1 − 2s))·u);
    the gradients bit for bit (only the residual changed)."""
    net = _nets()[net_name]
    first = net[0] if isinstance(net, nn.Sequential) else None
    n_in = first.in_features if first is not None else 12
    x = 2 * torch.randn(40, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(2))
    fused = curvature(net, x, y, kind)
    plain = curvature(_unfused(net), x, y, kind)
    for a, b in zip(fused, plain):
        assert torch.equal(a.grad_bias, b.grad_bias) and torch.equal(a.grad_weight, b.grad_weight)
        assert torch.equal(a.bias, a.bias.T)  # still exactly symmetric
        err = (a.bias - b.bias).abs().max() / b.bias.abs().max()
        assert err <= 1e-15, f"layer block differs by {err:.2e} of its size"
    if kind in ("exact", "pch1"):  # the residual matters: the fused one is used and differs from GN
        gn = curvature(net, x, y, "gn")
        assert any(not torch.allclose(a.bias, b.bias) for a, b in zip(fused, gn))


@pytest.mark.parametrize(("kind", "calls"), [("pch1", 3), ("exact", 3), ("gn", 0)])
def test_recursion_takes_the_fused_route_where_sigmoid_allows_it(kind: str, calls: int) -> None:
    """Sigmoid MLP with hidden layers 10, 8, 6: each one's residual goes through ``residual_out``
    (Gauss-Newton drops it)."""
    net = _nets()["mlp_sigmoid"]
    seen: list[tuple[int, ...]] = []

    def counting(fn: Callable[[Tensor, Tensor, Tensor | None], Tensor]) -> Callable[..., Tensor]:
        return lambda g, h, out: seen.append(tuple(g.shape)) or fn(g, h, out)

    acts = []
    for f in chain(net).acts:
        assert f.residual_out is not None  # sigmoid has the fused form
        acts.append(replace(f, residual_out=counting(f.residual_out)))
    view = replace(chain(net), acts=tuple(acts))
    x = torch.randn(20, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    curvature(view, x, torch.randint(0, 4, (20,), generator=torch.Generator().manual_seed(5)), kind)
    assert len(seen) == calls
