"""Flop floors of curvlab's steps and their peers, from the layer shapes of an MLP.

A floor counts the matrix products a step cannot avoid (2 flops a multiply-add, as
``torch.utils.flop_counter`` counts them); element-wise work, Cholesky factors of
(n, n) blocks and the loss are left out unless named. A symmetric product aᵀa or aᵀc known
to be symmetric counts its triangle only (``sym``), the floor of a SYRK. The benchmarks print
``floor ÷ gradient-step floor`` beside each measured ratio to a gradient step.

Widths are ``[n_0, n_1, …, n_L]`` (input first); layer t maps n_{t−1} → n_t.
"""

from __future__ import annotations

__all__ = [
    "layers", "sym", "forward", "grad_backward", "grad_step", "input_covs", "fisher_pass",
    "mean_pass", "eacg_step", "kfi_step", "curvlinops_kfac", "backpack_kfra",
]


def layers(widths: list[int]) -> list[tuple[int, int]]:
    """(n_in, n_out) of every linear layer."""
    return list(zip(widths[:-1], widths[1:]))


def sym(n: int, k: int) -> float:
    """aᵀc (n, n) over k rows, triangle with diagonal: k n (n + 1) / 2 multiply-adds."""
    return 2.0 * k * n * (n + 1) / 2


def forward(widths: list[int], batch: int) -> float:
    """z = W h + b for every layer."""
    return sum(2.0 * batch * i * o for i, o in layers(widths))


def grad_backward(widths: list[int], batch: int) -> float:
    """∇_W = gᵀ h for every layer, Wᵀ g for every layer but the first (the input needs none)."""
    return sum(2.0 * batch * i * o * (1 + (t > 0)) for t, (i, o) in enumerate(layers(widths)))


def grad_step(widths: list[int], batch: int) -> float:
    """Forward + backward: the unit of every ratio."""
    return forward(widths, batch) + grad_backward(widths, batch)


def input_covs(widths: list[int], batch: int) -> float:
    """E[h hᵀ] of every layer's input (Eq. 11a; KFAC's A)."""
    return sum(sym(i, batch) for i, _ in layers(widths))


def fisher_pass(widths: list[int], batch: int, rows: int = 1, *, cov: bool = False, empirical: bool = False) -> float:
    """curvlab's Fisher pass: the gradient, ``rows`` factor rows per sample pulled back through
    every layer but the first, and their Gram matrices E[U Uᵀ] (the bias blocks); with ``cov``
    also E[h hᵀ]. ``rows``: MC samples (mc), 1 (empirical) or the classes (exact). ``empirical``:
    the factor is the back-propagated gradient itself, so it has no pull-back of its own."""
    pull = 0.0 if empirical else sum(2.0 * batch * rows * i * o for i, o in layers(widths)[1:])
    grams = sum(sym(o, batch * rows) for _, o in layers(widths))
    return grad_backward(widths, batch) + pull + grams + (input_covs(widths, batch) if cov else 0.0)


def mean_pass(widths: list[int], batch: int, *, per_sample: bool = True, cov: bool = False) -> float:
    """GN/PCH pass (batch-mean blocks): the gradient and, into every layer but the last, the
    sandwich Wᵀ H̄ W ∘ J of Eq. (6) (J = E[d dᵀ]) or Eq. (7) (J = E[d] E[d]ᵀ): H̄ W, then the two
    symmetric products; with ``cov`` also E[h hᵀ]."""
    k = batch if per_sample else 1
    sandwich = sum(2.0 * o * o * i + sym(i, o) + sym(i, k) for i, o in layers(widths)[1:])
    return grad_backward(widths, batch) + sandwich + (input_covs(widths, batch) if cov else 0.0)


def eacg_step(widths: list[int], batch: int, iters: int, split: int = 1) -> float:
    """EA-CG step with PCH-1 and the rank-one factor (Eq. 11b): forward, PCH-1 pass, G μ̂ and the
    direction per layer (2 n_out n_in each), and ``iters`` CG iterations on the (n_t + 1)-unknown
    bias and weight systems of every layer (one (n_t+1)² product each; with ``split`` = k, k
    systems of n_t/k + 1 unknowns each)."""
    per_iter = sum(2 * 2.0 * split * (o / split + 1) ** 2 for _, o in layers(widths))
    setup = sum(2 * 2.0 * i * o for i, o in layers(widths))
    return forward(widths, batch) + mean_pass(widths, batch) + setup + iters * per_iter


def _kfi_layer(n_in: int, n_out: int, batch: int, gram: bool) -> float:
    """One layer's KFI update (Eq. 12): the A side in its (n_in, n_in) form (E[h hᵀ], its Cholesky
    factor, the right solve) or its Woodbury form (H Hᵀ, its factor, ((G⁻¹Eᵀ) K⁻¹) H; no ∇_W is
    formed, so the pass's gᵀh is taken back), plus G's factor and left solve."""
    g_side = 2.0 * (n_out**3 / 6 + n_out**2 * (batch if gram else n_in))
    if gram:
        return g_side + sym(batch, n_in) + 2.0 * (batch**3 / 6 + batch**2 * n_out + n_out * batch * n_in) \
            - 2.0 * batch * n_in * n_out
    return g_side + sym(n_in, batch) + 2.0 * (n_in**3 / 6 + n_in**2 * n_out)


def kfi_step(widths: list[int], batch: int, kind: str, rows: int = 1) -> float:
    """KFI step with ``kind`` (fisher: KFAC, gn: KFRA, pch1/pch2): forward, the kind's pass and
    every layer's update in whichever form :func:`curvlab.solvers.kfi.gram_is_cheaper` picks."""
    from curvlab.solvers.kfi import gram_is_cheaper

    passes = fisher_pass(widths, batch, rows) if kind == "fisher" else mean_pass(widths, batch)
    solve = sum(_kfi_layer(i, o, batch, gram_is_cheaper(i, o, batch)) for i, o in layers(widths))
    return forward(widths, batch) + passes + solve


def curvlinops_kfac(widths: list[int], batch: int) -> float:
    """curvlinops' KFAC (MC or empirical, one label per sample): forward, a backward with the
    sampled labels, and full (not triangular) products for E[g gᵀ] and E[a aᵀ] of every layer."""
    full = sum(2.0 * batch * (i * i + o * o) for i, o in layers(widths))
    return grad_step(widths, batch) + full


def backpack_kfra(widths: list[int], batch: int) -> float:
    """BackPACK's KFRA: forward, backward, the batch-mean sandwich Wᵀ H̄ W ∘ E[d dᵀ] into every
    layer but the last with full products, and full E[a aᵀ]."""
    sandwich = sum(2.0 * (o * o * i + i * i * o + i * i * batch) for i, o in layers(widths)[1:])
    covs = sum(2.0 * batch * i * i for i, _ in layers(widths))
    return grad_step(widths, batch) + sandwich + covs
