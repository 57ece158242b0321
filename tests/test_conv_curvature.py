"""The step recursion on conv nets (``curvature/steps.py``) against the float64 references.

``exact`` against ``torch.func.hessian`` of the batch-mean loss (``layer_hessian_blocks``); gn, pch1,
pch2 against the per-sample-chain references (``ggn_sample_blocks``, ``pch_sample_blocks``: BackPACK's
GGNMP/PCHMP quantity); the conv Kronecker factors against ``kfac_reference`` (loops over positions).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import curvlab
from curvlab.curvature import messages
from curvlab.curvature.reference import (
    ggn_sample_blocks, kfac_reference, layer_hessian_blocks, pch_sample_blocks,
)
from curvlab.losses import make_loss
from curvlab.modules import chain

DT = torch.float64


def _net(name: str) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A tiny conv net in float64 with inputs and labels (4 classes)."""
    torch.manual_seed(3)
    if name == "stride_relu":  # conv(stride 2) → ReLU → conv("same") → Flatten → Linear
        net = nn.Sequential(
            nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding="same"),
            nn.Flatten(), nn.Linear(2 * 3 * 3, 4),
        )
        x = torch.randn(5, 2, 6, 5)
    elif name == "dilation_nobias":  # dilation, no bias, "same" with an even kernel, Tanh between
        net = nn.Sequential(
            nn.Conv2d(1, 2, 2, padding="same", bias=False), nn.Tanh(), nn.Conv2d(2, 2, 3, dilation=2),
            nn.Flatten(), nn.Linear(2 * 2 * 2, 4, bias=False),
        )
        x = torch.randn(4, 1, 6, 6)
    elif name == "sigmoid_head":  # smooth activations on maps and in the head: residual rows
        net = nn.Sequential(
            nn.Conv2d(1, 2, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(2 * 3 * 3, 5), nn.Tanh(), nn.Linear(5, 4),
        )
        x = torch.randn(4, 1, 5, 5)
    elif name == "pooling":  # MaxPool, ZeroPad, AvgPool, AdaptiveAvgPool steps between the layers
        net = nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.ZeroPad2d(1), nn.Conv2d(2, 2, 3),
            nn.AvgPool2d(2, stride=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 4),
        )
        x = torch.randn(4, 1, 8, 8)
    else:
        raise KeyError(name)
    y = torch.randint(0, 4, (x.shape[0],))
    return net.to(DT), x.to(DT), y


NETS = ["stride_relu", "dilation_nobias", "sigmoid_head", "pooling"]


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", NETS)
def test_exact_blocks_and_gradients_equal_torch_func(name: str) -> None:
    net, x, y = _net(name)
    loss = make_loss("cross_entropy")
    got = curvlab.curvature(net, x, y, kind="exact", weight_blocks=True)
    ref = layer_hessian_blocks(net, x, y, loss)
    params = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    grads = torch.autograd.grad(loss(net(x), y), [m.weight for m in params])
    assert len(got) == len(ref) == len(params)
    for blk, r, m, gw in zip(got, ref, params, grads):
        _close(blk.bias, r.bias)
        _close(blk.weight, r.weight)
        _close(blk.grad_weight, gw.flatten(1))
        assert blk.weight_shape == tuple(m.weight.shape)
        if m.bias is not None:
            (gb,) = torch.autograd.grad(loss(net(x), y), [m.bias])
            _close(blk.grad_bias, gb)


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("loss_name", ["cross_entropy", "nonconvex"])
def test_gn_and_pch_bias_blocks_equal_the_per_sample_chain(name: str, loss_name: str) -> None:
    net, x, y = _net(name)
    loss = make_loss(loss_name)
    refs = {
        "gn": ggn_sample_blocks(net, x, y, loss),
        "pch1": pch_sample_blocks(net, x, y, loss, "abs"),
        "pch2": pch_sample_blocks(net, x, y, loss, "clip"),
    }
    for kind, ref in refs.items():
        got = curvlab.curvature(net, x, y, kind=kind, loss=loss_name)
        for blk, r in zip(got, ref):
            _close(blk.bias, r.bias)


