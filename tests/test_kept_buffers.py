"""Kept work buffers (``curvlab.hugepages.scratch``, issue 24): reused temporaries change no value.

The recursion and the symmetric products put their temporaries (H̄ W, Wᵀ∇ξ, σ', the scaled g, the
panels' second factor, a diagonal tile's transpose) into buffers kept across passes, so that no
fresh pages are faulted in. The same pass with fresh tensors (under autograd, which refuses
``out=``) must give the same bits, a second pass must not touch the first one's results, and a
buffer must only ever serve its own slot, dtype and thread.
"""

from __future__ import annotations

import threading

import pytest
import torch

import curvlab
from curvlab import hugepages
from curvlab.curvature.kinds import policy
from curvlab.curvature.options import CurvatureOptions
from curvlab.curvature.recursion import backward
from curvlab.losses import make_loss
from curvlab.modules import chain
from curvlab.symmetric import _symmetrize_tile_, symmetric_product, symmetrized


def test_scratch_keeps_one_buffer_per_slot_dtype_and_thread() -> None:
    hugepages.release_scratch()
    like = torch.zeros(1, dtype=torch.float64)
    a = hugepages.scratch("test.a", like, 3, 4)
    assert a.shape == (3, 4) and a.dtype == torch.float64 and a.is_contiguous()
    assert hugepages.scratch("test.a", like, 2, 5).data_ptr() == a.data_ptr()  # smaller: the same storage
    assert hugepages.scratch("test.b", like, 3, 4).data_ptr() != a.data_ptr()  # another slot
    assert hugepages.scratch("test.a", like.float(), 3, 4).data_ptr() != a.data_ptr()  # another dtype
    grown = hugepages.scratch("test.a", like, 30, 40)  # larger: a new buffer, kept from now on
    assert grown.shape == (30, 40) and hugepages.scratch("test.a", like, 3, 4).data_ptr() == grown.data_ptr()
    other: list[int] = []
    thread = threading.Thread(target=lambda: other.append(hugepages.scratch("test.a", like, 3, 4).data_ptr()))
    thread.start()
    thread.join()
    assert other and other[0] != grown.data_ptr()  # each thread its own buffers
    hugepages.release_scratch()  # the thread's buffers are dropped: the next request makes a new one
    assert "buffers" not in hugepages._SCRATCH.__dict__
    meta = hugepages.scratch("test.a", torch.zeros(1, device="meta"), 2, 3)  # off the CPU: a plain new tensor
    assert meta.device.type == "meta" and meta.shape == (2, 3)
    hugepages.release_scratch()


def test_mm_into_a_slot_is_the_product_and_keeps_autograd() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(60, 70), torch.randn(70, 50)
    got = hugepages.mm(a, b, slot="test.mm")
    assert torch.equal(got, a @ b) and got.data_ptr() == hugepages.scratch("test.mm", a, 60, 50).data_ptr()
    w = b.clone().requires_grad_()
    hugepages.mm(a, w, slot="test.mm").sum().backward()  # under autograd: a plain product, not the buffer
    assert torch.allclose(w.grad, a.sum(0)[:, None].expand_as(w))
    hugepages.release_scratch()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_tile_symmetrized_in_place_is_symmetrized_bit_for_bit(dtype: torch.dtype) -> None:
    """The in-place tile (a strided view into the result) against the two-temporary form it replaces."""
    torch.manual_seed(1)
    out = torch.randn(700, 700, dtype=dtype)
    for lo, hi in ((0, 256), (256, 530), (530, 700)):
        tile = out[lo:hi, lo:hi]
        want = symmetrized(tile.clone())
        _symmetrize_tile_(tile)
        assert torch.equal(tile, want) and torch.equal(tile, tile.T)


