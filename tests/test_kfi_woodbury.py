"""KFI through the (B, B) Gram matrix (Woodbury) and amortised factors, float64 against the
explicit Kronecker solve of tests/test_kfi.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from curvlab.curvature import curvature
from curvlab.curvature.blocks import LayerCurvature
from curvlab.losses import make_loss
from curvlab.nets import MLP
from curvlab.runfiles import load_checkpoint, save_checkpoint
from curvlab.solvers import KFI, kfi_solve
from curvlab.solvers.blockwise import LayerSamples
from curvlab.solvers.kfi import gram_is_cheaper, layer_inverses

from tests.test_kfi import dense_kfi

ALPHA = 0.03

pytestmark = pytest.mark.usefixtures("float64_default")  # compare in float64 (tests/conftest.py)


def sampled_blocks(widths: list[int], batch: int, seed: int = 0) -> tuple[list[LayerCurvature], dict[int, LayerSamples]]:
    """Blocks whose factors come from samples: E[hhᵀ] = HᵀH/B, ∇_W = EᵀH, ∇_b = Σ_i e_i."""
    gen = torch.Generator().manual_seed(seed)
    blocks, samples = [], {}
    for t, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        r = torch.randn(n_out, n_out, generator=gen)
        h = torch.rand(batch, n_in, generator=gen)
        e = torch.randn(batch, n_out, generator=gen) / batch
        blocks.append(LayerCurvature(bias=r @ r.T / n_out, input_mean=h.mean(0), input_cov=h.T @ h / batch,
                                     grad_bias=e.sum(0), grad_weight=e.T @ h))
        samples[t] = LayerSamples(h, e)
    return blocks, samples


def assert_matches_dense(d: list[torch.Tensor], blocks: list[LayerCurvature], rank_one_first_layer: bool) -> None:
    for t, blk in enumerate(blocks):
        d_w, d_b = dense_kfi(blk, ALPHA, rank_one=rank_one_first_layer and t == 0)
        torch.testing.assert_close(d[2 * t], d_w, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(d[2 * t + 1], d_b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rank_one_first_layer", [False, True])
def test_gram_form_equals_explicit_kronecker_inverse(rank_one_first_layer: bool) -> None:
    # Batch 4 < every input width: each layer's A⁻¹ goes through the 4×4 Gram matrix (layer 1
    # under Eq. 13: Sherman–Morrison applied to the samples, G⁻¹ on the (n_out, B) side).
    blocks, samples = sampled_blocks([9, 7, 6, 3], batch=4)
    for blk in blocks:
        blk.input_cov = None  # the Gram form must not need E[h hᵀ]
    d, stats = kfi_solve(blocks, ALPHA, rank_one_first_layer=rank_one_first_layer, samples=samples)
    blocks, _ = sampled_blocks([9, 7, 6, 3], batch=4)
    assert_matches_dense(d, blocks, rank_one_first_layer)
    assert 1.0 not in (stats["kfi_pi_min"], stats["kfi_pi_max"])  # π really scales the damping here


def test_gram_form_with_a_gradient_not_from_the_samples() -> None:
    # Without the E factor (stored factors, a new gradient): (X − (X Hᵀ) K⁻¹ H) / c.
    blocks, samples = sampled_blocks([9, 7, 3], batch=4, seed=1)
    inverses = layer_inverses(blocks, ALPHA, samples=samples)
    assert [inv.mode for inv in inverses] == ["gram", "gram"]
    gen = torch.Generator().manual_seed(2)
    for inv, blk in zip(inverses, blocks):
        blk.grad_weight = torch.randn(blk.grad_weight.shape, generator=gen)
        torch.testing.assert_close(inv.weight(blk.grad_weight), dense_kfi(blk, ALPHA, rank_one=False)[0])


def test_gram_is_cheaper_where_the_batch_is_small() -> None:
    # The CIFAR-10 net at batch 500: the 3072- and 1024-wide inputs, not the 512-wide one.
    assert gram_is_cheaper(3072, 1024, 500) and gram_is_cheaper(1024, 512, 500)
    assert not gram_is_cheaper(512, 256, 500) and not gram_is_cheaper(64, 32, 500)


@pytest.mark.parametrize("rank_one_first_layer", [False, True])
def test_solver_uses_the_gram_form_for_wide_layers(rank_one_first_layer: bool) -> None:
    torch.manual_seed(0)
    net = MLP([12, 10, 3], activation="sigmoid")
    x, y = torch.randn(5, 12), torch.randint(0, 3, (5,))
    loss = make_loss("cross_entropy")
    curv = {"kind": "fisher", "fisher": "exact"}  # deterministic: no Monte-Carlo labels
    solver = KFI(net, loss, 0.1, curvature=curv, alpha=ALPHA, rank_one_first_layer=rank_one_first_layer)
    cov, gram = solver.input_needs(5)
    assert gram == {0, 1} and not cov  # Eq. (13)'s layer 1 takes the samples too
    dr = solver.direction(x, y)
    blocks = curvature(net, x, y, "fisher", loss, fisher="exact", input_cov=True)
    assert_matches_dense(dr.d, blocks, rank_one_first_layer)


def test_amortised_factors_are_refreshed_every_t_steps_and_resume_exactly(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = MLP([6, 5, 3], activation="tanh")
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(5)]
    loss = make_loss("cross_entropy")
    curv = {"kind": "pch1"}
    solver = KFI(copy.deepcopy(net), loss, 0.1, curvature=curv, alpha=ALPHA, update_every=2)
    refreshed = []
    for step, (x, y) in enumerate(data):
        before = copy.deepcopy(solver.net)
        res = solver.step(x, y)
        refreshed.append(res.stats["kfi_refreshed"])
        # Reference: factors of the last refresh step, gradient of this step.
        if step % 2 == 0:
            factor_blocks = curvature(before, x, y, "pch1", loss, input_cov=True)
        grads = curvature(before, x, y, "pch1", loss, input_cov=True)
        with torch.no_grad():
            for t, (fb, gb) in enumerate(zip(factor_blocks, grads)):
                mixed = LayerCurvature(fb.bias, fb.input_mean, fb.input_cov, gb.grad_bias, gb.grad_weight)
                d_w, d_b = dense_kfi(mixed, ALPHA, rank_one=False)
                lin, new = before.layers[t], solver.net.layers[t]
                torch.testing.assert_close(new.weight, lin.weight + 0.1 * d_w)
                torch.testing.assert_close(new.bias, lin.bias + 0.1 * d_b)
    assert refreshed == [1.0, 0.0, 1.0, 0.0, 1.0]

    # Resume after 3 steps (mid-interval) from the state dicts: the same parameters, bit for bit.
    first = KFI(copy.deepcopy(net), loss, 0.1, curvature=curv, alpha=ALPHA, update_every=2)
    for x, y in data[:3]:
        first.step(x, y)
    save_checkpoint(tmp_path / "ckpt.pt", {"solver": first.state_dict()})  # as the runner does
    state = load_checkpoint(tmp_path / "ckpt.pt")["solver"]
    resumed = KFI(copy.deepcopy(first.net), loss, 0.1, curvature=curv, alpha=ALPHA, update_every=2)
    resumed.load_state_dict(state)
    for x, y in data[3:]:
        first.step(x, y)
        resumed.step(x, y)
    for a, b in zip(first.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(first.net.layers[0].weight, solver.net.layers[0].weight)


def test_default_refreshes_every_step() -> None:
    solver = KFI(MLP([4, 3, 2]), make_loss("cross_entropy"), 0.1)
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    assert [solver.step(x, y).stats["kfi_refreshed"] for _ in range(3)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("value", [0, -2, 2.5, True])
def test_bad_update_every_names_the_option(value: object) -> None:
    with pytest.raises(ValueError, match=r"solver.update_every must be an integer >= 1 .*got"):
        KFI(MLP([4, 3, 2]), make_loss("cross_entropy"), 0.1, update_every=value)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gram_form_and_resume_on_gpu(tmp_path: Path) -> None:
    blocks, samples = sampled_blocks([9, 7, 3], batch=4)
    d_cpu, _ = kfi_solve(blocks, ALPHA, samples=samples)
    gpu = [LayerCurvature(*(None if v is None else v.cuda() for v in (b.bias, b.input_mean, b.input_cov,
                                                                      b.grad_bias, b.grad_weight))) for b in blocks]
    d_gpu, _ = kfi_solve(gpu, ALPHA, samples={t: LayerSamples(s.h.cuda(), s.e.cuda()) for t, s in samples.items()})
    for a, b in zip(d_cpu, d_gpu):
        torch.testing.assert_close(a, b.cpu())
    net = MLP([6, 5, 3]).cuda()
    x, y = torch.randn(8, 6, device="cuda"), torch.randint(0, 3, (8,), device="cuda")
    solver = KFI(net, make_loss("cross_entropy"), 0.1, update_every=3)
    solver.step(x, y)
    save_checkpoint(tmp_path / "ckpt.pt", {"solver": solver.state_dict()})
    resumed = KFI(copy.deepcopy(net), make_loss("cross_entropy"), 0.1, update_every=3)
    resumed.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["solver"])  # loaded on the CPU, moved to the net
    solver.step(x, y)
    resumed.step(x, y)
    for a, b in zip(solver.net.parameters(), resumed.net.parameters()):
        assert torch.equal(a, b)


def test_rank_one_layer_with_samples_equals_its_gradient_form() -> None:
    # Eq. (13) from the samples (this step) and from ∇_W (stored factors, later steps): equal.
    blocks, samples = sampled_blocks([11, 6, 3], batch=4, seed=3)
    with_samples = layer_inverses(blocks, ALPHA, rank_one_first_layer=True, samples=samples)[0]
    without = layer_inverses(blocks, ALPHA, rank_one_first_layer=True)[0]
    assert with_samples.mode == without.mode == "rank_one" and without.h is None
    got = with_samples.weight(None, samples[0].e)
    torch.testing.assert_close(got, without.weight(blocks[0].grad_weight), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got, dense_kfi(blocks[0], ALPHA, rank_one=True)[0], rtol=1e-9, atol=1e-12)