def test_pch_differs_from_gn_where_a_residual_or_an_indefinite_output_block_exists() -> None:
    net, x, y = _net("sigmoid_head")
    gn = curvlab.curvature(net, x, y, kind="gn", loss="nonconvex")
    pch = curvlab.curvature(net, x, y, kind="pch1", loss="nonconvex")
    assert (gn[0].bias - pch[0].bias).abs().max() > 1e-6  # the test above is not vacuous
    assert torch.linalg.eigvalsh(pch[0].bias).min() > -1e-12  # PSD by construction
    assert torch.linalg.eigvalsh(gn[0].bias).min() < 0  # Eq. (14)'s GN is indefinite: signed rows


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("name", ["stride_relu", "dilation_nobias", "pooling"])
def test_fisher_kronecker_factors_equal_the_slow_reference(name: str, approx: str) -> None:
    net, x, y = _net(name)
    got = curvlab.curvature(net, x, y, kind="fisher", fisher="exact", kfac_type=approx, input_cov=True)
    ref = kfac_reference(net, x, y, make_loss("cross_entropy"), "exact", approx, bias=False)
    for blk, (a, g) in zip(got, ref):
        _close(blk.input_cov, a)
        _close(blk.out_factor, g)
    ggn = ggn_sample_blocks(net, x, y, make_loss("cross_entropy"))  # exact Fisher = GGN for cross-entropy
    for blk, r in zip(got, ggn):
        _close(blk.bias, r.bias)  # the reduce G is the exact bias block of the kind


def test_chunks_add_up_and_exact_equals_the_chunked_run() -> None:
    net, x, y = _net("stride_relu")
    whole = curvlab.curvature(net, x, y, kind="exact")
    parts = curvlab.curvature(net, x, y, kind="exact", chunk_size=2)
    for a, b in zip(whole, parts):
        _close(a.bias, b.bias)
        _close(a.grad_weight, b.grad_weight)


def test_mlp_path_is_untouched_and_conv_net_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))
    assert not chain(mlp).has_steps and chain(mlp).steps == ()
    pooled_input = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 3))  # pooling only transforms x
    assert not chain(pooled_input).has_steps
    with pytest.raises(ValueError, match=r"must end with nn.Linear"):
        chain(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    net, x, y = _net("sigmoid_head")
    monkeypatch.setattr(messages, "RESIDUAL_ROW_BUDGET", 10)
    with pytest.raises(ValueError, match=r"residual term on 5 units.*curvature.sketch=true.*ReLU"):
        curvlab.curvature(net, x, y, kind="pch1")
    curvlab.curvature(net, x, y, kind="gn")  # GN has no residual rows
    big = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 16 * 16, 2))
    with pytest.raises(ValueError, match=r"kind=exact on this net needs per-sample blocks of 16,384 units"):
        curvlab.curvature(big, torch.randn(2, 1, 16, 16), torch.tensor([0, 1]), kind="exact")


@pytest.mark.parametrize("kind", ["exact", "gn", "pch1"])
def test_matrix_free_block_products_equal_the_formed_blocks(kind: str) -> None:
    net, x, y = _net("sigmoid_head")
    loss = make_loss("nonconvex")  # indefinite H_i: the GN product runs on signed factors
    refs = {
        "exact": layer_hessian_blocks(net, x, y, loss),
        "gn": ggn_sample_blocks(net, x, y, loss),
        "pch1": pch_sample_blocks(net, x, y, loss, "abs"),
    }[kind]
    got = curvlab.curvature(net, x, y, kind=kind, loss="nonconvex", block_products=True, chunk_size=3)
    params = [m for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    torch.manual_seed(0)
    for blk, ref, m in zip(got, refs, params):
        dw = torch.randn(m.weight.shape[0], m.weight[0].numel(), dtype=DT)  # (C_out, J) as the solvers hold it
        w_part, none = blk.block_product(dw, None)
        assert none is None and w_part.shape == dw.shape
        _close(w_part.flatten(), ref.weight @ dw.flatten())
        db = torch.randn(m.weight.shape[0], dtype=DT)
        _, b_part = blk.block_product(torch.zeros_like(dw), db)
        _close(b_part, ref.bias @ db)
    with pytest.raises(ValueError, match=r"block_products=True needs a net with convolutions"):
        curvlab.curvature(nn.Sequential(nn.Linear(3, 2)).to(DT), x[:, 0, 0, :3], y, block_products=True)
