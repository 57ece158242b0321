"""Symmetric products on the upper triangle (curvlab.symmetric): equal to the full product, exactly symmetric."""

from __future__ import annotations

import pytest
import torch

from curvlab.symmetric import symmetric_product


@pytest.mark.parametrize("rows", [100, 30])  # 30 < 64 rows: one panel
@pytest.mark.parametrize("width", [300, 600, 1100])  # 1, 2 and 4 panels of width >= 256
def test_symmetric_product_equals_full_product(width: int, rows: int) -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(rows, width, generator=gen, dtype=torch.float64)
    s = torch.randn(rows, rows, generator=gen, dtype=torch.float64)
    c = (s + s.T) @ a  # aᵀ c = aᵀ S a is symmetric
    d = torch.rand(7, width, generator=gen, dtype=torch.float64)
    for kw in ({}, {"min_width": 64}, {"times": (d, d), "scale": 0.3}):  # min_width 64: 4 uneven panels
        got = symmetric_product(a, c, **kw)  # type: ignore[arg-type]
        want = a.T @ c * ((d.T @ d) * 0.3 if "times" in kw else 1)
        torch.testing.assert_close(got, want)
        assert torch.equal(got, got.T), kw  # exactly, not to round-off


@pytest.mark.parametrize("width", [100, 300, 520])  # 1, 2 and 4 panels of width >= 128
def test_symmetric_product_with_base(width: int) -> None:
    """base + scale · aᵀc, as the Riccati downdate uses it; exactly symmetric even when base is not."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(80, width, generator=gen, dtype=torch.float64)
    s = torch.randn(80, 80, generator=gen, dtype=torch.float64)
    c = (s + s.T) @ a
    m = torch.randn(width, width, generator=gen, dtype=torch.float64)
    base = m + m.T
    got = symmetric_product(a, c, scale=-1.0, base=base, min_width=128)
    torch.testing.assert_close(got, base - a.T @ c)
    assert torch.equal(got, got.T)
    skewed = base + 1e-13 * torch.randn(width, width, generator=gen, dtype=torch.float64)  # round-off asymmetry
    got = symmetric_product(a, c, scale=-1.0, base=skewed, min_width=128)
    torch.testing.assert_close(got, base - a.T @ c)
    assert torch.equal(got, got.T)  # still exactly symmetric
    with pytest.raises(ValueError, match="base and times"):
        symmetric_product(a, c, base=base, times=(a, a))


@pytest.mark.parametrize("width, rows", [(1300, 100), (1300, 700)])  # 5 panels; 2K < n scales c, else the product
def test_symmetric_product_with_many_panels_and_a_scale(width: int, rows: int) -> None:
    """More than 4 panels (E[h hᵀ] of a 3072-wide input has 12), a scale on the inputs or on the
    product, and a Hadamard factor whose scale moves onto c₂: equal to the full product and
    exactly symmetric."""
    gen = torch.Generator().manual_seed(2)
    h = torch.rand(rows, width, generator=gen, dtype=torch.float64)
    d = torch.rand(50, width, generator=gen, dtype=torch.float64)
    got = symmetric_product(h, h, scale=1 / rows)
    torch.testing.assert_close(got, h.T @ h / rows)
    assert torch.equal(got, got.T)
    got = symmetric_product(h, h, times=(d, d), scale=0.02)
    torch.testing.assert_close(got, (h.T @ h) * (d.T @ d) * 0.02)
    assert torch.equal(got, got.T)
    base = torch.eye(width, dtype=torch.float64)
    got = symmetric_product(h, h, scale=-0.5, base=base)
    torch.testing.assert_close(got, base - 0.5 * h.T @ h)
    assert torch.equal(got, got.T)
