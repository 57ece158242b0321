"""Flop floors of curvlab's curvature passes on a conv net, from its layer shapes (``flop_floor`` for convs).

As ``flop_floor`` (its MLP sibling; 2 flops a multiply-add, a symmetric Gram counts its triangle only,
element-wise work, pooling, padding, the loss and the output rows are left out), for the layers of a
``nn.Sequential`` of ``Conv2d``/``Linear`` with parameter-free steps between them. A conv layer is a
Linear over its L = H_out·W_out patch positions: J = C_in·k_h·k_w inputs, C_out outputs, so every
product with it costs 2·C_out·J·L per sample and map (forward, weight gradient, transposed pull-back).

A pass carries ``rows`` factor rows per sample back through every layer but the first (fisher mc: the
MC samples; exact: the C classes; gn/pch on cross-entropy: C−1; sketch: m), forms each layer's G's
(reduce: Σ_l first; expand: all b·r·L rows) and, with ``cov``, the patch Gram A (expand: b·L rows;
reduce: b). A block product for all layers is J_θ v, the per-sample output operator (2·2·r·n_out
per sample), and J_θᵀ of the result.

The solver steps add to their pass (``solvers/kfi.py``, ``solvers/eacg.py``): KFI the Cholesky
factors of every layer's damped A (n_in³/3 multiply-adds), G (n_out³/3) and, for a conv layer whose
expand G is not its bias block, that block's (n_out³/3), then G⁻¹ ∇_W A⁻¹ as two pairs of triangular
solves (n_out² n_in + n_out n_in²) and the bias's (n_out²) — a dense layer whose Woodbury form is
cheaper factors the (B, B) Gram matrix instead (``kfi_factor_solves``); EA-CG per CG iteration its rank-one
operator (B D μ μᵀ: about 3 n_out n_in + 2 n_out² per layer, with the CG vector updates) or, with
``weight_factor=block``, one block product for all layers. Every step ends in the update θ += lr d,
one multiply-add per parameter (an SGD step: ``grad_step`` + ``update``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Layer", "layers", "grad_step", "curvature_pass", "block_product", "sym", "gram_layers",
           "kfi_factor_solves", "kfi_solve", "cg_iteration", "update"]


@dataclass(frozen=True)
class Layer:
    """One layer's shapes: n_in = J inputs per position, n_out outputs, L positions (1 for a Linear)."""

    n_in: int
    n_out: int
    positions: int = 1
    conv: bool = False

    @property
    def macs(self) -> float:
        """Multiply-adds of one product with the layer's (input or parameter) Jacobian, per sample."""
        return float(self.n_in * self.n_out * self.positions)


def layers(net: nn.Sequential, sample_shape: tuple[int, ...]) -> list[Layer]:
    """The Conv2d and Linear layers of ``net`` with the shapes one sample of ``sample_shape`` gives them."""
    out: list[Layer] = []
    h = torch.zeros(1, *sample_shape)
    with torch.no_grad():
        for m in net:
            z = m(h)
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1]
                out.append(Layer(m.in_channels * k, m.out_channels, z.shape[2] * z.shape[3], conv=True))
            elif isinstance(m, nn.Linear):
                out.append(Layer(m.in_features, m.out_features))
            h = z
    return out


def sym(n: int, k: float) -> float:
    """aᵀa (n, n) over k rows, triangle with diagonal: k n (n + 1) / 2 multiply-adds."""
    return 2.0 * k * n * (n + 1) / 2


def grad_step(net: list[Layer], batch: int) -> float:
    """Forward, weight gradients and input gradients of every layer but the first: the unit of every ratio."""
    return sum(2.0 * batch * lay.macs * (2 + (t > 0)) for t, lay in enumerate(net))


def curvature_pass(net: list[Layer], batch: int, rows: int, *, cov: bool = False, expand: bool = True) -> float:
    """Forward + a curvature pass with ``rows`` factor rows per sample: the gradient step, the rows'
    pull-backs into every layer but the first, each layer's G's and, with ``cov``, A (``expand`` or reduce)."""
    pull = sum(2.0 * batch * rows * lay.macs for lay in net[1:])
    grams = sum(sym(lay.n_out, batch * rows) + (sym(lay.n_out, batch * rows * lay.positions)
                                                 if lay.conv and expand else 0.0) for lay in net)
    covs = sum(sym(lay.n_in, batch * (lay.positions if expand else 1)) for lay in net) if cov else 0.0
    return grad_step(net, batch) + pull + grams + covs


def block_product(net: list[Layer], batch: int, rows: int) -> float:
    """One block product for every layer from per-sample factors of ``rows`` rows: J_θ v, U_iᵀ U_i (·), J_θᵀ."""
    return sum(2.0 * batch * (2 * lay.macs + 2 * rows * lay.n_out * lay.positions) for lay in net)


def gram_layers(net: list[Layer], batch: int) -> set[int]:
    """The dense layers KFI applies in the Woodbury form (``gram_is_cheaper``); a conv's A is always formed."""
    from curvlab.solvers.kfi import gram_is_cheaper

    return {t for t, lay in enumerate(net) if not lay.conv and gram_is_cheaper(lay.n_in, lay.n_out, batch)}


def kfi_factor_solves(net: list[Layer], batch: int, expand: bool = True) -> float:
    """KFI's Cholesky factorisations (n³/3 multiply-adds) and solves with them (n² k for k columns).

    A layer whose A is formed: the factors of A, G (and a conv's bias block with ``expand``), then
    d_W = −G⁻¹ ∇_W A⁻¹ by two pairs of triangular solves (n_out² n_in + n_out n_in²). A dense layer in
    the Woodbury form: the factors of K = H Hᵀ + cB I (B³/3) and G, then G⁻¹ Eᵀ (n_out² B) and its
    right solve with K (B² n_out). Each layer's bias: n_out²."""
    gram = gram_layers(net, batch)
    macs = 0.0
    for t, lay in enumerate(net):
        if t in gram:
            macs += batch**3 / 3 + lay.n_out**3 / 3 + lay.n_out**2 * batch + batch**2 * lay.n_out
        else:
            factors = [lay.n_in, lay.n_out] + ([lay.n_out] if lay.conv and expand else [])
            macs += sum(n**3 / 3 for n in factors) + lay.n_out**2 * lay.n_in + lay.n_out * lay.n_in**2
        macs += lay.n_out**2
    return 2.0 * macs


def kfi_solve(net: list[Layer], batch: int, expand: bool = True) -> float:
    """KFI after a pass that formed every layer's A (``curvature_pass(cov=True)``): its factor solves and,
    for a Woodbury layer, the Gram H Hᵀ in place of A = HᵀH / B; its last product (G⁻¹Eᵀ K⁻¹) H costs
    what the pass's ∇_W = Eᵀ H would have, which it skips."""
    swap = sum(sym(batch, net[t].n_in) - sym(net[t].n_in, batch) for t in gram_layers(net, batch))
    return kfi_factor_solves(net, batch, expand) + swap


def cg_iteration(net: list[Layer]) -> float:
    """One EA-CG iteration on the rank-one systems (Eq. 11b): per layer B (D μ) μᵀ + α D and the bias
    block's product, and the CG updates (5 multiply-adds per unknown)."""
    per_layer = (3 * lay.n_out * lay.n_in + 2 * lay.n_out**2 + 5 * lay.n_out * (lay.n_in + 1) for lay in net)
    return 2.0 * sum(per_layer)


def update(net: list[Layer]) -> float:
    """θ ← θ + lr · d: one multiply-add per weight and bias."""
    return sum(2.0 * lay.n_out * (lay.n_in + 1) for lay in net)