def test_symmetric_products_do_not_see_the_last_ones_buffers() -> None:
    """Two products in a row with kept buffers (panels, the scaled Hadamard factor, the tile), then
    the same ones after the buffers were dropped: bit for bit, and the first result untouched."""
    gen = torch.Generator().manual_seed(2)
    a, d, e = (torch.randn(k, 600, generator=gen, dtype=torch.float64) for k in (90, 20, 20))
    s = torch.randn(90, 90, generator=gen, dtype=torch.float64)
    c = (s + s.T) @ a  # aᵀ c = aᵀ S a and cᵀ a are symmetric
    first = symmetric_product(a, c, times=(d, d), scale=0.05, min_width=200)  # 3 panels: 2K < n scales d
    kept = first.clone()
    second = symmetric_product(c, a, times=(e, e), scale=0.3, min_width=200)
    hugepages.release_scratch()
    assert torch.equal(first, kept)
    assert torch.equal(symmetric_product(c, a, times=(e, e), scale=0.3, min_width=200), second)
    assert torch.equal(symmetric_product(a, c, times=(d, d), scale=0.05, min_width=200), first)
    torch.testing.assert_close(first, (a.T @ c) * (d.T @ d) * 0.05)
    torch.testing.assert_close(second, (c.T @ a) * (e.T @ e) * 0.3)


def _net(activation: str) -> tuple[torch.nn.Sequential, torch.Tensor, torch.Tensor]:
    """GELU: σ'' from z (the unfused residual, which reads Wᵀ∇ξ after g is made); sigmoid, tanh fused."""
    torch.manual_seed(3)
    # 520 wide behind a 70-wide layer: the sandwich Wᵀ H̄ W ∘ E[d dᵀ] runs in 2 panels with every kept buffer
    net = curvlab.sequential(40, [520, activation, 70, activation, 10]).double().requires_grad_(False)
    return net, torch.randn(24, 40, dtype=torch.float64), torch.randint(0, 10, (24,))


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "gelu"])
@pytest.mark.parametrize(
    ("kind", "extra"),
    [("pch1", {}), ("pch2", {}), ("gn", {}), ("pch1", {"jacobian_average": "mean"}), ("fisher", {}), ("exact", {})],
)
def test_a_pass_with_kept_buffers_equals_one_with_fresh_tensors(activation: str, kind: str, extra: dict) -> None:
    """No-grad passes (kept buffers) against the same recursion under autograd (fresh tensors), twice."""
    net, x, y = _net(activation)
    view, loss = chain(net), make_loss("nonconvex")  # Eq. 14: an indefinite output block
    opts = CurvatureOptions(kind=kind, **extra)
    cache = view.forward_cache(x)

    def run(grad: bool) -> list[dict[str, torch.Tensor]]:
        with torch.set_grad_enabled(grad):
            return backward(view, cache, y, loss, policy(opts.kind), opts, generator=torch.Generator().manual_seed(0))

    fresh = run(True)
    kept = run(False)
    snapshot = [{k: v.clone() for k, v in layer.items()} for layer in kept]
    again = run(False)  # reuses every buffer the first no-grad pass left behind
    for want, got, later, snap in zip(fresh, kept, again, snapshot):
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
            assert torch.equal(later[key], want[key]), key
            assert torch.equal(got[key], snap[key]), key  # the second pass did not write into the first's results


def test_kept_gradient_samples_are_not_overwritten_by_the_next_pass() -> None:
    """``grad_samples`` leave the pass, so their rows never live in a kept buffer."""
    net, x, y = _net("sigmoid")
    first = curvlab.curvature(net, x, y, "pch1", grad_samples=[0, 1, 2])
    rows = [layer.grad_samples.clone() for layer in first]
    curvlab.curvature(net, 2 * x, y, "pch1", grad_samples=[0, 1, 2])
    curvlab.curvature(net, 3 * x, y, "pch1")  # without samples: the scaled g goes into the kept buffer
    assert all(torch.equal(layer.grad_samples, r) for layer, r in zip(first, rows))
