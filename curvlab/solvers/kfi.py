"""KFI: Kronecker-factored inverse with factored Tikhonov damping (Chen et al., Eqs. 12–13).

For layer t, with ``B`` the bias block of the chosen curvature kind, the weight update is

    d_W = −G⁻¹ ∇_W A⁻¹,   A = E[h hᵀ] + π √α I,   G = B + (√α / π) I,

the inverse of ``A ⊗ G`` applied to vec(∇_W) (Eq. 12). ``π`` is the factored-Tikhonov
trace ratio of Martens & Grosse (2015, Section 6.3), π² = (tr A₀ / dim A₀) / (tr B / dim B)
with A₀ the undamped input factor; it is 1 when either trace is not positive (for example
a layer whose curvature vanishes). The kind picks the method: ``fisher`` gives KFAC,
``gn`` KFRA and ``pch1``/``pch2`` PCH-KFI.

**Biases.** The bias is its own block, as in EA-CG's Eq. (10a), with the same damped
factor as the weights: ``d_b = −G⁻¹ ∇_b``. This is Eq. (12) for a weight whose input is the
constant 1 and whose A-factor damping is dropped, so it reuses G's Cholesky factor.

**Wide inputs (Eq. 13).** With ``rank_one_first_layer`` the first layer uses
A = E[h] E[h]ᵀ + π√α I (π from tr A₀ = ‖E[h]‖²), applied with Sherman–Morrison,

    (μμᵀ + c I)⁻¹ = (I − μμᵀ / (c + μᵀμ)) / c,   c = π √α,

so it costs O(n_out n_in) and never forms an (n_in, n_in) matrix.

**Batch smaller than the input (Woodbury).** With the layer inputs H (B, n_in), A₀ = HᵀH/B,
and the Woodbury identity gives, with the (B, B) matrix K = H Hᵀ + c B I,

    A⁻¹ = (I − Hᵀ K⁻¹ H) / c,        H A⁻¹ = B K⁻¹ H  (push-through).

So A⁻¹ is applied exactly without the (n_in, n_in) factor; and when the gradient comes
as ∇_W = Eᵀ H (E the samples' shares of the pre-activation gradient), the whole update
is d_W = −B (G⁻¹ Eᵀ) K⁻¹ H, which never forms an (n_out, n_in) intermediate before the
last product. :func:`gram_is_cheaper` picks, per layer and batch size, whichever of the
two forms needs fewer flops. Every other factor is solved with a Cholesky factorisation
(no explicit inverse).

**Conv layers** (``nn.Conv2d``) are linear layers over their input patches: A is the patch factor
of ``kfac_type`` (expand: KFC, reduce: Eschenhagen et al. 2023) and G the layer's ``out_factor``
(the expand G, or the bias block for reduce); their bias uses their own exact bias block, damped as G.
Their A is always formed (a Gram form would need a row per sample and position); the ``nn.Linear``
layers of a conv net take the Woodbury form where it is cheaper, as an MLP's.

**Amortised factors (optional).** ``update_every=T`` refreshes the damped factors (and π)
every T steps, as KFAC implementations do, and applies the stored ones to the current
gradient in between; the default T = 1 is the paper's KFI (fresh inverses every step).
The stored factors are part of :meth:`KFI.state_dict`, so a resumed run continues exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from curvlab.curvature.blocks import LayerCurvature
from curvlab.curvature.options import CurvatureOptions
from curvlab.losses import Loss
from curvlab.modules import LayerRule, Net, chain
from curvlab.solvers.base import register
from curvlab.solvers.blockwise import BlockSolver, LayerSamples
from curvlab.solvers.options import COUNT

__all__ = ["trace_ratio", "gram_is_cheaper", "LayerInverse", "layer_inverses", "kfi_solve", "KFI"]


def trace_ratio(trace_a: float, dim_a: int, trace_g: float, dim_g: int) -> float:
    """Martens & Grosse's π = sqrt((tr A / dim A) / (tr G / dim G)); 1 if undefined."""
    num, den = trace_a / dim_a, trace_g / dim_g
    if not (num > 0 and den > 0 and math.isfinite(num) and math.isfinite(den)):
        return 1.0
    return math.sqrt(num / den)


