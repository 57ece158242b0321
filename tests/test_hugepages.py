"""Large CPU results on transparent huge pages (``curvlab.hugepages``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from curvlab import hugepages
from curvlab.symmetric import symmetric_product

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``address`` (``hg``: MADV_HUGEPAGE)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # a mapping's header line: "start-end perms ..."
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return []


@pytest.mark.parametrize("shape", [(3, 4), (3072, 3072)])
def test_new_empty_is_new_empty(shape) -> None:
    like = torch.zeros(2, dtype=torch.float64)
    out = hugepages.new_empty(like, *shape)
    assert out.shape == shape and out.dtype == like.dtype and out.device == like.device and out.is_contiguous()
    out.fill_(2.0)
    assert out.sum().item() == 2.0 * out.numel()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not THP.exists(), reason="needs Linux with THP")
def test_large_result_is_hinted_for_huge_pages() -> None:
    """The aligned interior of a large result carries MADV_HUGEPAGE (whether the kernel then backs it
    with 2 MiB pages depends on its free memory, and on whether malloc reused faulted pages)."""
    out = hugepages.new_empty(torch.zeros(1), 3072, 3072)  # 37.7 MB ≥ HINT_BYTES
    middle = out.data_ptr() + out.numel() * out.element_size() // 2
    assert "hg" in _vm_flags(middle)


def test_symmetric_product_same_without_the_hint(monkeypatch) -> None:
    """The hint changes where the pages come from, never the values (bit for bit)."""
    torch.manual_seed(0)
    a = torch.randn(70, 2900)  # 2900² float32 = 33.6 MB ≥ HINT_BYTES
    hinted = symmetric_product(a, a, scale=0.5)
    monkeypatch.setattr(hugepages, "_MADVISE", None)
    plain = symmetric_product(a, a, scale=0.5)
    assert torch.equal(hinted, plain) and torch.equal(hinted, hinted.T)
    assert torch.allclose(hinted, 0.5 * a.T @ a, rtol=1e-5, atol=1e-4)


def test_mm_is_the_product_and_keeps_autograd_and_batches() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(600, 1100), torch.randn(1100, 1000)  # 600 × 1000 float32 = 2.4 MB: no hint
    assert torch.equal(hugepages.mm(a, b), a @ b)
    tall, wide = torch.randn(1000, 300), torch.randn(300, 4500)  # 1000 × 4500 float32 = 18 MB: hinted
    assert torch.equal(hugepages.mm(tall, wide), tall @ wide)  # bit for bit the same product
    u = torch.randn(3, 4, 1100)  # factors (b, r, n): the batched product
    assert torch.equal(hugepages.mm(u, b), u @ b)
    w = b.clone().requires_grad_()
    hugepages.mm(a, w).sum().backward()  # out= would refuse autograd
    assert torch.allclose(w.grad, a.sum(0)[:, None].expand_as(w), rtol=1e-5, atol=1e-4)
