"""On a ReLU conv net with the cross-entropy, PCH-1 ≡ PCH-2 ≡ GN ≡ exact Hessian ≡ exact Fisher.

Why (Chen et al. Eqs. 4b, 8a–8b): each sample's cross-entropy output Hessian H_i = diag(p_i) − p_i p_iᵀ is
PSD, so Pos-Eig leaves it unchanged (8a), and ReLU, max-pooling, padding and the conv/linear steps have no
second-order term, so there is no residual for |·| or max(·, 0) to act on (8b): PCH-1, PCH-2 and GN run the
same recursion, which is the exact one (4b); the exact-expectation Fisher's factors Σ_c p_c g_c g_cᵀ are H_i.
This is why the conv presets (``mnist_2c2d``, ``cifar10_3c3d``: ReLU + CE) need only one of these runs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature import curvature
from curvlab.losses import make_loss

DT = torch.float64
CE = make_loss("cross_entropy")


def _net() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """The presets' pattern, small: conv → ReLU → max-pool (stride 2) → conv "same" → ReLU → zero-pad →
    max-pool → Flatten → Linear → ReLU → Linear, 8 samples of 2×10×10, 5 classes."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(),
        nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 5),
    ).to(DT)
    return net, torch.randn(8, 2, 10, 10, dtype=DT), torch.randint(0, 5, (8,))


def test_gn_pch1_pch2_exact_and_exact_fisher_blocks_agree_to_round_off():
    net, x, y = _net()
    gn = curvature(net, x, y, "gn", CE, sketch=False, block_products=True)
    others = {k: curvature(net, x, y, k, CE, sketch=False, block_products=True) for k in ("pch1", "pch2")}
    others["exact"] = curvature(net, x, y, "exact", CE, block_products=True)
    others["fisher (exact)"] = curvature(net, x, y, "fisher", CE, fisher="exact", block_products=True)
    torch.manual_seed(4)
    for name, blocks in others.items():
        assert len(blocks) == len(gn) == 4
        for t, (a, b) in enumerate(zip(blocks, gn)):
            assert b.bias.abs().max() > 1e-4, f"layer {t + 1}: a vanishing block would prove nothing"
            torch.testing.assert_close(a.bias, b.bias, rtol=1e-12, atol=1e-14, msg=f"{name}, layer {t + 1}")
            dw = torch.randn_like(a.grad_weight.reshape(b.weight_shape or a.grad_weight.shape))
            wa, ba = a.block_product(dw, torch.ones_like(a.grad_bias))
            wb, bb = b.block_product(dw, torch.ones_like(b.grad_bias))
            torch.testing.assert_close(wa, wb, rtol=1e-12, atol=1e-14, msg=f"{name}, layer {t + 1} weight product")
            torch.testing.assert_close(ba, bb, rtol=1e-12, atol=1e-14, msg=f"{name}, layer {t + 1} bias product")
            if b.kron_out is not None:  # a conv layer's KFC G (expand)
                torch.testing.assert_close(a.kron_out, b.kron_out, rtol=1e-12, atol=1e-14, msg=f"{name}, G {t + 1}")


def test_a_tanh_net_tells_them_apart():
    """The control: with a smooth activation the residual is there, and PCH-1, PCH-2 and GN differ."""
    net, x, y = _net()
    net[1] = nn.Tanh()
    blocks = {k: curvature(net, x, y, k, CE, sketch=False)[0].bias for k in ("gn", "pch1", "pch2")}
    assert (blocks["pch1"] - blocks["gn"]).abs().max() > 1e-6
    assert (blocks["pch2"] - blocks["gn"]).abs().max() > 1e-6
    assert (blocks["pch1"] - blocks["pch2"]).abs().max() > 1e-6


@pytest.mark.parametrize("solver, options", [("eacg", {"weight_factor": "rank_one"}),
                                             ("eacg", {"weight_factor": "block"}), ("kfi", {})])
def test_the_eacg_and_kfi_directions_are_the_same_for_gn_pch1_and_pch2(solver, options):
    """EA-CG's direction (Eq. 9, all 50 CG iterations: ε_CG = 0) with the sketch off, for the rank-one weight
    factor (Eq. 11b) and the conv layers' matrix-free weight block (HBP Sec. 3); KFI's (Eq. 12–13)."""
    net, x, y = _net()
    dirs = {k: curvlab.newton_direction(net, x, y, kind=k, solver=solver, alpha=0.1, max_cg=50, eps_cg=0.0,
                                        sketch=False, **options) for k in ("gn", "pch1", "pch2")}
    assert max(float(d.abs().max()) for d in dirs["gn"]) > 1e-3
    for k in ("pch1", "pch2"):
        for p, (a, b) in enumerate(zip(dirs[k], dirs["gn"])):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"{k} vs gn, parameter {p}")


def test_in_float32_the_runs_are_the_same_run():
    """Not only equal to round-off: on these nets GN, PCH-1 and PCH-2 run the very same operations (the CE
    factor rows for all three, no residual step), so float32 blocks and EA-CG/KFI directions are bitwise
    equal and a ``curvature: pch1,gn`` sweep of EA-CG or KFI trains the same iterates twice."""
    net, x, y = _net()
    net, x = net.float(), x.float()
    blocks = {k: curvature(net, x, y, k, CE) for k in ("gn", "pch1", "pch2")}
    for k in ("pch1", "pch2"):
        assert all(torch.equal(a.bias, b.bias) for a, b in zip(blocks[k], blocks["gn"]))
    for solver in ("eacg", "kfi"):
        d = {k: curvlab.newton_direction(net, x, y, kind=k, solver=solver, alpha=0.02) for k in ("gn", "pch1", "pch2")}
        assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(d["gn"], d["pch1"], d["pch2"]))