def gram_is_cheaper(n_in: int, n_out: int, batch: int) -> bool:
    """Whether the Woodbury form (through the (B, B) Gram matrix) needs fewer flops.

    Multiply-adds of the weight update: the (n_in, n_in) form builds HᵀH, factors it and
    solves for (G⁻¹ ∇_W) A⁻¹; the Gram form builds H Hᵀ, factors it and forms
    ((G⁻¹ Eᵀ) K⁻¹) H.
    """
    full = batch * n_in**2 + n_in**3 / 3 + 2 * n_out * n_in**2 + 2 * n_out**2 * n_in
    gram = batch**2 * n_in + batch**3 / 3 + 2 * n_out * batch**2 + n_out * batch * n_in + 2 * n_out**2 * batch
    return gram < full


def _cholesky(mat: Tensor, what: str) -> Tensor:
    """Lower Cholesky factor; retries in float64 before giving up with a clear message."""
    chol, info = torch.linalg.cholesky_ex(mat)
    if int(info) == 0:
        return chol
    chol, info = torch.linalg.cholesky_ex(mat.double())
    if int(info) != 0:
        if not bool(torch.isfinite(mat).all()):  # a factor of inf/NaN entries: the weights blew up before
            raise ValueError(f"KFI: the damped factor {what} has non-finite entries (the weights diverged); "
                             "lower solver.lr")
        raise ValueError(
            f"KFI: the damped factor {what} is not positive definite (Cholesky failed); "
            "use a PSD curvature kind or a larger solver.alpha"
        )
    return chol.to(mat.dtype)


def _damped(mat: Tensor, damping: float) -> Tensor:
    """mat + damping · I, as a new matrix."""
    out = mat.clone()
    out.diagonal().add_(damping)
    return out


def _right_solve(x: Tensor, chol: Tensor) -> Tensor:
    """X S⁻¹ for a symmetric S = L Lᵀ: (S⁻¹ Xᵀ)ᵀ."""
    return torch.cholesky_solve(x.T, chol).T


@dataclass
class LayerInverse:
    """The damped factors of one layer, ready to apply (Eq. 12).

    Attributes:
        pi: the trace ratio π of this layer.
        c: the A-factor damping π √α.
        chol_g: (n_out, n_out) Cholesky factor of G = B + (√α/π) I.
        mode: how A⁻¹ is applied: ``cholesky`` (``a`` = Cholesky factor of A), ``gram``
            (``a`` = Cholesky factor of K = H Hᵀ + c B I, ``h`` = H) or ``rank_one``
            (``a`` = E[h], Eq. 13; ``h`` = H when this step's samples came along).
        a: see ``mode``.
        h: (B, n_in) the inputs behind A (``gram``) or this step's inputs (``rank_one``).
        chol_b: Cholesky factor of the damped bias block where it differs from G (a conv layer
            with ``kfac_type=expand``); None: the bias reuses ``chol_g``.
    """

    pi: float
    c: float
    chol_g: Tensor
    mode: str
    a: Tensor
    h: Tensor | None = None
    chol_b: Tensor | None = None

    def weight(self, grad_weight: Tensor | None, e: Tensor | None = None) -> Tensor:
        """d_W = −G⁻¹ ∇_W A⁻¹; ``e`` (B, n_out) with ∇_W = eᵀ h for this ``h`` takes the short form."""
        if e is not None:
            assert self.h is not None
            ge = torch.cholesky_solve(e.T, self.chol_g)  # (n_out, B) G⁻¹ Eᵀ
            if self.mode == "gram":
                # −B (G⁻¹ Eᵀ K⁻¹) H, scaled while still (n_out, B): no extra pass over (n_out, n_in).
                return _right_solve(ge, self.a).mul_(-self.h.shape[0]) @ self.h
            # Eq. (13): −(G⁻¹ Eᵀ)(H A⁻¹), A⁻¹ applied on the (B, n_in) side; the (n_out, n_out)
            # solve then costs n_out² B instead of n_out² n_in.
            return ge.neg_() @ self._rank_one_right(self.h)
        x = torch.cholesky_solve(grad_weight, self.chol_g)  # (n_out, n_in) G⁻¹ ∇_W
        if self.mode == "cholesky":
            return -_right_solve(x, self.a)
        if self.mode == "gram":  # X A⁻¹ = (X − (X Hᵀ) K⁻¹ H) / c
            assert self.h is not None
            return -(x - _right_solve(x @ self.h.T, self.a) @ self.h) / self.c
        return -self._rank_one_right(x)

    def _rank_one_right(self, x: Tensor) -> Tensor:
        """X A⁻¹ for Eq. (13)'s A = μμᵀ + cI (Sherman–Morrison): (X − (X μ) μᵀ / (c + μᵀμ)) / c."""
        mu = self.a
        return torch.addr(x, x @ mu, mu, alpha=-1 / (self.c + float(mu @ mu))).div_(self.c)

    def bias(self, grad_bias: Tensor) -> Tensor:
        """d_b = −G⁻¹ ∇_b (a conv layer with its own bias block: that block, damped alike)."""
        chol = self.chol_g if self.chol_b is None else self.chol_b
        return -torch.cholesky_solve(grad_bias[:, None], chol)[:, 0]


