"""Curvature kinds as small policies on the one backward recursion.

A kind says two things (cf. BackPACK's residual table and Section 3.2 of Dangel & Hennig):

1. how it builds the output block ∇²_{b^k} (Eq. 4a / 8a of Chen et al.), which also fixes the
   message type that travels backwards (per-sample blocks, per-sample factors or a batch mean);
2. how it treats the activation's second-order ("residual") diagonal term of Eq. (4b):

=========  =============================================  =====================
kind       output block                                   residual term
=========  =============================================  =====================
exact      per-sample loss Hessians ∇²_{h^k} ξ_i           keep (per sample)
gn         E_i[∇²_{h^k} ξ_i]                               drop
pch1/pch   Pos-Eig(E_i[∇²_{h^k} ξ_i]), |eigenvalues|       |·| of the mean (γ = −1)
pch2       Pos-Eig(E_i[∇²_{h^k} ξ_i]), |eigenvalues|       max(·, 0) (γ = 0)
fisher     per-sample factors g (mc, empirical, exact)     drop
=========  =============================================  =====================

On a step net (convolutions, ``STEP_KINDS``) every kind keeps per-sample Jacobians all the way
(BackPACK's ``curvmatprod``, HBP Sec. 3), not the Jacobian average of Eq. (6), which would need
batch-mean blocks of whole feature maps: ``exact`` per-sample blocks as above; ``fisher`` per-sample
factors as above; ``gn``/``pch1``/``pch2`` per-sample factors of the output Hessians H_i (GN signed,
PCH-1/2 Pos-Eig of each H_i) and, for PCH, the per-sample residual |r_i| or max(r_i, 0) as rows.
The cross-entropy H_i takes C−1 exact rows (``ce_hessian_rows``: its rank); ``sketch`` replaces them by
``mc_samples`` Rademacher sketch rows (``sketched``), an unbiased approximation that is cheaper when m < C−1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch
from torch import Tensor

from curvlab.curvature.messages import MeanBlock, Message, PerSampleBlocks, Residual, SampleFactors, rademacher
from curvlab.curvature.options import CurvatureOptions, FisherType, Kind
from curvlab.losses import Loss, LossKind
from curvlab.symmetric import symmetrized

__all__ = [
    "Batching", "KindPolicy", "KINDS", "STEP_KINDS", "EA_EXACT", "policy", "pos_eig", "fisher_factors",
    "ce_hessian_rows", "sketched",
]

OutputBuilder = Callable[[Loss, Tensor, Tensor, CurvatureOptions, "torch.Generator | None"], Message]


def pos_eig(a: Tensor) -> Tensor:
    """Pos-Eig of Chen et al. with γ = −1: a symmetric matrix with |eigenvalues|, Eq. (8a)."""
    lam, q = torch.linalg.eigh(symmetrized(a))
    return symmetrized((q * lam.abs()) @ q.T)  # exactly symmetric, as a MeanBlock must be


def fisher_factors(
    loss: Loss, out: Tensor, y: Tensor, fisher: FisherType, mc_samples: int, generator: torch.Generator | None
) -> Tensor:
    """Per-sample factors U_i (B, m, C) with U_iᵀ U_i the output Fisher block of sample i.

    ``mc``: m sampled labels ỹ ~ softmax(h^k), rows ∇ξ(h^k | ỹ)/√m (KFAC).
    ``empirical``: the true label's gradient. ``exact``: rows √p_c ∇ξ(h^k | c) for every
    class c, so that Uᵀ U = Σ_c p_c g_c g_cᵀ, the expectation under the predictive distribution.
    """
    b, c = out.shape
    if fisher is FisherType.EMPIRICAL:
        return loss.grad(out, y)[:, None, :]
    if fisher is FisherType.MC:
        # Sample where the generator lives (a CPU generator cannot drive CUDA sampling).
        src = out if generator is None or generator.device == out.device else out.to(generator.device)
        labels = loss.sample_labels(src, mc_samples, generator=generator).to(out.device)  # (m, B)
        m = labels.shape[0]
    else:
        labels = torch.arange(c, device=out.device)[:, None].expand(c, b)  # (C, B)
        m = c
    rep = out[None].expand(m, b, c).reshape(m * b, c)
    g = loss.grad(rep, labels.reshape(-1)).reshape(m, b, c).transpose(0, 1)  # (B, m, C)
    if fisher is FisherType.MC:
        return g / m**0.5
    return g * loss.probs(out).sqrt()[:, :, None]  # row c scaled by √p_c


def _exact_output(loss: Loss, out: Tensor, y: Tensor, opts: CurvatureOptions, gen) -> Message:
    return PerSampleBlocks(loss.hessian(out, y))  # (B, C, C), Eq. (4a)


def _mean_output(loss: Loss, out: Tensor, y: Tensor, opts: CurvatureOptions, gen) -> Message:
    return MeanBlock(loss.mean_hessian(out, y), out.shape[0])


def _pos_eig_output(loss: Loss, out: Tensor, y: Tensor, opts: CurvatureOptions, gen) -> Message:
    """Eq. (8a). A loss convex in the logits has PSD per-sample Hessians, so their mean is PSD and
    Pos-Eig is the identity (up to the round-off of an eigh): no eigh for cross-entropy, kept for Eq. (14)."""
    mean = loss.mean_hessian(out, y)  # (C, C), exactly symmetric
    return MeanBlock(mean if loss.convex else pos_eig(mean), out.shape[0])


def _fisher_output(loss: Loss, out: Tensor, y: Tensor, opts: CurvatureOptions, gen) -> Message:
    u = fisher_factors(loss, out, y, opts.fisher, opts.mc_samples, gen)
    return SampleFactors.of_gradient(u[:, 0]) if opts.fisher is FisherType.EMPIRICAL else SampleFactors(u)


def ce_hessian_rows(loss: Loss, out: Tensor, y: Tensor) -> Tensor:
    """C−1 rows U_i (b, C−1, C) with U_iᵀ U_i = diag(p_i) − p_i p_iᵀ, the cross-entropy output Hessian.

    Its C exact-Fisher rows R_c = √p_c (p − e_c) (``fisher_factors``, ``exact``) are dependent: aᵀR = 0
    for a = √p, a unit vector. The Householder reflection Q = I − 2vvᵀ/vᵀv, v = a + e_C, maps e_C to −a,
    so the last row of QR is −aᵀR = 0 and the other C−1 rows keep RᵀQᵀQR = RᵀR (exact; O(C²) per
    sample, no eigh; vᵀv = 2 + 2a_C ≥ 2, so no cancellation). The rank of the Hessian is C−1.
    """
    rows = fisher_factors(loss, out, y, FisherType.EXACT, 1, None)  # (b, C, C)
    v = loss.probs(out).sqrt()  # (b, C) a
    v[:, -1] += 1.0  # v = a + e_C
    w = torch.einsum("bc,bcn->bn", v, rows) * (2.0 / (v * v).sum(1, keepdim=True))  # (b, C) 2vᵀR / vᵀv
    return (rows - v[:, :, None] * w[:, None, :])[:, :-1]  # (b, C−1, C): QR without its zero row


def sketched(rows: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    """m sketch rows per sample, Ũ_i = S_i U_i / √m with Rademacher S_i (m, r): E[Ũ_iᵀ Ũ_i] = U_iᵀ U_i,
    since E[s sᵀ] = I. An unbiased approximation (Hutchinson-type sketch) that carries m rows instead of r."""
    b, r = rows.shape[:2]
    signs = rademacher((b, m, r), rows, generator)
    return torch.bmm(signs, rows.flatten(2)).view(b, m, *rows.shape[2:]) / m**0.5


def _sample_factors_output(treat: Residual) -> OutputBuilder:
    """Per-sample output Hessians H_i as signed factors (step nets), Pos-Eig'd per sample by ``treat``
    (DROP: none, GN; ABS: |λ|, PCH-1; CLIP: max(λ, 0), PCH-2); with ``sketch``, ``mc_samples``
    sketch rows of them (PSD H_i only: not GN on a nonconvex loss)."""

    def build(loss: Loss, out: Tensor, y: Tensor, opts: CurvatureOptions, gen) -> Message:
        if loss.kind is LossKind.CROSS_ENTROPY:  # H_i = diag(p) − ppᵀ, PSD: Pos-Eig changes nothing
            rows, signs = ce_hessian_rows(loss, out, y), None
        else:
            h = loss.hessian(out, y)  # (b, C, C)
            lam, q = torch.linalg.eigh(0.5 * (h + h.transpose(1, 2)))
            lam = treat.apply(lam)  # (b, C)
            rows = (q * lam.abs().sqrt()[:, None, :]).transpose(1, 2)  # (b, C, C): rows √|λ_c| q_cᵀ
            signs = torch.sign(lam) if treat is Residual.DROP else None
        if not opts.sketch:
            return SampleFactors(rows, signs)
        if signs is not None and not loss.convex:  # a convex loss: signs +1 up to round-off
            raise ValueError(f"curvature.sketch=true needs PSD output Hessians; kind=gn on the {loss.kind.value} "
                             "loss has negative eigenvalues: use kind=pch1 or pch2, or curvature.sketch=false")
        return SampleFactors(sketched(rows, opts.mc_samples, gen))

    return build


def _fisher_sample_output(loss: Loss, out: Tensor, y: Tensor, opts: CurvatureOptions, gen) -> Message:
    if opts.fisher is FisherType.EXACT and loss.kind is LossKind.CROSS_ENTROPY:  # its C rows have rank C−1
        return SampleFactors(ce_hessian_rows(loss, out, y))  # the same blocks, one row fewer to carry back
    return SampleFactors(fisher_factors(loss, out, y, opts.fisher, opts.mc_samples, gen))


class Batching(str, Enum):
    """How the samples of a batch travel through the recursion (fixed by the output block)."""

    MEAN = "mean"  # one batch-mean message: needs the whole batch at once (EA, Eq. 6)
    FACTORS = "factors"  # per-sample factors: small, chunked only on request
    BLOCKS = "blocks"  # per-sample (n, n) blocks: chunked to bound memory


@dataclass(frozen=True)
class KindPolicy:
    """One curvature kind: its output block and its treatment of the residual term."""

    output: OutputBuilder
    residual: Residual
    batching: Batching


KINDS: dict[Kind, KindPolicy] = {
    Kind.EXACT: KindPolicy(_exact_output, Residual.KEEP, Batching.BLOCKS),
    Kind.GN: KindPolicy(_mean_output, Residual.DROP, Batching.MEAN),
    Kind.PCH1: KindPolicy(_pos_eig_output, Residual.ABS, Batching.MEAN),
    Kind.PCH: KindPolicy(_pos_eig_output, Residual.ABS, Batching.MEAN),
    Kind.PCH2: KindPolicy(_pos_eig_output, Residual.CLIP, Batching.MEAN),
    Kind.FISHER: KindPolicy(_fisher_output, Residual.DROP, Batching.FACTORS),
}

# Step nets (convolutions): per-sample Jacobians all the way for every kind (module docstring).
STEP_KINDS: dict[Kind, KindPolicy] = {
    Kind.EXACT: KINDS[Kind.EXACT],
    Kind.GN: KindPolicy(_sample_factors_output(Residual.DROP), Residual.DROP, Batching.FACTORS),
    Kind.PCH1: KindPolicy(_sample_factors_output(Residual.ABS), Residual.ABS, Batching.FACTORS),
    Kind.PCH: KindPolicy(_sample_factors_output(Residual.ABS), Residual.ABS, Batching.FACTORS),
    Kind.PCH2: KindPolicy(_sample_factors_output(Residual.CLIP), Residual.CLIP, Batching.FACTORS),
    Kind.FISHER: KindPolicy(_fisher_sample_output, Residual.DROP, Batching.FACTORS),
}

# Not a public kind: the EA recursion of the exact Hessian (Eq. 6 with the residual kept). It
# is what PCH-2 equals when every residual is non-negative, and what tests compare against.
EA_EXACT = KindPolicy(_mean_output, Residual.KEEP, Batching.MEAN)


def policy(kind: Kind, steps: bool = False) -> KindPolicy:
    """The policy of a kind (``Kind`` already validated by ``CurvatureOptions``); ``steps``: on a step net."""
    return STEP_KINDS[kind] if steps else KINDS[kind]
