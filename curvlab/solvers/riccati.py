"""The layer-by-layer sweep behind :func:`curvlab.hessian_inverse_product`.

``(H + λI) u = v`` is the stationarity condition of a linear-quadratic control problem whose
"time" is the layer index: the controls are the parameter perturbations ``u_t = (dW^t, db^t)``
(shared by all samples), the states are the per-sample pre-activation perturbations
``x_t = (dz^t_1, …, dz^t_B)`` with the linearised forward pass ``x_t = A_t x_{t-1} + B_t u_t``,
and the cost is ``½ uᵀ(H + λI)u − vᵀu`` written with the second derivatives of the Lagrangian of
the forward pass (``docs/exact_inverse.md`` derives it). A backward Riccati sweep eliminates
``u_t`` then ``x_{t-1}`` for t = k, …, 1, i.e. a block LDLᵀ of the augmented (KKT) system in
layer order; a forward sweep recovers ``u``. Cost and memory are linear in the depth ``k``.

Per-sample blocks: ``A_t`` (B, n_t, n_{t-1}) is block-diagonal over the batch and applied with
batched matmuls; ``B_t`` (``u ↦ dW h^{t-1}_i + db``) and the cross term ``S_t`` are applied
through their Kronecker structure, never assembled. Each layer's pivot is factorised either in
parameter space (p_t × p_t) or, by the push-through identity, on ``range(B_tᵀ)`` only
(n_t · rank of the layer inputs ≤ B n_t), whichever costs fewer flops (docs §6).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Sequence

import torch
from torch import Tensor

from curvlab.losses import Loss
from curvlab.modules import LINEAR, LayerRule, Net, chain
from curvlab.symmetric import symmetric_product

__all__ = [
    "LayerTerms",
    "layer_terms",
    "PivotForm",
    "STATE_OVERHEAD_FLOPS",
    "pivot_flops",
    "pivot_forms",
    "riccati_solve",
]


@dataclass
class LayerTerms:
    """What the sweep needs from layer t (0-based ``l`` in code, ``t = l + 1`` in the docs).

    Attributes:
        h: layer input ``h^{t-1}`` (B, n_{t-1}).
        n_out: width ``n_t``.
        jac: ``∂z^t/∂z^{t-1} = W^t diag σ'(z^{t-1})`` per sample (B, n_t, n_{t-1}); None for t = 1.
        delta: adjoint ``∂f/∂z^t`` of the batch-mean loss (B, n_t); None for the Gauss-Newton matrix.
        dsig_prev: ``σ'(z^{t-1})`` (B, n_{t-1}); None for t = 1.
        q_state: state curvature ``∂²L/∂z^t²``: (B, n_t) diagonal ``σ''(z^t) ⊙ ∂f/∂h^t`` for hidden
            layers (None for GN), or (B, C, C) ``∇²ξ_i / B`` for the output layer.
        rule: the layer's rule: its parameter Jacobian ``B_t`` and cross term ``S_t``.
    """

    h: Tensor
    n_out: int
    jac: Tensor | None
    delta: Tensor | None
    dsig_prev: Tensor | None
    q_state: Tensor | None
    rule: LayerRule = LINEAR


def layer_terms(net: Net, x: Tensor, y: Tensor, loss: Loss, exact: bool) -> list[LayerTerms]:
    """One forward and one backward pass: the per-layer quantities of the Lagrangian."""
    with torch.no_grad():
        view = chain(net)  # the Linear modules; σ_t between them (identity for Linear → Linear)
        cache = view.forward_cache(x)
        k, batch = view.depth, cache.output.shape[0]
        z = cache.preacts[:-1]  # z^t, t < k: (B, n_t)
        if exact:  # σ' and σ'' together: they share σ(z) for tanh and sigmoid
            derivs = [view.acts[t].derivatives(z_t) for t, z_t in enumerate(z)]
        else:
            derivs = [(view.acts[t].df(z_t), None) for t, z_t in enumerate(z)]
        dsig = [d1 for d1, _ in derivs]  # σ'(z^t): (B, n_t)
        delta = loss.grad(cache.output, y) / batch  # ∂f/∂z^k (B, C)
        q_state: Tensor | None = loss.hessian(cache.output, y) / batch  # (B, C, C)
        terms: list[LayerTerms] = []
        for l in range(k - 1, -1, -1):
            if l < k - 1:  # backprop one layer: ∂f/∂h^t = δ^{t+1} W^{t+1}, δ^t = σ'(z^t) ⊙ ∂f/∂h^t
                e_h = view.rules[l + 1].jac_t_vec(view.layers[l + 1], delta)  # (B, n_t)
                q_state = view.acts[l].residual(derivs[l][1], e_h) if exact else None
                delta = view.acts[l].jac_t_vec(dsig[l], e_h)
            rule, layer = view.rules[l], view.layers[l]
            terms.append(
                LayerTerms(
                    h=cache.inputs[l],
                    n_out=rule.widths(layer)[1],
                    jac=rule.jac(layer, dsig[l - 1]) if l > 0 else None,  # W^t diag σ'(z^{t-1})
                    delta=delta if exact else None,
                    dsig_prev=dsig[l - 1] if l > 0 else None,
                    q_state=q_state,
                    rule=rule,
                )
            )
    return terms[::-1]


# Small products are written as matmuls and views rather than einsums: on the shapes where the
# sweep is cheap, an einsum's overhead (equation parsing, permutes) costs 2–3× the product itself.


# The parameter Jacobian B_t = H̃ ⊗ I and the cross term S_t of each layer come from its rule
# (``LinearRule.param_jvp``, ``param_columns``, ``param_rows``, ``cross_t``).


# Narrowest row panel of the downdate: 4 panels (5/8 of the GEMM's flops) from a 512-wide state on.
_PANEL = 128


class _Factor:
    """A factorised symmetric pivot C: Cholesky when it is positive definite, else pivoted LU."""

    def __init__(self, C: Tensor, try_cholesky: bool) -> None:
        self.chol = None
        if try_cholesky:
            L, info = torch.linalg.cholesky_ex(C)
            if int(info) == 0:
                self.chol = L
        if self.chol is None:
            self.lu, self.piv = torch.linalg.lu_factor(C)

    def solve(self, rhs: Tensor) -> Tensor:
        """``C⁻¹ rhs``."""
        if self.chol is not None:
            return torch.cholesky_solve(rhs, self.chol)
        return torch.linalg.lu_solve(self.lu, self.piv, rhs)

    def downdate(self, base: Tensor, N: Tensor) -> tuple[Tensor, Tensor]:
        """``base − Nᵀ C⁻¹ N``, exactly symmetric (from ``base``'s upper panels), and T with
        ``C⁻¹ N x = self.post(T x)`` (Cholesky: T = L⁻¹N)."""
        if self.chol is not None:
            T = torch.linalg.solve_triangular(self.chol, N, upper=False)
            left = T  # Nᵀ C⁻¹ N = Tᵀ T
        else:
            T = torch.linalg.lu_solve(self.lu, self.piv, N)
            left = N
        return symmetric_product(left, T, scale=-1.0, base=base, min_width=_PANEL), T

    def post(self, r: Tensor) -> Tensor:
        """The second half of ``C⁻¹ N x`` after :meth:`downdate`: ``L⁻ᵀ r`` (Cholesky), else r."""
        return torch.linalg.solve_triangular(self.chol.T, r, upper=True) if self.chol is not None else r


def _bias_flags(bias: bool | Sequence[bool], k: int) -> list[bool]:
    """One bias flag per layer (a net may mix layers with and without biases)."""
    return [bool(bias)] * k if isinstance(bias, bool) else [bool(b) for b in bias]


class PivotForm(str, Enum):
    """The basis in which one layer's pivot ``R_t = λI + B_tᵀ P_t B_t`` is factorised (docs §6)."""

    PARAM = "param"  # all of R_t: (p_t × p_t), p_t = n_t (n_{t-1} + 1)
    STATE = "state"  # R_t on range(B_tᵀ) only, push-through: (n_t r × n_t r), r = rank of the inputs ≤ B


# The SVD and the projections of the STATE form cost about 0.2 ms per layer (about 15 small tensor
# operations, measured on the 8/8/8/4 benchmark net), which is some 4 MFLOP at the speed that
# LAPACK reaches on such small pivots: below that saving the PARAM form is faster.
STATE_OVERHEAD_FLOPS = 4e6


def pivot_flops(form: PivotForm, batch: int, n_out: int, n_in: int, bias: bool, first: bool) -> float:
    """Leading flop count of eliminating one layer in ``form``.

    The pivot has size ``d = n_out · m_in`` (PARAM, ``m_in = n_in + bias``) or ``d = n_out ·
    min(B, m_in)`` (STATE); with the previous state ``s' = B n_in`` (0 for the first layer, which
    needs no gain): ⅔d³ to factorise, 2d²s' for the gain, 2ds'² for ``P_{t-1}``, and
    ``2Bd(B n_out + d + s')`` to form the pivot and ``N_t`` through the Kronecker structure;
    STATE adds :data:`STATE_OVERHEAD_FLOPS` when it reduces the pivot at all.
    """
    m_in = n_in + int(bias)
    r = m_in if form is PivotForm.PARAM else min(batch, m_in)
    d, s_in = n_out * r, 0 if first else batch * n_in
    flops = 2 / 3 * d**3 + 2 * d**2 * s_in + 2 * d * s_in**2 + 2 * batch * d * (batch * n_out + d + s_in)
    return flops + (STATE_OVERHEAD_FLOPS if r < m_in else 0.0)


def pivot_forms(terms: list[LayerTerms], bias: bool | Sequence[bool]) -> list[PivotForm]:
    """The cheaper :class:`PivotForm` of each layer by :func:`pivot_flops` (PARAM on a tie)."""
    biases = _bias_flags(bias, len(terms))
    forms = []
    for l, t in enumerate(terms):
        batch, n_in = t.h.shape
        cost = {f: pivot_flops(f, batch, t.n_out, n_in, biases[l], first=l == 0) for f in PivotForm}
        forms.append(PivotForm.STATE if cost[PivotForm.STATE] < cost[PivotForm.PARAM] else PivotForm.PARAM)
    return forms


class _Stage:
    """The elimination of ``u_t`` (docs §4–6): pivot, feed-forward, gain and ``P_{t-1}`` of one layer.

    ``R_t`` is factorised in an orthonormal basis ``E = I_{n_t} ⊗ V`` of parameter space, V (m_in, r).
    PARAM: V = I, so ``C = R_t``. STATE: V spans the inputs ``h̃_i = (h_i, 1)`` (SVD), so E spans
    ``range(B_tᵀ)``, which ``R_t`` leaves invariant and off which ``R_t = λI``; then
    ``R_t⁻¹ = (I − EEᵀ)/λ + E C⁻¹ Eᵀ`` with ``C = λI + Lᵀ P L`` of size n_t r, ``L = B_t E =
    (H̃ V) ⊗ I`` (push-through). With ``N = Eᵀ M_t = Eᵀ S_t + Lᵀ P A_t`` and ``S_⊥ = (I − EEᵀ) S_t``
    (``B_tᵀ P A_t`` has no part off ``range(B_tᵀ)``):

        K_t = S_⊥/λ + E C⁻¹ N,    P_{t-1} = Q_{t-1} + A_tᵀ P A_t − S_⊥ᵀ S_⊥/λ − Nᵀ C⁻¹ N.
    """

    def __init__(
        self, P: Tensor, term: LayerTerms, bias: bool, damping: float, psd: bool, first: bool, form: PivotForm
    ) -> None:
        batch, n = P.shape[:2]
        self.P, self.term, self.bias, self.damping, self.first = P, term, bias, damping, first
        inputs = term.rule.param_inputs(term.h, bias)  # H̃ (B, m_in)
        self.perp = None  # I − V Vᵀ (m_in, m_in) in the STATE form
        if form is PivotForm.STATE:
            U, sv, Vh = torch.linalg.svd(inputs, full_matrices=False)
            r = int((sv > sv[0] * max(inputs.shape) * torch.finfo(sv.dtype).eps).sum())  # the rank of H̃
            r = max(r, 1)  # all-zero inputs: any E whose span contains range(B_tᵀ) = {0} will do
            self.V, self.L = Vh[:r].T, U[:, :r] * sv[:r]  # (m_in, r), H̃ V (B, r)
            self.perp = torch.eye(inputs.shape[1], dtype=P.dtype, device=P.device) - self.V @ self.V.T
        else:
            self.V, self.L = torch.eye(inputs.shape[1], dtype=P.dtype, device=P.device), inputs
        r = self.V.shape[1]
        lp = (self.L.T @ P.reshape(batch, -1)).reshape(r * n, batch, n)  # Lᵀ P: rows (ρ, a), (B, n)
        C = torch.matmul(self.L.T, lp).reshape(r * n, r * n)  # Lᵀ P L: rows and columns (ρ, a)
        C.diagonal().add_(damping)
        self.fac = _Factor(C.T, psd)  # C is symmetric; Cᵀ is in the column-major layout of LAPACK
        if first:
            return
        n_prev = term.jac.shape[2]
        AP = term.jac.transpose(1, 2) @ P.reshape(batch, n, -1)  # A_tᵀ P = (P A_t)ᵀ: (B, n_prev, B n)
        Nt = torch.matmul(self.L.T, AP.reshape(-1, batch, n))  # Nᵀ = (Lᵀ P A_t)ᵀ: (B n_prev, r, n)
        if term.delta is not None:  # + (Eᵀ S_t)ᵀ
            term.rule.add_cross_basis_(Nt.view(batch, n_prev, r, n), term.delta, term.dsig_prev, self.V)
        PA = AP.reshape(batch * n_prev, -1).T.reshape(batch, n, -1)  # a (column-major) view, no copy
        AtPA = torch.matmul(term.jac.transpose(1, 2), PA).reshape(batch * n_prev, -1)  # A_tᵀ P A_t
        if term.delta is not None and self.perp is not None:  # − S_⊥ᵀS_⊥/λ, S_⊥ = (I − EEᵀ) S_t
            term.rule.sub_cross_gram_(
                AtPA.view(batch, n_prev, batch, n_prev), term.delta, term.dsig_prev, self.perp, damping
            )
        # P_{t-1} − Q_{t-1} = Aᵀ P A − S_⊥ᵀS_⊥/λ − Nᵀ C⁻¹ N, exactly symmetric; Nᵀ is row-major, so
        # N is the column-major operand LAPACK wants
        self.p_prev, self.gain_factor = self.fac.downdate(AtPA, Nt.reshape(batch * n_prev, -1).T)

    def _e_t(self, c: Tensor, n: int) -> Tensor:
        """``E c`` for c (r n, m) with rows (ρ, a): (m_in, n m) as ``rule.param_columns`` lays it out."""
        return self.V @ c.reshape(self.V.shape[1], -1)

    def feed(self, v: Tensor, q: Tensor) -> tuple[Tensor, Tensor | None]:
        """``k_t = R_t⁻¹ (v − B_tᵀ q) = v_⊥/λ + E C⁻¹ (Eᵀ v − Lᵀ q)`` for v (p_t, m), q (B, n_t, m),
        and ``q_{t-1} = A_tᵀ (q + P B_t k_t) + S_tᵀ k_t`` (None for t = 1)."""
        t, (batch, n, m) = self.term, q.shape
        X = t.rule.param_columns(v, n, self.bias)  # (m_in, n m)
        rhs = torch.addmm(self.V.T @ X, self.L.T, q.reshape(batch, -1), alpha=-1.0)  # (r, n m)
        c = self.fac.solve(rhs.view(-1, m))  # (r n, m)
        blocks = self._e_t(c, n)
        if self.perp is not None:
            blocks = torch.addmm(blocks, self.perp, X, alpha=1.0 / self.damping)
        k = t.rule.param_rows(blocks, n, self.bias)
        if self.first:
            return k, None
        bk = (self.L @ c.reshape(self.V.shape[1], -1)).view(batch * n, m)  # B_t k_t = L C⁻¹(…)
        q_bk = torch.addmm(q.reshape(batch * n, m), self.P.reshape(batch * n, -1), bk)  # q + P B_t k_t
        q_prev = t.jac.transpose(1, 2) @ q_bk.view(q.shape)
        return k, q_prev + t.rule.cross_t(t.delta, t.dsig_prev, k) if t.delta is not None else q_prev

    def gain(self, x: Tensor) -> Tensor:
        """``K_t x = S_⊥ x/λ + E C⁻¹ N x`` for x (B, n_{t-1}, m): (p_t, m)."""
        t, n = self.term, self.P.shape[1]
        blocks = self._e_t(self.fac.post(self.gain_factor @ x.reshape(-1, x.shape[-1])), n)  # (m_in, n m)
        if t.delta is not None and self.perp is not None:
            sx_t = t.rule.cross_columns(t.delta, t.dsig_prev, x)  # S_t x, weight rows: (n_{t-1}, n m)
            blocks = torch.addmm(blocks, self.perp[:, : x.shape[1]], sx_t, alpha=1.0 / self.damping)
        return t.rule.param_rows(blocks, n, self.bias)


def riccati_solve(
    terms: list[LayerTerms],
    v: list[Tensor],
    damping: float,
    bias: bool | Sequence[bool],
    psd: bool,
    form: PivotForm | None = None,
) -> list[Tensor]:
    """Solve ``(H + λI) u = v`` layer by layer.

    Args:
        terms: :func:`layer_terms` of the net (exact Hessian or Gauss-Newton).
        v: right-hand sides per layer, (p_t, m) with rows (vec(dW^t) row-major, db^t).
        damping: λ > 0.
        bias: whether the layers have biases (one flag, or one per layer).
        psd: whether the pivots are expected positive definite (Cholesky is tried first).
        form: the pivot form of every layer; None chooses per layer by :func:`pivot_forms`.

    Returns:
        ``u`` per layer, (p_t, m).
    """
    k = len(terms)
    batch, n_last = terms[-1].h.shape[0], terms[-1].q_state.shape[1]
    eye_b = torch.eye(batch, dtype=v[0].dtype, device=v[0].device)
    # Cost-to-go V_t(x_t) = ½ x_tᵀ P x_t + qᵀ x_t, starting from the loss curvature at the output.
    P = torch.einsum("iac,ij->iajc", terms[-1].q_state, eye_b)  # (B, C, B, C)
    q = v[0].new_zeros(batch, n_last, v[0].shape[1])  # (B, C, m)
    stages: list[_Stage] = [None] * k  # type: ignore[list-item]
    feeds: list[Tensor] = [None] * k  # type: ignore[list-item]
    biases = _bias_flags(bias, k)
    forms = [form] * k if form is not None else pivot_forms(terms, biases)
    for l in range(k - 1, -1, -1):
        t = terms[l]
        stages[l] = _Stage(P, t, biases[l], damping, psd, l == 0, forms[l])
        feeds[l], q = stages[l].feed(v[l], q)  # k_t (p, m), q_{t-1} (B, n_prev, m)
        if l == 0:
            break
        P = stages[l].p_prev  # exactly symmetric (the downdate mirrors its upper triangle)
        q_prev = terms[l - 1].q_state
        if q_prev is not None:  # hidden-state curvature σ''(z) ⊙ ∂f/∂h (diagonal per sample)
            P.diagonal().add_(q_prev.reshape(-1))
        P = P.reshape(batch, t.h.shape[1], batch, t.h.shape[1])
    # Forward sweep: x_0 = 0 (the input does not move), u_t = k_t − K_t x_{t-1}.
    u = [feeds[0]]
    x = terms[0].rule.param_jvp(feeds[0], terms[0].h, terms[0].n_out, biases[0])
    for l in range(1, k):
        t = terms[l]
        u_l = feeds[l] - stages[l].gain(x)
        u.append(u_l)
        x = torch.baddbmm(t.rule.param_jvp(u_l, t.h, t.n_out, biases[l]), t.jac, x)  # A_t x_{t-1} + B_t u_t
    return u
