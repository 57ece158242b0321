"""The ``nn.Conv2d`` rule (``curvlab/modules/conv.py``) against torch.func and slow loops, float64.

Every verb is checked against autograd of the convolution as a function of its input, weight and
bias; the exact blocks against ``torch.func.hessian`` of a tiny conv net's loss; the Kronecker
factors against a loop over output positions with hand-cut patches; and, when BackPACK is
installed, the KFLR factors against BackPACK's (see :func:`test_kflr_factors_match_backpack`).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import hessian, jacrev, jvp, vjp

from curvlab.curvature.kinds import fisher_factors
from curvlab.curvature.options import FisherType
from curvlab.losses import CrossEntropy
from curvlab.modules import chain
from curvlab.modules.conv import CONV2D, Conv2dRule, KFACType, block_matvec, factors_matvec

DT = torch.float64
# name: (Conv2d keyword arguments, input height and width)
CASES = {
    "plain": (dict(kernel_size=3), (5, 5)),
    "stride2_pad1": (dict(kernel_size=3, stride=2, padding=1), (6, 7)),
    "same": (dict(kernel_size=3, padding="same"), (5, 5)),
    "same_even_kernel": (dict(kernel_size=2, padding="same"), (6, 7)),
    "dilation2": (dict(kernel_size=3, dilation=2, padding=1), (6, 7)),
    "no_bias_tuple": (dict(kernel_size=2, stride=(2, 1), padding=(1, 0), bias=False), (5, 5)),
}


def _conv(name: str, seed: int = 0, c_in: int = 2, c_out: int = 3) -> tuple[nn.Conv2d, torch.Tensor]:
    kwargs, hw = CASES[name]
    torch.manual_seed(seed)
    m = nn.Conv2d(c_in, c_out, **kwargs).to(DT)
    x = torch.randn(3, c_in, *hw, dtype=DT)
    return m, x


def _ref_pads(m: nn.Conv2d) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) written out from PyTorch's documentation of ``padding``."""
    if m.padding == "valid":
        return 0, 0, 0, 0
    if m.padding == "same":
        th, tw = m.dilation[0] * (m.kernel_size[0] - 1), m.dilation[1] * (m.kernel_size[1] - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    return m.padding[0], m.padding[0], m.padding[1], m.padding[1]


def _slow_patches(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(b, C_in·k_h·k_w, L) by cutting every patch out of a zero-padded copy, position by position."""
    top, bottom, left, right = _ref_pads(m)
    b, c, h, w = x.shape
    xp = torch.zeros(b, c, h + top + bottom, w + left + right, dtype=x.dtype)
    xp[:, :, top : top + h, left : left + w] = x
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cols = []
    for i in range(ho):
        for j in range(wo):
            patch = torch.stack(
                [xp[:, :, i * sh + p * dh, j * sw + q * dw] for p in range(kh) for q in range(kw)], dim=2
            )  # (b, C_in, k_h k_w): channel-major, then kernel row, then column (as W.flatten(1))
            cols.append(patch.reshape(b, -1))
    return torch.stack(cols, dim=2)


def _sym(b: int, n: int, gen_seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(gen_seed)
    a = torch.randn(b, n, n, generator=g, dtype=DT)
    return a + a.transpose(1, 2)


@pytest.mark.parametrize("name", CASES)
def test_forward_cache_and_patches(name: str) -> None:
    m, x = _conv(name)
    z, cache = CONV2D.forward_cache(m, x)
    torch.testing.assert_close(z, m(x))
    torch.testing.assert_close(CONV2D.forward(m, x), m(x))
    torch.testing.assert_close(cache.patches, _slow_patches(m, x))
    assert cache.out_hw == tuple(z.shape[2:]) == CONV2D.out_hw(m, tuple(x.shape[2:]))
    assert CONV2D.widths(m, tuple(x.shape[2:])) == (x[0].numel(), z[0].numel())


@pytest.mark.parametrize("name", CASES)
def test_input_jacobian_products_match_autograd(name: str) -> None:
    m, x = _conv(name)
    hw = tuple(x.shape[2:])
    f = lambda inp: F.conv2d(inp, m.weight, None, m.stride, m.padding, m.dilation)  # noqa: E731
    v = torch.randn_like(x)
    _, jv = jvp(f, (x,), (v,))
    torch.testing.assert_close(CONV2D.jac_vec(m, v), jv)
    z, pull = vjp(f, x)
    g = torch.randn_like(z)
    torch.testing.assert_close(CONV2D.jac_t_vec(m, g, hw), pull(g)[0])
    # factors (b, r, C_out, H_out, W_out): one vjp per row
    u = torch.randn(x.shape[0], 2, *z.shape[1:], dtype=DT)
    want = torch.stack([pull(u[:, r])[0] for r in range(2)], dim=1)
    torch.testing.assert_close(CONV2D.jac_t_factors(m, u, hw), want)


@pytest.mark.parametrize("name", ["plain", "stride2_pad1", "same_even_kernel", "no_bias_tuple"])
def test_jac_t_block_is_jt_h_j(name: str) -> None:
    m, x = _conv(name)
    hw = tuple(x.shape[2:])
    f = lambda inp: F.conv2d(inp[None], m.weight, None, m.stride, m.padding, m.dilation)[0]  # noqa: E731
    j = jacrev(f)(x[0]).reshape(-1, x[0].numel())  # (n_out, n_in), the same for every sample
    n_out = j.shape[0]
    h = _sym(3, n_out)
    got = CONV2D.jac_t_block(m, h, hw)
    torch.testing.assert_close(got, j.T @ h @ j)
    torch.testing.assert_close(CONV2D.jac_t_block(m, h.mean(0), hw), j.T @ h.mean(0) @ j)
    assert torch.equal(got, got.transpose(1, 2))


@pytest.mark.parametrize("name", CASES)
def test_parameter_products_match_autograd(name: str) -> None:
    m, x = _conv(name)
    _, cache = CONV2D.forward_cache(m, x)
    bias0 = m.bias if m.bias is not None else torch.zeros(m.out_channels, dtype=DT)
    f = lambda w, bb: F.conv2d(x, w, bb, m.stride, m.padding, m.dilation)  # noqa: E731
    dw, db = torch.randn_like(m.weight), torch.randn_like(bias0)
    _, jv = jvp(f, (m.weight, bias0), (dw, db))
    torch.testing.assert_close(CONV2D.param_jvp(m, cache, dw, db), jv)
    z, pull = vjp(f, m.weight, bias0)
    g = torch.randn_like(z)
    gw, gb = pull(g)
    torch.testing.assert_close(CONV2D.weight_grad(m, g, cache), gw)
    torch.testing.assert_close(CONV2D.bias_grad(g), gb)


def _tiny_net_problem(name: str, head: str):
    """conv → (tanh | nothing) → Flatten → Linear(·, 4) → mean cross-entropy; the per-sample output
    blocks H_i = ∇²_{z_i} ξ_i at the conv output, and the loss as a function of [W.flatten(1), b]."""
    m, x = _conv(name)
    z = m(x).detach()
    n_out = z[0].numel()
    torch.manual_seed(5)
    lin = nn.Linear(n_out, 4).to(DT)
    y = torch.tensor([0, 3, 1])
    act = torch.tanh if head == "tanh" else (lambda t: t)

    def xi(zi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:  # ξ_i of one sample's flat conv output
        return F.cross_entropy(lin(act(zi))[None], yi[None])

    blocks = torch.stack([hessian(xi)(z[i].flatten(), y[i]) for i in range(3)])  # (b, n_out, n_out)

    def logits_of(theta: torch.Tensor) -> torch.Tensor:  # θ̃ = [W.flatten(1), b] (C_out, J (+1))
        w = theta[:, : m.weight[0].numel()].view_as(m.weight)
        bb = theta[:, -1] if m.bias is not None else None
        out = F.conv2d(x, w, bb, m.stride, m.padding, m.dilation)
        return lin(act(out.flatten(1)))

    loss_of = lambda theta: F.cross_entropy(logits_of(theta), y)  # noqa: E731

    theta = m.weight.detach().flatten(1)
    if m.bias is not None:
        theta = torch.cat([theta, m.bias.detach()[:, None]], 1)
    return m, x, blocks, loss_of, logits_of, theta


@pytest.mark.parametrize("head", ["tanh", "linear"])
@pytest.mark.parametrize("name", ["plain", "stride2_pad1", "same", "dilation2", "no_bias_tuple"])
def test_exact_blocks_equal_torch_func_hessian(name: str, head: str) -> None:
    """The conv's parameter Hessian is Σ_i J_θ,iᵀ H_i J_θ,i / b exactly (z is linear in θ). With a
    linear head H_i = Lᵀ ∇²ℓ_i L and this is also the Gauss-Newton block."""
    m, x, blocks, loss_of, logits_of, theta = _tiny_net_problem(name, head)
    _, cache = CONV2D.forward_cache(m, x)
    p = theta.numel()
    full = hessian(loss_of)(theta).reshape(p, p)  # row-major [W.flatten(1), b]
    bias = m.bias is not None
    torch.testing.assert_close(CONV2D.weight_block(m, blocks, cache, 1 / 3, bias=bias), full)
    jw = m.weight[0].numel()
    idx = torch.arange(p).view(m.out_channels, -1)
    w_idx = idx[:, :jw].flatten()
    torch.testing.assert_close(CONV2D.weight_block(m, blocks, cache, 1 / 3), full[w_idx][:, w_idx])
    if bias:
        b_idx = idx[:, -1]
        torch.testing.assert_close(CONV2D.bias_block(m, blocks, 1 / 3), full[b_idx][:, b_idx])
    if head == "linear":  # GN by its definition, E_i[J_f,iᵀ ∇²ℓ_i J_f,i] with the net's Jacobian J_f
        out = logits_of(theta).detach()
        prob = out.softmax(1)
        hl = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]  # (b, 4, 4) ∇²ℓ_i
        jf = jacrev(logits_of)(theta).reshape(3, 4, p)
        gn = torch.einsum("bcp,bcd,bdq->pq", jf, hl, jf) / 3
        torch.testing.assert_close(CONV2D.weight_block(m, blocks, cache, 1 / 3, bias=bias), gn)


def test_two_convs_in_a_row_pull_back_the_block() -> None:
    """conv → ReLU → conv(stride 2) → Flatten → Linear: the first conv's block from the second's output
    blocks pulled back by ``jac_t_block`` (ReLU'' = 0, so diag(σ') Jᵀ H J diag(σ') is exact)."""
    torch.manual_seed(3)
    c1 = nn.Conv2d(2, 3, 3, padding="same").to(DT)
    c2 = nn.Conv2d(3, 2, 2, stride=2, padding=1).to(DT)
    x = torch.randn(3, 2, 5, 5, dtype=DT)
    z1 = c1(x).detach()
    a1 = torch.relu(z1)
    z2 = c2(a1).detach()
    lin = nn.Linear(z2[0].numel(), 4).to(DT)
    y = torch.tensor([2, 0, 1])
    xi = lambda zi, yi: F.cross_entropy(lin(zi)[None], yi[None])  # noqa: E731
    h2 = torch.stack([hessian(xi)(z2[i].flatten(), y[i]) for i in range(3)])
    hw = tuple(a1.shape[2:])
    d = (z1 > 0).to(DT).flatten(1)  # (b, n) ReLU'
    h1 = CONV2D.jac_t_block(c2, h2, hw) * d[:, :, None] * d[:, None, :]
    _, cache = CONV2D.forward_cache(c1, x)

    def loss_of(w, bb):
        out = c2(torch.relu(F.conv2d(x, w, bb, 1, "same")))
        return F.cross_entropy(lin(out.flatten(1)), y)

    hw_full, hb_full = hessian(loss_of, argnums=(0, 1))(c1.weight.detach(), c1.bias.detach())
    pw = c1.weight.numel()
    torch.testing.assert_close(CONV2D.weight_block(c1, h1, cache, 1 / 3), hw_full[0].reshape(pw, pw))
    torch.testing.assert_close(CONV2D.bias_block(c1, h1, 1 / 3), hb_full[1])
    # the gradient chain: Jᵀ of the second conv, then ReLU', then the first conv's weight gradient
    g2 = torch.stack([torch.func.grad(xi)(z2[i].flatten(), y[i]) for i in range(3)]).view_as(z2)
    g1 = CONV2D.jac_t_vec(c2, g2, hw) * (z1 > 0)
    gw, gb = torch.func.grad(loss_of, argnums=(0, 1))(c1.weight.detach(), c1.bias.detach())
    torch.testing.assert_close(CONV2D.weight_grad(c1, g1, cache) / 3, gw)
    torch.testing.assert_close(CONV2D.bias_grad(g1) / 3, gb)


def _slow_kron(m: nn.Conv2d, x: torch.Tensor, u: torch.Tensor, approx: str, bias: bool):
    """Eq. (32) of Grosse & Martens (expand) and Eschenhagen et al. (reduce), one position at a time."""
    pt = _slow_patches(m, x)  # (b, J, L)
    b, r = u.shape[:2]
    g = u.flatten(3)  # (b, r, C_out, L)
    n_pos = pt.shape[2]
    a = torch.zeros(pt.shape[1] + bias, pt.shape[1] + bias, dtype=DT)
    gg = torch.zeros(m.out_channels, m.out_channels, dtype=DT)
    for i in range(b):
        ubar = torch.zeros(pt.shape[1] + bias, dtype=DT)
        gsum = torch.zeros(r, m.out_channels, dtype=DT)
        for l in range(n_pos):
            ul = torch.cat([pt[i, :, l], torch.ones(1, dtype=DT)]) if bias else pt[i, :, l]
            ubar += ul / n_pos
            gsum += g[i, :, :, l]
            if approx == "expand":
                a += torch.outer(ul, ul) / (b * n_pos)
                for k in range(r):
                    gg += torch.outer(g[i, k, :, l], g[i, k, :, l]) / b
        if approx == "reduce":
            a += torch.outer(ubar, ubar) / b
            for k in range(r):
                gg += torch.outer(gsum[k], gsum[k]) / b
    return a, gg


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("name", ["plain", "stride2_pad1", "same", "dilation2"])
def test_kron_factors_match_slow_loop(name: str, approx: str, bias: bool) -> None:
    m, x = _conv(name)
    z, cache = CONV2D.forward_cache(m, x)
    u = torch.randn(x.shape[0], 2, *z.shape[1:], dtype=DT)
    a, g = CONV2D.kron_factors(cache, u, approx, bias=bias)
    a_ref, g_ref = _slow_kron(m, x, u, approx, bias)
    torch.testing.assert_close(a, a_ref)
    torch.testing.assert_close(g, g_ref)


def test_reduce_g_is_the_exact_bias_block_of_the_factors() -> None:
    m, x = _conv("stride2_pad1")
    z, cache = CONV2D.forward_cache(m, x)
    u = torch.randn(3, 4, *z.shape[1:], dtype=DT)
    flat = u.flatten(2)  # (b, r, n_out)
    blocks = flat.transpose(1, 2) @ flat  # U_iᵀ U_i
    _, g = CONV2D.kron_factors(cache, u, KFACType.REDUCE)
    torch.testing.assert_close(g, CONV2D.bias_block(m, blocks, 1 / 3))


@pytest.mark.parametrize("name", ["plain", "same", "no_bias_tuple"])
def test_block_matvec_matches_formed_blocks(name: str) -> None:
    m, x = _conv(name)
    z, cache = CONV2D.forward_cache(m, x)
    shape = z.shape[1:]
    n_out, b = z[0].numel(), x.shape[0]
    bias = m.bias is not None
    dw = torch.randn_like(m.weight)
    db = torch.randn(m.out_channels, dtype=DT) if bias else None
    v = torch.cat([dw.flatten(1), db[:, None]], 1).flatten() if bias else dw.flatten()

    def check(out_mv, blocks):
        gw, gb = block_matvec(CONV2D, m, cache, out_mv, dw, db)
        want = CONV2D.weight_block(m, blocks, cache, 1 / b, bias=bias) @ v
        got = torch.cat([gw.flatten(1), gb[:, None]], 1).flatten() if bias else gw.flatten()
        torch.testing.assert_close(got, want)

    h = _sym(b, n_out)  # exact per-sample blocks
    check(lambda t: (h @ t.reshape(b, n_out, 1)).view(b, *shape), h)
    hbar = h.mean(0)  # one batch-mean block (GN, PCH) for every sample: E_i[J_iᵀ H̄ J_i]
    check(lambda t: (t.reshape(b, n_out) @ hbar).view(b, *shape), hbar.expand(b, n_out, n_out))
    u = torch.randn(b, 2, *shape, dtype=DT)  # factors
    flat = u.flatten(2)
    check(factors_matvec(u), flat.transpose(1, 2) @ flat)


def test_unsupported_settings_are_refused_with_the_module_named() -> None:
    with pytest.raises(ValueError, match=r"Conv2d\(4, 4.*groups=2 is not supported; use groups=1"):
        CONV2D.check(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match=r"padding_mode='reflect' is not supported; use padding_mode='zeros'"):
        CONV2D.check(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"))
    CONV2D.check(nn.Conv2d(2, 3, 3, padding="same", dilation=2, bias=False))  # accepted
    with pytest.raises(TypeError, match=r"Conv2dRule needs an nn.Conv2d"):
        Conv2dRule().check(nn.Linear(2, 2))


def test_chain_walks_conv_nets_as_steps() -> None:
    conv, lin = nn.Conv2d(1, 2, 3), nn.Linear(2 * 3 * 3, 3)
    view = chain(nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin))
    assert view.layers == (conv, lin) and view.rules == (CONV2D, view.rules[1]) and len(view.steps) == 4
    with pytest.raises(ValueError, match=r"must end with nn.Linear"):
        chain(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))


def _peer_problem():
    """conv(stride 2, padding 1) → ReLU → Flatten → Linear(·, 4), mean cross-entropy; our exact-Fisher
    factors at the conv output (√p_c ∇ξ(c) at the logits, pulled through the Linear and ReLU')."""
    torch.manual_seed(7)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).to(DT)
    x = torch.randn(5, 2, 6, 7, dtype=DT)
    n_out = conv(x)[0].numel()
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(n_out, 4).to(DT))
    y = torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        z, cache = CONV2D.forward_cache(conv, x)
        u = fisher_factors(CrossEntropy(), net(x), y, FisherType.EXACT, 1, None)  # (b, C, 4)
        u = (u @ net[3].weight).view(5, 4, *z.shape[1:]) * (z > 0)[:, None]  # (b, C, C_out, H_out, W_out)
    return net, x, y, cache, u


def test_kflr_factors_match_backpack() -> None:
    """BackPACK's KFLR on conv → ReLU → Flatten → Linear (mean cross-entropy) stores ``weight.kflr =
    [G, A]`` with G = E_i[Σ_c (Σ_l g_c,l)(Σ_l g_c,l)ᵀ] (our *reduce* G, the exact GN bias block) and
    A = E_i[Σ_l u_l u_lᵀ] (our *expand* A times L, no bias row): BackPACK pairs the reduce G with an
    unnormalised expand A (its docstring: "differs from the KFC paper by a factor of |T|")."""
    backpack = pytest.importorskip("backpack", reason="backpack-for-pytorch is a dev extra")
    from backpack.extensions import KFLR

    net, x, y, cache, u = _peer_problem()
    conv = net[0]
    model, lossfn = backpack.extend(net), backpack.extend(nn.CrossEntropyLoss())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook")
        with backpack.backpack(KFLR()):
            lossfn(model(x), y).backward()
    g_bp, a_bp = conv.weight.kflr
    a_exp, g_exp = CONV2D.kron_factors(cache, u, "expand", bias=False)
    _, g_red = CONV2D.kron_factors(cache, u, "reduce", bias=False)
    torch.testing.assert_close(g_bp, g_red)
    torch.testing.assert_close(conv.bias.kflr[0], g_red)
    torch.testing.assert_close(a_bp, a_exp * cache.patches.shape[2])
    assert not torch.allclose(g_exp, g_red)  # the positions' gradients are correlated: expand ≠ reduce


@pytest.mark.parametrize("joint", [False, True])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_kron_factors_match_curvlinops(approx: str, joint: bool) -> None:
    """curvlinops' ``KFACLinearOperator`` (type-2 Fisher = exact GN for cross-entropy) defines the same
    A and G in both conventions; ``separate_weight_and_bias=False`` is our ``bias=True`` (ones row)."""
    pytest.importorskip("curvlinops", reason="curvlinops-for-pytorch is a dev extra")
    from curvlinops import KFACLinearOperator

    net, x, y, cache, u = _peer_problem()
    op = KFACLinearOperator(
        net, nn.CrossEntropyLoss(), list(net.parameters()), [(x, y)], fisher_type="type-2", kfac_approx=approx,
        separate_weight_and_bias=not joint, check_deterministic=False,
    )
    op.compute_kronecker_factors()
    if not hasattr(op, "_input_covariances"):
        pytest.skip("this curvlinops keeps its factors elsewhere; the test reads 3.0.x's fields")
    a, g = CONV2D.kron_factors(cache, u, approx, bias=joint)
    torch.testing.assert_close(op._input_covariances["0"], a)  # private fields: 3.0's only access to the factors
    torch.testing.assert_close(op._gradient_covariances["0"], g)
