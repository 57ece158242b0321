"""Every curvature kind against a slow float64 reference (torch.func / loops over samples)."""

from __future__ import annotations

import pytest
import torch
from conftest import ACTIVATIONS, LOSSES, make_problem, rel_err

import curvlab
from curvlab.curvature import reference as ref
from curvlab.curvature.options import FisherType, JacobianAverage

CASES = [(a, l, b) for a in ACTIVATIONS for l in LOSSES for b in (True, False)]


def _ids(case: tuple[str, str, bool]) -> str:
    return f"{case[0]}-{case[1]}-{'bias' if case[2] else 'nobias'}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_exact_blocks_equal_torch_func_hessian(case: tuple[str, str, bool]) -> None:
    p = make_problem(case[0], case[1], bias=case[2])
    # chunk_size=4 on a batch of 6 also checks that chunks add up.
    blocks = curvlab.curvature(p.net, p.x, p.y, kind="exact", loss=p.loss, weight_blocks=True, chunk_size=4)
    true_bias = ref.hessian_blocks(p.net, p.x, p.y, p.loss)
    true_weight = ref.hessian_blocks(p.net, p.x, p.y, p.loss, weights=True)
    for blk, hb, hw in zip(blocks, true_bias, true_weight):
        assert hb.abs().max() > 1e-4  # the check is not vacuous
        torch.testing.assert_close(blk.bias, hb, rtol=0, atol=1e-10)
        torch.testing.assert_close(blk.weight, hw, rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_gradients_equal_autograd(case: tuple[str, str, bool]) -> None:
    p = make_problem(case[0], case[1], bias=case[2])
    blocks = curvlab.curvature(p.net, p.x, p.y, kind="gn", loss=p.loss)
    p.net.zero_grad()
    p.loss(p.net(p.x), p.y).backward()
    for blk, layer in zip(blocks, p.net.layers):
        torch.testing.assert_close(blk.grad_weight, layer.weight.grad, rtol=0, atol=1e-12)
        if layer.bias is not None:
            torch.testing.assert_close(blk.grad_bias, layer.bias.grad, rtol=0, atol=1e-12)
        assert blk.input_cov is None  # only on request


EA_KINDS = {
    "gn": (lambda h: h, None),
    "pch1": (ref.abs_eig, torch.abs),
    "pch2": (ref.abs_eig, lambda r: r.clamp_min(0)),
}


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("average", ["per_sample", "mean"])
def test_ea_kinds_equal_reference(case: tuple[str, str, bool], average: str) -> None:
    p = make_problem(case[0], case[1], bias=case[2])
    for kind, (output, residual) in EA_KINDS.items():
        blocks = curvlab.curvature(p.net, p.x, p.y, kind=kind, loss=p.loss, jacobian_average=average)
        want = ref.ea_blocks(p.net, p.x, p.y, p.loss, output, residual, JacobianAverage(average))
        for blk, w in zip(blocks, want):
            assert rel_err(blk.bias, w) < 1e-12, kind


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_fisher_equals_reference(case: tuple[str, str, bool], fisher: str) -> None:
    p = make_problem(case[0], case[1], bias=case[2])
    blocks = curvlab.curvature(p.net, p.x, p.y, kind="fisher", loss=p.loss, fisher=fisher, chunk_size=4)
    want = ref.fisher_blocks(p.net, p.x, p.y, p.loss, FisherType(fisher))
    for blk, w in zip(blocks, want):
        assert w.abs().max() > 1e-8
        assert rel_err(blk.bias, w) < 1e-12


def test_jacobian_average_changes_the_blocks() -> None:
    """Eq. (6) and HBP Eq. (7) differ below the output layer (the option is not ignored)."""
    p = make_problem("sigmoid")
    a = curvlab.curvature(p.net, p.x, p.y, kind="gn", jacobian_average="per_sample")
    b = curvlab.curvature(p.net, p.x, p.y, kind="gn", jacobian_average="mean")
    torch.testing.assert_close(a[-1].bias, b[-1].bias)
    assert rel_err(a[0].bias, b[0].bias) > 1e-3


def test_input_statistics() -> None:
    p = make_problem("tanh")
    cache = p.net.forward_cache(p.x)
    blocks = curvlab.curvature(p.net, p.x, p.y, kind="pch1", input_cov=True)
    full = curvlab.curvature(p.net, p.x, p.y, kind="pch1", weight_factor="full")
    for blk, f, h in zip(blocks, full, cache.inputs):
        h = h.detach()
        torch.testing.assert_close(blk.input_mean, h.mean(0))
        torch.testing.assert_close(blk.input_cov, h.T @ h / h.shape[0])
        torch.testing.assert_close(f.input_cov, blk.input_cov)  # Eq. (11a) implies E[h hᵀ]
        assert blk.n_in == h.shape[1] and blk.n_out == blk.bias.shape[0]


def test_precomputed_cache_gives_the_same_blocks() -> None:
    p = make_problem("sigmoid", "nonconvex")
    cache = p.net.forward_cache(p.x)  # with autograd on, as a solver's forward pass would be
    for kind in ("exact", "pch2", "fisher"):
        gen = [torch.Generator().manual_seed(3) for _ in range(2)]
        a = curvlab.curvature(p.net, p.x, p.y, kind=kind, loss=p.loss, generator=gen[0])
        b = curvlab.curvature(p.net, p.x, p.y, kind=kind, loss=p.loss, cache=cache, generator=gen[1])
        for u, v in zip(a, b):
            torch.testing.assert_close(u.bias, v.bias, rtol=0, atol=0)
            assert not v.bias.requires_grad


@pytest.mark.parametrize("loss", ["cross_entropy", "nonconvex"])
def test_blocks_are_exactly_symmetric(loss: str) -> None:
    """Every kind's bias blocks are symmetric bit for bit (the solvers rely on it), in float32,
    with a 520-wide layer on the multi-panel path of :func:`symmetric_product`."""
    p = make_problem("sigmoid", loss, widths=(6, 520, 80, 5), batch=70, dtype=torch.float32)
    kinds = ["exact", "fisher", "pch1", "pch2"] + (["gn"] if loss == "cross_entropy" else [])
    for kind in kinds:
        for avg in ("per_sample", "mean"):
            if kind in ("exact", "fisher") and avg == "mean":
                continue
            blocks = curvlab.curvature(p.net, p.x, p.y, kind=kind, loss=p.loss, jacobian_average=avg, chunk_size=32)
            for t, blk in enumerate(blocks):
                assert torch.equal(blk.bias, blk.bias.T), (kind, avg, t)


def test_exact_blocks_of_a_wide_net() -> None:
    """A first layer of width 512 takes the split-GEMM path (exact: K = 8·64 rows; EA: K = 64 in
    Wᵀ(H W), while E[h'h'ᵀ] with K = 8 samples does not split), against the references."""
    p = make_problem("tanh", "nonconvex", widths=(4, 512, 64, 3), batch=8)
    blocks = curvlab.curvature(p.net, p.x, p.y, kind="exact", loss=p.loss, chunk_size=8)
    for blk, want in zip(blocks, ref.hessian_blocks(p.net, p.x, p.y, p.loss)):
        assert rel_err(blk.bias, want) < 1e-12
    gn = curvlab.curvature(p.net, p.x, p.y, kind="pch2", loss=p.loss)
    want = ref.ea_blocks(p.net, p.x, p.y, p.loss, ref.abs_eig, lambda r: r.clamp_min(0))
    for blk, w in zip(gn, want):
        assert rel_err(blk.bias, w) < 1e-12


def test_public_name_is_the_function_even_after_a_subpackage_import() -> None:
    """Importing curvlab.curvature.* binds the package as ``curvlab.curvature``; it must still
    be callable as the public function."""
    import inspect

    import curvlab.curvature.options  # noqa: F401

    p = make_problem()
    blocks = curvlab.curvature(p.net, p.x, p.y, kind="gn")
    assert len(blocks) == p.net.depth
    assert "weight_blocks" in inspect.signature(curvlab.curvature).parameters


@pytest.mark.parametrize("widths", [(4, 3), (4, 5, 4, 3, 3)], ids=["1-layer", "4-layers"])
def test_other_depths(widths: tuple[int, ...]) -> None:
    p = make_problem("sigmoid", "nonconvex", widths=widths)
    exact = curvlab.curvature(p.net, p.x, p.y, kind="exact", loss=p.loss)
    for blk, want in zip(exact, ref.hessian_blocks(p.net, p.x, p.y, p.loss), strict=True):
        assert rel_err(blk.bias, want) < 1e-12
    pch2 = curvlab.curvature(p.net, p.x, p.y, kind="pch2", loss=p.loss)
    want = ref.ea_blocks(p.net, p.x, p.y, p.loss, ref.abs_eig, lambda r: r.clamp_min(0))
    for blk, w in zip(pch2, want, strict=True):
        assert rel_err(blk.bias, w) < 1e-12


@pytest.mark.parametrize("kind,chunk", [("pch1", None), ("exact", 3), ("fisher", None)])
def test_grad_samples_are_the_per_sample_gradient_shares(float64_default, kind, chunk):
    """Kept per-sample rows e_i = ∇_{b^t} ξ_i / B: Σ_i e_i = ∇_b, eᵀh = ∇_W, and e equals autograd's
    gradient of the mean loss with respect to the pre-activations (chunks stay in sample order)."""
    from curvlab.losses import make_loss

    torch.manual_seed(0)
    net, x, y = curvlab.MLP([5, 4, 3, 3], "tanh"), torch.randn(7, 5), torch.randint(0, 3, (7,))
    blocks = curvlab.curvature(net, x, y, kind, chunk_size=chunk, grad_samples={0, 2})
    assert blocks[1].grad_samples is None and blocks[1].grad_weight is not None
    assert blocks[0].grad_weight is None and blocks[2].grad_weight is None  # formed from the samples instead
    full = curvlab.curvature(net, x, y, kind, chunk_size=chunk)
    with torch.enable_grad():
        cache = net.forward_cache(x)
        autograd = torch.autograd.grad(make_loss("cross_entropy")(cache.output, y), [cache.preacts[0], cache.output])
    for t, ref_e in zip((0, 2), autograd):
        e = blocks[t].grad_samples
        assert e.shape == (7, blocks[t].n_out)
        assert torch.allclose(e, ref_e, atol=1e-14)
        assert torch.allclose(e.sum(0), blocks[t].grad_bias)
        assert torch.allclose(e.T @ cache.inputs[t].detach(), full[t].grad_weight)
