"""The fast kernels of the linear and element-wise rules: σ' alone equals σ' of the shared
(σ', σ'') pair, E[h hᵀ] is exactly symmetric on the multi-panel path, and the in-place
factor pull-back leaves its inputs alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from curvlab.modules import ELEMENTWISE, LINEAR, rule_for

KWARGS = {nn.LeakyReLU: {"negative_slope": 0.3}, nn.ELU: {"alpha": 0.7}, nn.Softplus: {"beta": 1.5, "threshold": 3.0}}


@pytest.mark.parametrize("cls", list(ELEMENTWISE), ids=lambda c: c.__name__)
def test_first_derivative_alone_matches_the_pair(cls: type[nn.Module]) -> None:
    """Gauss-Newton and Fisher passes call σ' alone (``df``); PCH and exact call (σ', σ'')."""
    module = cls(**KWARGS.get(cls, {}))
    fns = rule_for(module).bind(module)  # type: ignore[attr-defined]
    z = torch.randn(7, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    d1, d2 = fns.derivatives(z)
    torch.testing.assert_close(fns.df(z), d1, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(fns.d2f(z), d2, rtol=1e-13, atol=1e-15)
    zz = z.clone().requires_grad_()
    module(zz).sum().backward()  # element-wise: the gradient of the sum is σ'
    torch.testing.assert_close(fns.df(z), zz.grad)


@pytest.mark.parametrize("cls", list(ELEMENTWISE), ids=lambda c: c.__name__)
def test_derivatives_from_the_output_agree_bit_for_bit(cls: type[nn.Module]) -> None:
    """A recursion that passes the cached output h = σ(z) gets the same σ', σ'' as from z."""
    module = cls(**KWARGS.get(cls, {}))
    fns = rule_for(module).bind(module)  # type: ignore[attr-defined]
    z = torch.randn(7, 11, generator=torch.Generator().manual_seed(3)) * 3
    z[0, :3] = 0.0  # ReLU's kink: σ'(0) = 0 from z and from h
    h = module(z)
    d1, d2 = fns.derivatives(z)
    e1, e2 = fns.derivatives(z, h)
    assert torch.equal(d1, e1) and torch.equal(d2, e2)
    assert torch.equal(fns.first(z, h), fns.df(z)) and torch.equal(fns.first(z), fns.df(z))
    has_out = cls in (nn.Sigmoid, nn.Tanh, nn.ReLU)
    assert (fns.df_out is not None) == has_out  # the others fall back to z


@pytest.mark.parametrize("width", [600, 1300])  # 2 and 5 panels of the symmetric product
def test_input_covariance_is_exactly_symmetric(width: int) -> None:
    h = torch.rand(100, width, generator=torch.Generator().manual_seed(1))  # float32, as in training
    mean, cov = LINEAR.input_factors(h, True)
    assert cov is not None
    torch.testing.assert_close(cov, h.double().T @ h.double() / 100, check_dtype=False, rtol=1e-5, atol=1e-6)
    assert torch.equal(cov, cov.T)
    torch.testing.assert_close(mean, h.mean(0))
    assert LINEAR.input_factors(h, False)[1] is None


def test_factor_pull_back_leaves_its_inputs_alone() -> None:
    gen = torch.Generator().manual_seed(2)
    lin = nn.Linear(6, 4).double()
    factors = torch.randn(5, 3, 4, dtype=torch.float64, generator=gen)
    d = torch.rand(5, 6, dtype=torch.float64, generator=gen)
    before = factors.clone(), d.clone()
    got = LINEAR.jac_t_factors(lin, factors, d)
    torch.testing.assert_close(got, factors @ lin.weight.detach() * d[:, None, :])
    assert torch.equal(factors, before[0]) and torch.equal(d, before[1])
