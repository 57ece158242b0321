"""The conv pass's fused kernels against autograd, float64: the max-pool pull-back that takes the
padding and σ' in front of it along (``curvature/fused_pool.py``), the conv's one-call backward and
its patch factors cut from a strided view (``modules/conv.py``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import vjp

from curvlab.curvature.fused_pool import fused_max_pool
from curvlab.modules import chain
from curvlab.modules.conv import CONV2D, KFACType
from curvlab.modules.pooling import MAX_POOL2D, ZERO_PAD2D

from test_conv_rule import CASES, _conv, _slow_patches

DT = torch.float64

# name: (the modules between a conv and the Flatten, whether the kind keeps residuals, steps fused into the pool)
FUSED = {
    "relu_pad_pool": ([nn.ReLU(), nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2)], True, 2),
    "relu_pool_overlap": ([nn.ReLU(), nn.MaxPool2d(3, 1, padding=1)], True, 1),
    "tanh_pad_pool_drop": ([nn.Tanh(), nn.ZeroPad2d((1, 0, 2, 1)), nn.MaxPool2d(2)], False, 2),
    "tanh_pad_pool_keep": ([nn.Tanh(), nn.ZeroPad2d((1, 0, 2, 1)), nn.MaxPool2d(2)], True, 1),  # σ'' ≠ 0: pad only
    "crop_pool": ([nn.ReLU(), nn.ZeroPad2d((0, -1, 0, 0)), nn.MaxPool2d(2)], True, 0),  # a crop: nothing fuses
    # no σ' from the output (``df_out``): σ' gathered from the pre-activation at the moved indices
    "leaky_pad_pool": ([nn.LeakyReLU(0.1), nn.ZeroPad2d((0, 1, 0, 1)), nn.MaxPool2d(3, 2)], True, 2),
    "elu_pad_pool_drop": ([nn.ELU(), nn.ZeroPad2d((1, 1, 0, 1)), nn.MaxPool2d(2)], False, 2),
    "pool_alone": ([nn.MaxPool2d(2)], True, 0),
}


@pytest.mark.parametrize("name", FUSED)
def test_fused_max_pool_is_the_chain_of_its_steps(name: str) -> None:
    """Its pull-back of factor rows equals autograd's vjp through the modules it stands for, row by row
    (negative inputs make the ReLU zero some argmaxes; a pad column can win a window of the Tanh)."""
    mods, keep, fused = FUSED[name]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), *mods, nn.Flatten()).to(DT)
    net.append(nn.LazyLinear(2).to(DT))
    nn.init.constant_(net[0].bias, -0.5)  # many dead ReLU windows and pad entries that win a window
    x = torch.randn(4, 2, 9, 8, dtype=DT)
    net(x)  # materialize the LazyLinear
    view = chain(net)
    cache = view.forward_cache(x)
    s = len(mods)  # the pool's step: the conv is step 0
    got = fused_max_pool(view, cache, s, keep)
    if fused == 0:
        assert got is None
        return
    assert got is not None
    first, pull = got
    assert first == s - fused
    inner = nn.Sequential(*mods[len(mods) - 1 - fused :])
    z = cache.steps[first].x  # the input of the first fused step
    out, back = vjp(inner, z)
    u = torch.randn(4, 5, *out.shape[1:], dtype=DT)  # 5 factor rows per sample
    got_rows = pull(u)
    for r in range(u.shape[1]):
        torch.testing.assert_close(got_rows[:, r], back(u[:, r])[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["relu_pad_pool", "tanh_pad_pool_drop", "relu_pool_overlap"])
def test_fused_weights_bit_for_bit(name: str) -> None:
    """σ' read from the pooled output (``df_out``, the pad's mask implied where σ'(0) = 0) is the weight
    the step-by-step chain gives, inside mask · σ'(z) at the moved argmaxes, bit for bit."""
    mods, keep, fused = FUSED[name]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), *mods, nn.Flatten(), nn.LazyLinear(2)).to(DT)
    nn.init.constant_(net[0].bias, -0.5)
    x = torch.randn(4, 2, 9, 8, dtype=DT)
    net(x)
    view = chain(net)
    cache = view.forward_cache(x)
    s = len(mods)
    got = fused_max_pool(view, cache, s, keep)
    assert got is not None
    idx, inside, z = cache.steps[s].cache, None, cache.steps[1].x  # z: the activation's input
    if fused == 2:
        pad, rule = view.steps[s - 1]
        idx, inside = rule.crop_indices(pad, idx, tuple(cache.steps[s - 1].x.shape[1:]))
    act, act_rule = view.steps[1]
    d1 = act_rule.bind(act).df(z.flatten(-2).gather(-1, idx.flatten(-2)))
    weights = d1.view_as(idx) if inside is None else inside.to(DT) * d1.view_as(idx)
    u = torch.randn(4, 2, *idx.shape[1:], dtype=DT)
    want = MAX_POOL2D.scatter_back(u, idx, weights, tuple(z.shape[1:]))
    assert torch.equal(got[1](u), want)


