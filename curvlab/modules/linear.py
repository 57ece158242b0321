"""The rule of ``nn.Linear``: z = W h + b (HBP Table 1, "linear"; Chen et al., "Layer-wise Equations").

Jacobians: ∂z/∂h = W, ∂z/∂b = I, ∂z/∂W = hᵀ ⊗ I (row-major ``W.flatten()``); no second-order
term (z is linear in h), so the recursion only pulls back through W. Every backward verb takes
the diagonal Jacobian d = σ'(z^{t−1}) of the element-wise map in front of the layer and uses the
composite F_i = W diag(d_i) (the first term of Eq. 4b), which keeps the fast kernels: one pair
of batched GEMMs per sample block, the panelled ``symmetric_product`` for batch means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curvlab.curvature.options import JacobianAverage
from curvlab.hugepages import mm
from curvlab.modules.base import LayerRule, register
from curvlab.symmetric import symmetric_product

__all__ = ["LinearRule", "LINEAR"]


class LinearRule(LayerRule):
    """``nn.Linear`` (with or without bias)."""

    def widths(self, m: nn.Linear) -> tuple[int, int]:  # type: ignore[override]
        return m.in_features, m.out_features

    def has_bias(self, m: nn.Linear) -> bool:  # type: ignore[override]
        return m.bias is not None

    def forward(self, m: nn.Linear, h: Tensor, weight: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if weight is None:
            return m(h)
        return F.linear(h, weight, None if m.bias is None else m.bias.detach())

    def jac_t_vec(self, m: nn.Linear, g: Tensor, slot: str | None = None) -> Tensor:  # type: ignore[override]
        """Wᵀ g_i for every sample: (b, n) @ (n, n_in); with d, ∇_{b^{t−1}} ξ_i = d ⊙ Wᵀ ∇_{b^t} ξ_i.
        With ``slot``, into that kept buffer (``curvlab.hugepages.scratch``; a temporary of the caller's)."""
        return mm(g, m.weight, slot)  # (b, n_in) (N-D factors: (…, n_in)); huge pages when large

    def jac(self, m: nn.Linear, d: Tensor) -> Tensor:  # type: ignore[override]
        """F_i = W diag(d_i): (b, n, n_in)."""
        return m.weight[None] * d[:, None, :]

    def jac_t_blocks(  # type: ignore[override]
        self, m: nn.Linear, blocks: Tensor, d: Tensor, per_sample: bool
    ) -> Tensor:
        """Eq. (4b), first term, per sample: F_iᵀ H_i F_i."""
        b, n, _ = blocks.shape
        n_in = m.weight.shape[1]
        f = self.jac(m, d)  # (b, n, n_in)
        x = torch.bmm(blocks, f)  # (b, n, n_in) H_i F_i
        if per_sample:
            return torch.bmm(f.transpose(1, 2), x)  # (b, n_in, n_in)
        # Only the mean is needed: Σ_i F_iᵀ X_i is one GEMM over the stacked rows, which runs at
        # full BLAS speed, skips half the work by symmetry, and never holds b blocks of the
        # (usually largest) first layer.
        return symmetric_product(f.view(b * n, n_in), x.view(b * n, n_in), scale=1.0 / b)

    def jac_t_mean(  # type: ignore[override]
        self, m: nn.Linear, block: Tensor, d: Tensor, average: JacobianAverage
    ) -> Tensor:
        """Wᵀ H̄ W ∘ J with J = E[d dᵀ] (Eq. 6 of Chen et al.) or E[d] E[d]ᵀ (Eq. 7 of Dangel &
        Hennig), in one pass of panels: (n_in, n_in)."""
        w = m.weight
        if average is JacobianAverage.PER_SAMPLE:
            jac, scale = (d, d), 1.0 / d.shape[0]
        else:
            mean = d.mean(0)[None]  # (1, n_in)
            jac, scale = (mean, mean), 1.0
        hw = mm(block, w, slot="linear.hw")  # (n, n_in) H̄ W, a kept buffer: only the product reads it
        return symmetric_product(w, hw, times=jac, scale=scale)

    def jac_t_factors(self, m: nn.Linear, factors: Tensor, d: Tensor) -> Tensor:  # type: ignore[override]
        """U_i W diag(d_i): one GEMM for all b·r rows, (b, r, n) → (b, r, n_in)."""
        b, r, n = factors.shape
        back = (factors.reshape(b * r, n) @ m.weight).reshape(b, r, -1)
        return back.mul_(d[:, None, :])  # in place: the product is a new tensor

    def weight_grad(self, g: Tensor, h: Tensor) -> Tensor:
        """Σ_i g_i h_iᵀ (n, n_in): ∇_W ξ_i = ∇_b ξ_i h_iᵀ."""
        return mm(g.T, h)  # the first layer's: 25 MB at double width, on huge pages

    def weight_block(self, blocks: Tensor, h: Tensor, scale: float) -> Tensor:
        """scale · Σ_i H_i ⊗ (h_i h_iᵀ) (Eq. 4c of Chen et al.), row-major ``W.flatten()`` order."""
        n, n_in = blocks.shape[1], h.shape[1]
        w = torch.einsum("iac,ib,id->abcd", blocks, h, h * scale)  # (n, n_in, n, n_in)
        return w.reshape(n * n_in, n * n_in)

    def input_factors(self, h: Tensor, cov: bool) -> tuple[Tensor, Tensor | None]:
        """E[h] and, with ``cov``, E[h hᵀ]: the input-side Kronecker factors of the weight block
        (Eq. 11b and 11a of Chen et al.; KFAC's A). E[h hᵀ] is a symmetric product: for the
        3072-wide input of the CIFAR-10 net it is the largest GEMM of a Fisher pass."""
        return h.mean(0), (symmetric_product(h, h, scale=1.0 / h.shape[0]) if cov else None)

    # --- the parameter Jacobian B = (H̃ ⊗ I) of the Riccati sweep (docs/exact_inverse.md) -----

    def param_inputs(self, h: Tensor, bias: bool) -> Tensor:
        """H̃ = (h_i, 1) (b, m_in): z_i = [W, b] h̃_i, so ∂z_i/∂θ = h̃_iᵀ ⊗ I."""
        return torch.cat([h, h.new_ones(h.shape[0], 1)], 1) if bias else h

    def param_jvp(self, Y: Tensor, h: Tensor, n: int, bias: bool) -> Tensor:
        """``B Y`` for Y (p, c) with rows (vec(dW) row-major, db): dW h_i + db, (b, n, c)."""
        (batch, n_in), c = h.shape, Y.shape[1]
        n_w = n * n_in
        dw_t = Y[:n_w].reshape(n, n_in, c).transpose(0, 1).reshape(n_in, -1)  # (n_in, n c)
        out = (h @ dw_t).view(batch, n, c)
        return out + Y[n_w:][None] if bias else out

    def param_columns(self, v: Tensor, n: int, bias: bool) -> Tensor:
        """(p, c) rows (vec(dW) row-major, db) → (m_in, n c): the columns ``[dW, db]ᵀ`` of each unit."""
        c = v.shape[1]
        dw_t = v[: v.shape[0] - n * bias].reshape(n, -1, c).transpose(0, 1)  # (n_in, n, c)
        if bias:
            dw_t = torch.cat([dw_t, v[-n:].reshape(1, n, c)])
        return dw_t.reshape(-1, n * c)

    def param_rows(self, X: Tensor, n: int, bias: bool) -> Tensor:
        """The inverse of :meth:`param_columns`: (m_in, n c) → (p, c)."""
        X = X.reshape(X.shape[0], n, -1)  # (m_in, n, c)
        c = X.shape[2]
        if not bias:
            return X.transpose(0, 1).reshape(-1, c)
        return torch.cat([X[:-1].transpose(0, 1).reshape(-1, c), X[-1]])

    def cross_t(self, delta: Tensor, d: Tensor, k: Tensor) -> Tensor:
        """``Sᵀ k`` of the cross term ∂²L/∂θ∂z^{t−1} for k (p, c): (b, n_in, c) = d_i ⊙ (dWᵀ δ_i),
        δ_i = ∂f/∂z_i (b, n); the bias rows do not enter (∂²z/∂b∂h = 0)."""
        (batch, n), n_in = delta.shape, d.shape[1]
        dw = k[: n * n_in].reshape(n, -1)  # (n, n_in c)
        return (delta @ dw).view(batch, n_in, -1).mul_(d[:, :, None])

    def cross_columns(self, delta: Tensor, d: Tensor, x: Tensor) -> Tensor:
        """``S x`` for x (b, n_in, c) in the layout of :meth:`param_columns`, weight rows only:
        (n_in, n c) with [e, (a, c)] = Σ_i d_i[e] x_i[e, c] δ_i[a]."""
        y = (d[:, :, None] * x).permute(1, 2, 0)  # (n_in, c, b)
        return (y @ delta).transpose(1, 2).reshape(x.shape[1], -1)

    def add_cross_basis_(self, out: Tensor, delta: Tensor, d: Tensor, V: Tensor) -> None:
        """out (b, n_in, r, n) += (Eᵀ S)ᵀ for the basis E = I ⊗ V (V: (m_in, r)) of parameter space:
        [(j, e), (ρ, a)] = d_j[e] V[e, ρ] δ_j[a]."""
        vs = d[:, :, None] * V[: d.shape[1]]  # (b, n_in, r)
        out.addcmul_(vs[..., None], delta[:, None, None, :])

    def sub_cross_gram_(self, out: Tensor, delta: Tensor, d: Tensor, proj: Tensor, damping: float) -> None:
        """out (b, n_in, b, n_in) −= Sᵀ (I ⊗ proj) S / λ with a projector ``proj`` (m_in, m_in) on the
        input rows: [(i, e), (j, f)] = (δ_iᵀ δ_j) d_i[e] d_j[f] proj[e, f] / λ."""
        n_in = d.shape[1]
        u = d[:, :, None] * proj[None, :n_in, :n_in]  # (b, n_in, n_in)
        w = (delta @ delta.T)[:, :, None] * d[None] / damping  # (b, b, n_in)
        out.addcmul_(u[:, :, None, :], w[:, None], value=-1.0)


LINEAR = LinearRule()
register(nn.Linear, LINEAR)