def layer_inverses(
    blocks: Sequence[LayerCurvature],
    alpha: float,
    rank_one_first_layer: bool = False,
    samples: Mapping[int, LayerSamples] | None = None,
) -> list[LayerInverse]:
    """Damped Kronecker factors of every layer (see :func:`kfi_solve` for the arguments)."""
    samples = samples or {}
    sqrt_alpha = math.sqrt(alpha)
    out = []
    for t, blk in enumerate(blocks):
        g0 = blk.out_factor  # (n_out, n_out): the bias block, or a conv's expand G
        h = None
        if rank_one_first_layer and t == 0:
            mode, a0 = "rank_one", blk.input_mean  # (n_in,)
            trace_a = float(a0 @ a0)
            h = samples[t].h if t in samples else None
        elif t in samples:
            mode, h = "gram", samples[t].h  # (B, n_in)
            trace_a = float(torch.linalg.vector_norm(h).square()) / h.shape[0]
        else:
            if blk.input_cov is None:
                raise ValueError(f"KFI needs input_cov (E[h hᵀ]) or the input samples for layer {t + 1}")
            mode, a0 = "cholesky", blk.input_cov
            trace_a = float(torch.diagonal(a0).sum())
        pi = trace_ratio(trace_a, blk.n_in, float(torch.diagonal(g0).sum()), blk.n_out)
        c = pi * sqrt_alpha
        chol_g = _cholesky(_damped(g0, sqrt_alpha / pi), f"G of layer {t + 1}")
        if mode == "cholesky":
            a0 = _cholesky(_damped(a0, c), f"A of layer {t + 1}")
        elif mode == "gram":
            assert h is not None
            k = h @ h.T  # (B, B)
            k.diagonal().add_(c * h.shape[0])
            a0 = _cholesky(k, f"A of layer {t + 1} (its Gram form)")
        chol_b = None if blk.kron_out is None else _cholesky(_damped(blk.bias, sqrt_alpha / pi), f"B of layer {t + 1}")
        out.append(LayerInverse(pi, c, chol_g, mode, a0, h, chol_b))
    return out


def _apply(
    inverses: Sequence[LayerInverse],
    blocks: Sequence[LayerCurvature],
    bias: bool,
    samples: Mapping[int, LayerSamples] | None = None,
) -> tuple[list[Tensor], dict[str, float]]:
    """The direction from (possibly stored) factors and this step's gradients."""
    samples = samples or {}
    d: list[Tensor] = []
    for t, (inv, blk) in enumerate(zip(inverses, blocks, strict=True)):
        sample = samples.get(t)
        # Samples exist only on refresh steps, so they always belong to these factors; a layer
        # with samples has no grad_weight (the short form needs only e).
        fresh = sample is not None and sample.h is inv.h
        d.append(inv.weight(blk.grad_weight, sample.e if fresh else None))
        if bias:
            d.append(inv.bias(blk.grad_bias))
    pis = [inv.pi for inv in inverses]
    return d, {"kfi_pi_min": min(pis), "kfi_pi_max": max(pis)}


def kfi_solve(
    blocks: Sequence[LayerCurvature],
    alpha: float,
    rank_one_first_layer: bool = False,
    bias: bool = True,
    samples: Mapping[int, LayerSamples] | None = None,
) -> tuple[list[Tensor], dict[str, float]]:
    """The KFI direction of Eq. (12) for every layer.

    Args:
        blocks: per-layer curvature, input side first; ``input_cov`` is needed for every
            layer except the first with ``rank_one_first_layer`` and those in ``samples``.
        alpha: damping α > 0 (the damping of each factor is √α scaled by π).
        rank_one_first_layer: use Eq. (13) with Sherman–Morrison for layer 1.
        bias: whether the net has biases (otherwise no bias entries are returned).
        samples: per 0-based layer, its inputs (and gradient shares): that layer's A⁻¹ is
            applied in the Woodbury form through the (B, B) Gram matrix.

    Returns:
        ``[d_W1, d_b1, d_W2, …]`` in ``net.parameters()`` order, and the range of π.
    """
    return _apply(layer_inverses(blocks, alpha, rank_one_first_layer, samples), blocks, bias, samples)