def test_fused_pool_before_an_in_place_module() -> None:
    """σ' read from the pool's own input: an in-place ReLU after the pool (which rewrites the pooled map
    the next step caches) leaves the pull-back of tanh → pad → pool as autograd's."""
    torch.manual_seed(0)
    mods = [nn.Tanh(), nn.ZeroPad2d((1, 0, 2, 1)), nn.MaxPool2d(2)]
    net = nn.Sequential(nn.Conv2d(2, 3, 3), *mods, nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(2)).to(DT)
    nn.init.constant_(net[0].bias, -0.5)  # tanh < 0 in most windows: the ReLU after the pool rewrites them
    x = torch.randn(4, 2, 9, 8, dtype=DT)
    net(x)
    view = chain(net)
    with torch.no_grad():
        cache = view.forward_cache(x)
    got = fused_max_pool(view, cache, len(mods), False)
    assert got is not None and got[0] == 1
    out, back = vjp(nn.Sequential(*mods), cache.steps[1].x)
    u = torch.randn(4, 3, *out.shape[1:], dtype=DT)
    rows = got[1](u)
    for r in range(u.shape[1]):
        torch.testing.assert_close(rows[:, r], back(u[:, r])[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pads", [(0, 1, 0, 1), (2, 1, 1, 3), (0, 0, 0, 0)])
def test_crop_indices_table(pads: tuple[int, int, int, int]) -> None:
    """Flat indices into the padded map, looked up in tables, equal their row/column arithmetic; the pad's
    entries map to 0 with mask False; ``mask=False`` skips the mask."""
    h, w = 5, 7
    left, right, top, bottom = pads
    idx = torch.randint(0, (h + top + bottom) * (w + left + right), (3, 4, 6))
    row, col = idx // (w + left + right) - top, idx % (w + left + right) - left
    inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
    got, mask = ZERO_PAD2D.crop_indices(nn.ZeroPad2d(pads), idx, (4, h, w))
    assert torch.equal(mask, inside) and torch.equal(got, torch.where(inside, row * w + col, 0))
    assert ZERO_PAD2D.crop_indices(nn.ZeroPad2d(pads), idx, (4, h, w), mask=False)[1] is None
    assert ZERO_PAD2D.crop_indices(nn.ZeroPad2d((0, -1, 0, 0)), idx, (4, h, w)) is None


@pytest.mark.parametrize("name", CASES)
def test_conv_backward_is_autograd(name: str) -> None:
    """(Jᵀ g, ∇_W, ∇_b) from one library call equal autograd's, with and without the input gradient."""
    m, x = _conv(name)
    xr = x.clone().requires_grad_(True)
    z = m(xr)
    g = torch.randn_like(z)
    params = [xr, m.weight] + ([m.bias] if m.bias is not None else [])
    want = torch.autograd.grad(z, params, g)
    _, cache = CONV2D.forward_cache(m, x)
    back, gw, gb = CONV2D.backward(m, g, cache)
    torch.testing.assert_close(back, want[0])
    torch.testing.assert_close(gw, want[1])
    if m.bias is not None:
        torch.testing.assert_close(gb, want[2])
    else:
        assert gb is None
    assert CONV2D.backward(m, g, cache, need_input=False)[0] is None


@pytest.mark.parametrize("approx", list(KFACType))
@pytest.mark.parametrize("name", CASES)
def test_patch_factors_from_the_strided_view(name: str, approx: KFACType) -> None:
    """The patch mean and A (expand, reduce), cut from a view of the input, equal the formulas on the
    hand-cut patches; the strided copies are ``F.unfold``'s patches in both layouts."""
    m, x = _conv(name)
    _, cache = CONV2D.forward_cache(m, x)
    u = _slow_patches(m, x)  # (b, J, L)
    b, j, n_pos = u.shape
    torch.testing.assert_close(cache.patch_rows(), u.transpose(0, 1).reshape(j, b * n_pos))
    mean, a = CONV2D.input_factors(cache, approx, cov=True)
    torch.testing.assert_close(mean, u.mean((0, 2)))
    if approx is KFACType.EXPAND:
        want = torch.einsum("bjl,bkl->jk", u, u) / (b * n_pos)
    else:
        want = torch.einsum("bj,bk->jk", u.mean(2), u.mean(2)) / b
    torch.testing.assert_close(a, want)
    assert torch.equal(a, a.T)  # exactly symmetric
    assert CONV2D.input_factors(cache, approx, cov=False)[1] is None


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("shape", [(6, 2, 2), (3, 4, 5)])  # (C_out, H, W): L < C_out (one GEMM), L > C_out (bmm)
def test_out_grams_both_layouts(shape: tuple[int, int, int], signed: bool) -> None:
    """Reduce and expand G of signed factor rows against their sums written out; ``expand=False`` skips G."""
    torch.manual_seed(1)
    u = torch.randn(4, 3, *shape, dtype=DT)  # (b, r, C_out, H, W)
    signs = torch.sign(torch.randn(4, 3, dtype=DT)) if signed else None
    s = torch.ones(4, 3, dtype=DT) if signs is None else signs
    g = u.flatten(3)  # (b, r, C_out, L)
    want_reduce = torch.einsum("br,brc,brd->cd", s, g.sum(3), g.sum(3)) / 4
    want_expand = torch.einsum("br,brcl,brdl->cd", s, g, g) / 4
    reduce_g, expand_g = CONV2D.out_grams(u, signs, 0.25)
    torch.testing.assert_close(reduce_g, want_reduce)
    torch.testing.assert_close(expand_g, want_expand)
    only, none = CONV2D.out_grams(u, signs, 0.25, expand=False)
    assert none is None and torch.equal(only, reduce_g)
