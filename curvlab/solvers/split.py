"""Row-wise block splitting of a layer's curvature (Dangel & Hennig, Section 4, Figure 5).

A layer with ``n`` output units is cut into ``k`` contiguous groups of rows ``g_1 … g_k``
(sizes differ by at most one, as :func:`torch.tensor_split`). Sub-block ``j`` of the bias
keeps ``B[g_j, g_j]``; sub-block ``j`` of the weight keeps the rows ``W[g_j, :]`` with
curvature ``M ⊗ B[g_j, g_j]``. Every cross term between groups is dropped, so each
sub-block is an independent linear system.

To solve the ``k`` systems as one batch, groups are padded to ``m = ⌈n / k⌉`` rows. The
padding rows get zero curvature and a zero right-hand side; with EA-CG's ``αI`` term
their CG iterate stays exactly zero, so padding does not change the solution.
"""

from __future__ import annotations

import math
from functools import cached_property

import torch
from torch import Tensor

__all__ = ["RowSplit"]


class RowSplit:
    """Partition of ``n`` rows into ``k`` contiguous groups, padded to ``m`` rows each.

    ``k`` larger than ``n`` is capped at ``n`` (groups of one row).

    Args:
        n: number of rows (output units of the layer).
        k: requested number of sub-blocks, ≥ 1.
        device: where the index tensors live.
    """

    def __init__(self, n: int, k: int, device: torch.device | str | None = None) -> None:
        if k < 1:
            raise ValueError(f"split must be >= 1, got {k}")
        self.n = n
        self.k = min(k, n)
        self.m = math.ceil(n / self.k)
        self.device = device

    @cached_property
    def _tables(self) -> tuple[Tensor, Tensor]:
        """(index, valid), each (k, m): the row of each padded slot (padding points at row 0) and
        whether the slot holds a row. Made on first use: the trivial split never needs them."""
        index = torch.zeros(self.k, self.m, dtype=torch.long, device=self.device)
        valid = torch.zeros(self.k, self.m, dtype=torch.bool, device=self.device)
        for j, g in enumerate(torch.arange(self.n, device=self.device).tensor_split(self.k)):
            index[j, : len(g)] = g
            valid[j, : len(g)] = True
        return index, valid

    @property
    def index(self) -> Tensor:
        return self._tables[0]

    @property
    def valid(self) -> Tensor:
        return self._tables[1]

    @property
    def trivial(self) -> bool:
        """One group with no padding: the split is the identity."""
        return self.k == 1

    def blocks(self, b: Tensor) -> Tensor:
        """Diagonal sub-blocks ``B[g_j, g_j]`` of an (n, n) matrix, zero-padded: (k, m, m)."""
        if self.trivial:
            return b.unsqueeze(0)
        sub = b[self.index[:, :, None], self.index[:, None, :]]  # (k, m, m)
        mask = self.valid[:, :, None] & self.valid[:, None, :]
        return sub * mask.to(b.dtype)

    def rows(self, g: Tensor) -> Tensor:
        """Row groups ``G[g_j, :]`` of an (n, c) matrix, zero-padded: (k, m, c)."""
        if self.trivial:
            return g.unsqueeze(0)
        return g[self.index] * self.valid[:, :, None].to(g.dtype)

    def vector(self, v: Tensor) -> Tensor:
        """Row groups of an (n,) vector, zero-padded: (k, m); :meth:`rows` without its column axis."""
        if self.trivial:
            return v.unsqueeze(0)
        return v[self.index] * self.valid.to(v.dtype)

    def merge(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`rows`: (k, m, c) → (n, c), dropping the padding."""
        if self.trivial:
            return x[0]
        out = x.new_zeros(self.n, x.shape[-1])
        out[self.index[self.valid]] = x[self.valid]
        return out

    def __repr__(self) -> str:
        return f"RowSplit(n={self.n}, k={self.k}, m={self.m})"