@register("kfi")
class KFI(BlockSolver):
    """KFI solver (KFAC / KFRA / PCH-KFI by curvature kind): ``θ ← θ + lr · d``.

    Args:
        net, loss, lr: as every solver.
        curvature: curvature options or their dict; the kind must be PSD (not ``exact``;
            ``gn`` only with a convex loss).
        alpha: damping, 0 < α < 1.
        rank_one_first_layer: Eq. (13) for the first layer (very wide inputs).
        max_input_width: the widest layer input whose (n, n) factor KFI will form.
        update_every: refresh the damped factors every this many steps (1: every step,
            the paper's KFI; larger: amortised, as KFAC implementations).
    """

    psd_required = True
    label = "KFI · {kind}"
    known_as = {"fisher": "KFAC", "gn": "KFRA"}  # Chen et al. Table 1
    option_rules = {
        **BlockSolver.option_rules,
        "max_input_width": COUNT,
        "update_every": COUNT.with_hint(
            "1 = fresh factors every step, the paper's KFI; e.g. 10 = refresh every 10 steps"
        ),
    }

    def __init__(
        self,
        net: Net,
        loss: Loss,
        lr: float,
        curvature: CurvatureOptions | dict[str, Any] | None = None,
        alpha: float = 0.02,
        rank_one_first_layer: bool = False,
        max_input_width: int = 4096,
        update_every: int = 1,
    ) -> None:
        super().__init__(net, loss, lr, curvature, alpha)
        self.check_ranges(max_input_width=max_input_width, update_every=update_every)
        self.rank_one_first_layer = bool(rank_one_first_layer)
        self.max_input_width = int(max_input_width)
        self.update_every = int(update_every)
        self._inverses: list[LayerInverse] | None = None
        self._age = 0  # steps since the stored factors were computed
        view = chain(net)  # a net with convolutions: A is (J, J) per conv, its widths come with the input
        for t, n_in in enumerate([] if view.has_steps else view.widths[:-1]):
            if n_in <= self.max_input_width or not self.needs_input_cov(t):
                continue
            hint = (
                "set solver.rank_one_first_layer=true (Eq. 13, Sherman–Morrison) or raise solver.max_input_width"
                if t == 0
                else "raise solver.max_input_width or use solver=eacg"
            )
            raise ValueError(
                f"KFI: layer {t + 1} has {n_in} inputs > solver.max_input_width={self.max_input_width}, "
                f"so its ({n_in}, {n_in}) factor E[h hᵀ] is too large; {hint}"
            )

    def needs_input_cov(self, t: int) -> bool:
        return not (self.rank_one_first_layer and t == 0)

    @property
    def _refresh(self) -> bool:
        return self._inverses is None or self._age >= self.update_every

    def input_needs(self, batch: int) -> tuple[set[int], set[int]]:
        if not self._refresh:
            return set(), set()
        view = chain(self.net)
        factored = [t for t in range(view.depth) if self.needs_input_cov(t)]
        # (n_in, n_out) of each dense layer; a conv's Gram form would need one row per sample and
        # position, so its A is always formed (the dense layers of a conv net take either form).
        dense = {t: view.rules[t].widths(m) for t, m in enumerate(view.layers) if isinstance(view.rules[t], LayerRule)}
        gram = {t for t in factored if t in dense and gram_is_cheaper(*dense[t], batch)}
        # Eq. (13): the samples make G⁻¹ ∇_W cost n_out² B instead of n_out² n_in.
        rank_one = {0} if self.rank_one_first_layer and 0 in dense and batch < dense[0][0] else set()
        return set(factored) - gram, gram | rank_one

    def solve(
        self, blocks: list[LayerCurvature], samples: dict[int, LayerSamples]
    ) -> tuple[list[Tensor], dict[str, float]]:
        refresh = self._refresh
        if refresh:
            self._inverses, self._age = layer_inverses(blocks, self.alpha, self.rank_one_first_layer, samples), 0
        assert self._inverses is not None
        self._age += 1
        d, stats = _apply(self._inverses, blocks, any(b.has_bias for b in blocks), samples)
        return d, {**stats, "kfi_refreshed": float(refresh)}

    def state_dict(self) -> dict[str, Any]:
        inverses = None if self._inverses is None else [asdict(inv) for inv in self._inverses]
        return {**super().state_dict(), "kfi_age": self._age, "kfi_inverses": inverses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._age = int(state.get("kfi_age", 0))
        stored = state.get("kfi_inverses")
        # Checkpoints are loaded onto the CPU; the factors belong with the net.
        device = next(self.net.parameters()).device
        self._inverses = None if stored is None else [
            LayerInverse(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in inv.items()})
            for inv in stored
        ]
