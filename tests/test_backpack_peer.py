"""BackPACK's HBP extension as a peer: the same nn.Sequential gives the same blocks.

How BackPACK's HBP options (Dangel & Hennig, Section 3.2 and Table 1) map onto curvlab:

===============================================  =====================================================
BackPACK ``HBP(...)``                            curvlab
===============================================  =====================================================
``curv_type="ggn"``                              ``kind="gn"``
``curv_type="pch-abs"``                          ``kind="pch1"`` (Pos-Eig with |·|, γ = −1)
``curv_type="pch-clip"``                         ``kind="pch2"`` (Pos-Eig with max(·, 0), γ = 0)
``curv_type="hessian"``                          the EA recursion with the residual kept
                                                 (``kinds.EA_EXACT``, not a public kind: for a batch
                                                 it is not the Hessian, ``kind="exact"`` is)
``loss_hessian_strategy=SUM``                    the output block E_i[∇²ξ_i] of the batch-mean loss
``backprop_strategy=BATCH_AVERAGE``              ``jacobian_average="per_sample"``: E[σ'σ'ᵀ] ⊙ WᵀH̄W
                                                 (EA-CG Eq. 6); curvlab's ``"mean"`` (HBP Eq. 7) has
                                                 no BackPACK option
``ea_strategy=CHEN`` ("E(J^T) E(H) E(J)")        ``weight_factor="rank_one"``: ``input_mean`` E[h]
``ea_strategy=BOTEV_MARTENS`` ("E[J^T E(H) J]")  ``weight_factor="full"``: ``input_cov`` E[h hᵀ]
``ggn``, ``loss_hessian_strategy=EXACT``,        ``kind="fisher", fisher="exact"``: the exact
``backprop_strategy=SQRT``                       per-sample GGN bias block E_i[J_iᵀ ∇²ξ_i J_i] (KFLR)
===============================================  =====================================================

The bias blocks do not depend on ``ea_strategy``; BackPACK stores a Linear layer's weight
block as ``[bias block, E[h], E[h]ᵀ]`` (CHEN) or ``[bias block, E[h hᵀ]]`` (BOTEV_MARTENS).
Only BOTEV_MARTENS runs here: with CHEN, backpack-for-pytorch 1.7.1 raises a TypeError
(``HBPLinear._factors_from_input`` calls ``mean_input.transpose()`` without dimensions).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature.kinds import EA_EXACT
from curvlab.curvature.options import CurvatureOptions
from curvlab.curvature.recursion import backward
from curvlab.losses import CrossEntropy
from curvlab.modules import chain

backpack = pytest.importorskip("backpack", reason="backpack-for-pytorch is a dev extra")
from backpack.extensions import HBP  # noqa: E402
from backpack.extensions.secondorder.hbp import BackpropStrategy, ExpectationApproximation, LossHessianStrategy  # noqa: E402

CURV_TYPES = {"ggn": "gn", "pch-abs": "pch1", "pch-clip": "pch2"}


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 5), nn.Sigmoid(), nn.Linear(5, 4), nn.Tanh(),
        nn.Linear(4, 3),
    ).double()
    for p in net.parameters():
        nn.init.uniform_(p, -0.8, 0.8)
    gen = torch.Generator().manual_seed(seed)
    x = 2.0 * torch.randn(7, 2, 2, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (7,), generator=gen)
    return net, x, y


def _hbp(net: nn.Module, x: torch.Tensor, y: torch.Tensor, **options: str) -> list[list[torch.Tensor]]:
    """BackPACK's HBP quantities (bias block list, weight factor list) of every Linear, input side first."""
    model = backpack.extend(net)
    lossfn = backpack.extend(nn.CrossEntropyLoss())  # reduction="mean": the batch-mean loss
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook")  # the input needs no gradient
        with backpack.backpack(HBP(savefield="hbp", **options)):
            lossfn(model(x), y).backward()
    return [[lin.bias.hbp, lin.weight.hbp] for lin in chain(net).layers]


EA = ExpectationApproximation.BOTEV_MARTENS


@pytest.mark.parametrize("curv_type", CURV_TYPES)
def test_hbp_batch_average_equals_our_kinds(curv_type: str) -> None:
    net, x, y = _problem()
    peer = _hbp(net, x, y, curv_type=curv_type, loss_hessian_strategy=LossHessianStrategy.SUM,
                backprop_strategy=BackpropStrategy.BATCH_AVERAGE, ea_strategy=EA)
    ours = curvlab.curvature(net, x, y, kind=CURV_TYPES[curv_type], jacobian_average="per_sample", input_cov=True)
    for (bias, weight), blk in zip(peer, ours, strict=True):
        assert len(bias) == 1 and blk.bias.abs().max() > 1e-4
        torch.testing.assert_close(blk.bias, bias[0], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(weight[0], bias[0], rtol=0, atol=0)
        torch.testing.assert_close(weight[1], blk.input_cov, rtol=1e-12, atol=1e-14)  # weight_factor="full"


def test_pch_differs_from_ggn_here() -> None:
    """The residual terms matter on this problem, so the checks above tell the kinds apart."""
    net, x, y = _problem()
    gn, pch1, pch2 = (curvlab.curvature(net, x, y, kind=k)[0].bias for k in ("gn", "pch1", "pch2"))
    assert (gn - pch1).abs().max() > 1e-4 and (pch1 - pch2).abs().max() > 1e-4


def test_hbp_hessian_equals_the_ea_recursion_with_the_residual_kept() -> None:
    net, x, y = _problem()
    peer = _hbp(net, x, y, curv_type="hessian", loss_hessian_strategy=LossHessianStrategy.SUM,
                backprop_strategy=BackpropStrategy.BATCH_AVERAGE, ea_strategy=EA)
    view = chain(net)
    with torch.no_grad():
        sums = backward(view, view.forward_cache(x), y, CrossEntropy(), EA_EXACT, CurvatureOptions())
    for (bias, _), s in zip(peer, sums, strict=True):
        torch.testing.assert_close(0.5 * (s["block"] + s["block"].T), bias[0], rtol=1e-10, atol=1e-13)


def test_hbp_sqrt_ggn_equals_the_exact_fisher() -> None:
    """Per-sample GGN (exact loss Hessian factor, SQRT backprop) = the exact-expectation Fisher for CE."""
    net, x, y = _problem()
    peer = _hbp(net, x, y, curv_type="ggn", loss_hessian_strategy=LossHessianStrategy.EXACT,
                backprop_strategy=BackpropStrategy.SQRT, ea_strategy=EA)
    ours = curvlab.curvature(net, x, y, kind="fisher", fisher="exact")
    for (bias, _), blk in zip(peer, ours, strict=True):
        torch.testing.assert_close(blk.bias, bias[0], rtol=1e-10, atol=1e-13)
