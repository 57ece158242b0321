"""The curvature pass's shortcuts (issue 24): each against the long way it replaces.

One softmax per pass, no Pos-Eig eigendecomposition for a convex loss (the identity there), σ' from
the forward pass's h, and a solver step that neither re-validates its options nor walks the net twice.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature.kinds import pos_eig
from curvlab.curvature.options import CurvatureOptions
from curvlab.losses import make_loss
from curvlab.modules import chain
from curvlab.modules.elementwise import RELU
from curvlab.solvers import make_solver
from curvlab.solvers.blockwise import as_curvature_options, compute_blocks


def _problem(activation: str = "relu", scale: float = 1.0) -> tuple[curvlab.MLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = curvlab.MLP([7, 6, 5, 4], activation=activation).double()
    return net, scale * torch.randn(23, 7, dtype=torch.float64), torch.randint(0, 4, (23,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relu_derivative_from_its_output_is_the_step_bit_for_bit(dtype: torch.dtype) -> None:
    tiny = torch.finfo(dtype).tiny / 4  # subnormal
    z = torch.cat([torch.tensor([-0.0, 0.0, tiny, -tiny], dtype=dtype), torch.randn(500, dtype=dtype)])
    want = RELU.df(z)  # (z > 0) as 0/1
    for h in (torch.relu(z), nn.ReLU(inplace=True)(z.clone())):  # relu(−0) is −0
        assert RELU.first(z, h).numpy().tobytes() == want.numpy().tobytes()


@pytest.mark.parametrize("kind", ["gn", "pch1", "pch2"])
def test_a_convex_loss_takes_its_mean_hessian_as_the_output_block(kind: str) -> None:
    """Cross-entropy: the PCH output block is the mean Hessian itself (Pos-Eig is the identity on a PSD
    matrix), to round-off the Pos-Eig of it; the nonconvex loss (Eq. 14) keeps Pos-Eig."""
    net, x, y = _problem(scale=4.0)
    cache = chain(net).forward_cache(x)
    for name in ("cross_entropy", "nonconvex"):
        loss = make_loss(name)
        mean = loss.mean_hessian(cache.output, y)
        block = curvlab.curvature(net, x, y, kind=kind, loss=loss, cache=cache)[-1].bias  # the output block
        if name == "cross_entropy" or kind == "gn":
            assert torch.equal(block, mean)
        else:
            assert torch.equal(block, pos_eig(mean))
            assert torch.linalg.eigvalsh(mean).min() < -1e-3  # the case Pos-Eig is for
        if name == "cross_entropy":
            torch.testing.assert_close(block, pos_eig(mean), rtol=0, atol=1e-15)


@pytest.mark.parametrize("kind", ["exact", "gn", "pch1", "pch2"])
@pytest.mark.parametrize("loss", ["cross_entropy", "nonconvex"])
def test_the_recursion_computes_one_softmax_and_no_activation(
    kind: str, loss: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gradient and the output block share one softmax; σ' and σ'' come from the cached h = σ(z)
    (Eq. 14's C(s) is a sigmoid of its own: there the loss's calls are the ones left)."""
    net, x, y = _problem("sigmoid")
    cache = chain(net).forward_cache(x)
    want = curvlab.curvature(net, x, y, kind=kind, loss=loss, cache=cache)
    calls: list[str] = []
    softmax, sigmoid = torch.softmax, torch.sigmoid
    monkeypatch.setattr(torch, "softmax", lambda t, dim: calls.append("softmax") or softmax(t, dim=dim))
    monkeypatch.setattr(torch, "sigmoid", lambda t: calls.append("sigmoid") or sigmoid(t))
    got = curvlab.curvature(net, x, y, kind=kind, loss=loss, cache=cache)
    loss_calls = 2 if loss == "nonconvex" else 0  # C(s) for the gradient and for the output block
    assert calls.count("softmax") == 1 and calls.count("sigmoid") == loss_calls
    for a, b in zip(got, want):
        assert torch.equal(a.bias, b.bias) and torch.equal(a.grad_weight, b.grad_weight)


def test_compute_blocks_takes_the_chain_and_validates_options_once(monkeypatch: pytest.MonkeyPatch) -> None:
    net, x, y = _problem()
    loss = make_loss("cross_entropy")
    full = as_curvature_options({"kind": "pch1", "weight_factor": "full"})
    want = compute_blocks(net, x, y, loss, full, {0, 1, 2})  # validates its rank-one copy of `full` once
    checks: list[CurvatureOptions] = []
    post_init = CurvatureOptions.__post_init__
    monkeypatch.setattr(CurvatureOptions, "__post_init__", lambda self: checks.append(self) or post_init(self))
    got = compute_blocks(chain(net), x, y, loss, full, {0, 1, 2})  # a Chain in place of the net: the same
    assert checks == [] and want[0] == got[0]
    for a, b in zip(want[1], got[1]):
        assert torch.equal(a.input_cov, b.input_cov) and torch.equal(a.bias, b.bias)


@pytest.mark.parametrize(("solver", "walks"), [("eacg", 1), ("kfi", 2)])
def test_a_solver_step_walks_the_net_once(solver: str, walks: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``chain(net)`` once a step for the forward pass and the recursion (which also checks the net, e.g. for
    a Dropout in training mode); KFI's own input needs read the widths once more."""
    net, x, y = _problem()
    s = make_solver(solver, net, make_loss("cross_entropy"), lr=0.1)
    s.step(x, y)  # the first step also reads the depth
    calls: list[object] = []
    for module in ("curvlab.curvature.recursion", "curvlab.solvers.blockwise", f"curvlab.solvers.{solver}"):
        counting = lambda n: calls.append(n) or chain(n)  # noqa: E731
        monkeypatch.setattr(importlib.import_module(module), "chain", counting, raising=False)
    s.step(x, y)
    assert len(calls) == walks
