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
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch
from torch import Tensor

from curvlab.curvature.messages import MeanBlock, Message, PerSampleBlocks, PerSampleFactors, Residual
from curvlab.curvature.options import CurvatureOptions, FisherType, Kind
from curvlab.losses import Loss
from curvlab.symmetric import symmetrized

__all__ = ["Batching", "KindPolicy", "KINDS", "EA_EXACT", "policy", "pos_eig", "fisher_factors"]

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
    return MeanBlock(symmetrized(loss.hessian(out, y).mean(0)), out.shape[0])


def _pos_eig_output(loss: Loss, out: Tensor, y: Tensor, opts: CurvatureOptions, gen) -> Message:
    return MeanBlock(pos_eig(loss.hessian(out, y).mean(0)), out.shape[0])  # Eq. (8a)


def _fisher_output(loss: Loss, out: Tensor, y: Tensor, opts: CurvatureOptions, gen) -> Message:
    return PerSampleFactors(fisher_factors(loss, out, y, opts.fisher, opts.mc_samples, gen))


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

# Not a public kind: the EA recursion of the exact Hessian (Eq. 6 with the residual kept). It
# is what PCH-2 equals when every residual is non-negative, and what tests compare against.
EA_EXACT = KindPolicy(_mean_output, Residual.KEEP, Batching.MEAN)


def policy(kind: Kind) -> KindPolicy:
    """The policy of a kind (``Kind`` already validated by ``CurvatureOptions``)."""
    return KINDS[kind]
