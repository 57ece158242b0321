"""Curvature messages: what the backward recursion passes from layer t to layer t−1.

A message stands for the curvature with respect to the pre-activation ``z^t`` of one layer
(equal to the bias block, since ∂z/∂b = I). The recursion only ever asks a message to

* ``pull_back(rule, module, dphi)``: the first ("Gauss-Newton") term of Eq. (4b) of Chen et al.,
  diag(h')·Jᵀ·H·J·diag(h') with the layer's Jacobian J (W for ``nn.Linear``), under the
  message's own batch treatment; the layer's :class:`~curvlab.modules.base.LayerRule` does the
  product (a message only picks the verb for its batch treatment);
* ``add_residual(r, residual)``: the second, diagonal term diag(h'' ⊙ Wᵀ∇_{b^t}ξ) of Eq. (4b),
  passed through the kind's residual policy;
* ``total(scale)``: ``scale`` times the sum of the per-sample blocks it stands for; with
  ``scale`` = 1/batch this is the message's share of the batch mean, so that chunks of a batch
  can be added up.

Three message types cover every kind:

``PerSampleBlocks``  one (n, n) block per sample: Eq. (4b) exactly (``exact``).
``MeanBlock``        the batch-mean block with averaged Jacobians: Eq. (6)/(8b) of Chen et al.
                     (per-sample Jacobians) or Eq. (7) of Dangel & Hennig (mean Jacobians).
``SampleFactors``    per-sample factors U_i (b, r, *shape) with row signs s_i (None: all +1), block
                     U_iᵀ diag(s_i) U_i: KFAC's E[g gᵀ] (``fisher``, the rows are gradients) and, on the
                     step nets (convolutions), every kind with each sample's own Jacobians all the way
                     (BackPACK's ``curvmatprod`` GGNMP/PCHMP quantity, HBP Sec. 3).

On an MLP a factor message also carries the back-propagated gradient (``carry``): its rows and
g's share one buffer, so that one GEMM pulls both back; the recursion then reads g from it.
On a step net the recursion also asks ``through(blocks_fn, factors_fn)`` (a step's pull-back:
the message applies the verb for its representation), ``scale_diag(d)`` (an element-wise step,
diag(d_i) on both sides) and, at a conv layer, ``conv_grams`` (its reduce and expand G).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from curvlab.curvature.options import JacobianAverage
from curvlab.symmetric import symmetric_product, symmetrized

if TYPE_CHECKING:
    from curvlab.modules.base import LayerRule
    from curvlab.modules.conv import Conv2dRule

__all__ = ["Residual", "Message", "PerSampleBlocks", "MeanBlock", "SampleFactors"]

TensorMap = Callable[[Tensor], Tensor]
# Residual rows of a smooth activation in factor form: one row per unit and sample, b·n² elements.
RESIDUAL_ROW_BUDGET = 2**26

Sketch = tuple[int, "torch.Generator | None"]  # (rows per sample m, generator): ``curvature.sketch``


def rademacher(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Independent ±1 entries of ``like``'s dtype and device, drawn on the generator's device."""
    dev = like.device if generator is None else generator.device
    return (torch.randint(0, 2, shape, generator=generator, device=dev).to(like.device, like.dtype) * 2 - 1)


class Residual(str, Enum):
    """How a kind treats the activation's second-order (residual) diagonal term of Eq. (4b)."""

    KEEP = "keep"  # exact Hessian
    DROP = "drop"  # Gauss-Newton, Fisher: module second-order information neglected
    ABS = "abs"  # PCH-1: Pos-Eig with γ = −1, |·| (Eq. 8b of Chen et al.)
    CLIP = "clip"  # PCH-2: Pos-Eig with γ = 0, max(·, 0)

    def apply(self, r: Tensor) -> Tensor:
        """Pos-Eig of diag(r) is element-wise on r, because the matrix is diagonal."""
        if self is Residual.ABS:
            return r.abs()
        if self is Residual.CLIP:
            return r.clamp_min(0)
        return r


class Message(ABC):
    """Interface of a curvature message (see the module docstring). The recursion consumes a
    message: ``add_residual`` may update it in place."""

    count: int  # number of samples this message stands for
    grad: Tensor | None = None  # (b, n) ∇_z ξ_i when the message carries the gradient (``carry``)

    def carry(self, g: Tensor) -> Message:
        """This message, carrying the per-sample gradients g (b, n) through its pull-backs where
        that saves a product (factor messages); the others leave g to the recursion."""
        return self

    @abstractmethod
    def pull_back(
        self, rule: LayerRule, module: nn.Module, dphi: Tensor, average: JacobianAverage, per_sample: bool
    ) -> Message:
        """Message for z^{t−1} from the one for z^t, without the residual term.

        Args:
            rule: the rule of layer t, whose Jacobian the message is pulled back through.
            module: layer t (e.g. the ``nn.Linear`` with weight W^t (n_t, n_{t−1})).
            dphi: (b, n_{t−1}) activation derivatives h^{(t−1)'}.
            average: how a batch-mean message averages the Jacobians.
            per_sample: whether the caller still needs per-sample blocks afterwards (the first
                layer's block is only summed, which is one large GEMM).
        """

    @abstractmethod
    def add_residual(self, r: Tensor, residual: Residual, sketch: Sketch | None = None) -> Message:
        """Add diag(policy(r)); ``r`` (b, n) holds h'' ⊙ (Wᵀ ∇_{b^t} ξ_i) per sample. ``sketch``
        (``curvature.sketch``) lets a factor message carry it as sketch rows; blocks add it exactly."""

    @abstractmethod
    def total(self, scale: float) -> Tensor:
        """``scale`` · Σ_i H_i over the samples of this message, (n, n), exactly symmetric."""


@dataclass
class MeanBlock(Message):
    """The batch-mean block H̄ (n, n) of ``count`` samples."""

    block: Tensor  # (n, n), exactly symmetric (the output builders and pull-backs make it so)
    count: int

    def pull_back(
        self, rule: LayerRule, module: nn.Module, dphi: Tensor, average: JacobianAverage, per_sample: bool
    ) -> MeanBlock:
        # Eq. (6) of Chen et al. or Eq. (7) of Dangel & Hennig: (n_{t-1}, n_{t-1})
        return MeanBlock(rule.jac_t_mean(module, self.block, dphi, average), self.count)

    def add_residual(self, r: Tensor, residual: Residual, sketch: Sketch | None = None) -> MeanBlock:
        # Eq. (6)/(8b): Pos-Eig acts on diag(E_i[h'' ⊙ Wᵀ∇ξ_i]), i.e. after the batch mean. The
        # mean is of the per-sample products under either Jacobian average (the option only
        # concerns the Gauss-Newton term).
        if residual is Residual.DROP:
            return self
        self.block.diagonal().add_(residual.apply(r.mean(0)))  # in place: the message owns its block
        return self

    def total(self, scale: float) -> Tensor:
        weight = scale * self.count
        return self.block if weight == 1 else self.block * weight


@dataclass
class PerSampleBlocks(Message):
    """Per-sample blocks H_i, (b, n, n): the exact recursion Eq. (4b), batched over samples."""

    blocks: Tensor  # (b, n, n)

    @property
    def count(self) -> int:  # type: ignore[override]
        return self.blocks.shape[0]

    def pull_back(
        self, rule: LayerRule, module: nn.Module, dphi: Tensor, average: JacobianAverage, per_sample: bool
    ) -> Message:
        # F_iᵀ H_i F_i per sample (Eq. 4b), or only their mean when the caller sums them anyway
        pulled = rule.jac_t_blocks(module, self.blocks, dphi, per_sample)
        return PerSampleBlocks(pulled) if per_sample else MeanBlock(pulled, self.count)

    def add_residual(self, r: Tensor, residual: Residual, sketch: Sketch | None = None) -> PerSampleBlocks:
        if residual is Residual.DROP:
            return self
        if residual is not Residual.KEEP:
            raise ValueError(f"per-sample blocks support residual keep/drop, not {residual.value!r}")
        # In place: a message owns its blocks and is consumed by the recursion.
        self.blocks.diagonal(dim1=1, dim2=2).add_(r.flatten(1))  # (b, n), maps flattened
        return self

    def through(self, blocks_fn: TensorMap, factors_fn: TensorMap) -> PerSampleBlocks:
        """A step net's pull-back: J_iᵀ H_i J_i by the step's block verb (b, n_out, n_out) → (b, n_in, n_in)."""
        return PerSampleBlocks(blocks_fn(self.blocks))

    def scale_diag(self, d: Tensor) -> PerSampleBlocks:
        """diag(d_i) H_i diag(d_i) of an element-wise step, d (b, *shape) (Eq. 4b, first term)."""
        d = d.flatten(1)
        return PerSampleBlocks(self.blocks * d[:, :, None] * d[:, None, :])

    def conv_grams(self, rule: Conv2dRule, module: nn.Module, scale: float) -> tuple[Tensor, Tensor]:
        """A conv layer's (bias block = reduce G, expand G), exact sums over the positions."""
        return rule.bias_block(module, self.blocks, scale), rule.position_block(module, self.blocks, scale)

    def out_matvec(self) -> TensorMap:
        """v_i ↦ H_i v_i on per-sample maps or vectors (b, *shape), for matrix-free block products."""
        blocks = self.blocks
        return lambda v: torch.bmm(blocks, v.flatten(1)[:, :, None]).view_as(v)

    def total(self, scale: float) -> Tensor:
        return symmetrized(self.blocks.sum(0), scale)  # the per-sample products round apart

    def weight_total(self, rule: LayerRule, h: Tensor, scale: float) -> Tensor:
        """scale · Σ_i of the exact weight blocks of the layer with inputs h (Eq. 4c for ``nn.Linear``)."""
        return rule.weight_block(self.blocks, h, scale)


@dataclass
class SampleFactors(Message):
    """Per-sample signed factors: U_i (b, r, *shape) with row signs s_i (b, r) (None: all +1), standing
    for the blocks H_i = U_iᵀ diag(s_i) U_i over the flattened shape.

    The message of the Fisher (KFAC's rows, Uᵀ U = E[g gᵀ]) and, on a step net, of every factor kind
    (BackPACK's ``curvmatprod``, HBP Sec. 3): the pull-back through a linear step is J's transposed
    product on each row, exact for the per-sample chain E_i[J_iᵀ H_i J_i], at the cost of r gradient
    back-propagations instead of a sandwich of n × n matrices; an indefinite output block (GN of the
    nonconvex loss, Eq. 14) keeps its negative rows as signs; a residual adds one row per unit
    (``add_residual``).

    On an MLP the message may carry the gradient (``carry``): ``rows`` (b r + b, n) then holds U's rows
    followed by g's, ``factors`` and ``grad`` are views of it, and one GEMM pulls all of them back.
    The empirical Fisher's factor is g itself (``of_gradient``): ``rows`` = g, one row per sample.
    """

    factors: Tensor  # (b, r, *shape)
    signs: Tensor | None = None  # (b, r) ±1
    rows: Tensor | None = None  # (b r [+ b], n): the factor rows, then g's (MLP path; see the class docstring)

    @classmethod
    def of_gradient(cls, g: Tensor) -> SampleFactors:
        """The empirical Fisher's factor U_i = ∇_z ξ_iᵀ (b, 1, n): the carried gradient is its one row."""
        return cls(g[:, None, :], rows=g)

    @property
    def count(self) -> int:  # type: ignore[override]
        return self.factors.shape[0]

    @property
    def grad(self) -> Tensor | None:  # type: ignore[override]
        """The carried ∇_z ξ_i (b, n): the last b rows of ``rows``, or None."""
        return None if self.rows is None else self.rows[self.rows.shape[0] - self.count :]

    def carry(self, g: Tensor) -> SampleFactors:
        """U's rows and g (b, n) stacked in one buffer (b r + b, n); kept if it carries g already."""
        if self.rows is not None:
            return self
        b, r = self.factors.shape[:2]
        rows = torch.cat([self.factors.reshape(b * r, -1), g])
        return SampleFactors(rows[: b * r].view_as(self.factors), self.signs, rows)

    def pull_back(
        self, rule: LayerRule, module: nn.Module, dphi: Tensor, average: JacobianAverage, per_sample: bool
    ) -> SampleFactors:
        """U_i F_i for every row (the per-sample chain), and with ``rows`` the gradient's step too."""
        if self.rows is None:
            return SampleFactors(rule.jac_t_factors(module, self.factors, dphi), self.signs)
        b, r = self.factors.shape[:2]
        rows = rule.jac_t_vec(module, self.rows)  # (b r [+ b], n_in): one GEMM for U's rows and g's
        factors = rows[: b * r].view(b, r, -1).mul_(dphi[:, None, :])  # U_i W diag(d_i), in place
        if rows.shape[0] > b * r:  # g's own rows (the empirical Fisher's are the factor rows)
            rows[b * r :].mul_(dphi)  # ∇_{z^{t−1}} ξ_i = d_i ⊙ Wᵀ ∇_{z^t} ξ_i
        return SampleFactors(factors, self.signs, rows)

    def through(self, blocks_fn: TensorMap, factors_fn: TensorMap) -> SampleFactors:
        """A step net's pull-back: U_i J_i by the step's factor verb (b, r, *out_shape) → (b, r, *in_shape)."""
        return SampleFactors(factors_fn(self.factors), self.signs)

    def scale_diag(self, d: Tensor) -> SampleFactors:
        """U_i diag(d_i) of an element-wise step, d (b, *shape)."""
        return SampleFactors(self.factors * d[:, None], self.signs)

    def add_residual(self, r: Tensor, residual: Residual, sketch: Sketch | None = None) -> SampleFactors:
        """Add diag(policy(r_i)) per sample (BackPACK's PCHMP residual) as rows √|ρ_j| e_j, signed by ρ_j.

        With ``sketch`` = (m, generator) and a PSD policy (PCH-1's |ρ|, PCH-2's max(ρ, 0)) the n rows become m
        Rademacher rows s_k ⊙ √ρ / √m (s_k ∈ {±1}ⁿ): Σ_k row_kᵀ row_k has diagonal ρ exactly and zero-mean
        off-diagonal entries, so the term is unbiased (as ``kinds.sketched``'s rows) at m rows instead of n.
        """
        if residual is Residual.DROP:
            return self
        if self.rows is not None:
            raise ValueError("a factor message that carries the gradient takes no residual rows")
        b, n = r.shape[0], r[0].numel()
        rho = residual.apply(r).flatten(1)  # (b, n)
        if sketch is not None and residual is not Residual.KEEP:
            m, generator = sketch
            rows = rademacher((b, m, n), rho, generator).mul_(rho.sqrt()[:, None] / m**0.5)  # (b, m, n)
            signs = None if self.signs is None else torch.cat([self.signs, self.signs.new_ones(b, m)], 1)
            return SampleFactors(torch.cat([self.factors, rows.view(b, m, *self.factors.shape[2:])], 1), signs)
        if b * n * n > RESIDUAL_ROW_BUDGET:
            raise ValueError(
                f"the activation's residual term on {n} units would add {n} factor rows per sample "
                f"({b * n * n:,} elements > {RESIDUAL_ROW_BUDGET:,}); use curvature.sketch=true (mc_samples "
                "sketch rows, unbiased), ReLU (no residual), kind=fisher/gn, or a smaller batch or net"
            )
        rows = torch.diag_embed(rho.abs().sqrt()).view(b, n, *self.factors.shape[2:])  # (b, n, *shape)
        signs = self.signs
        if residual is Residual.KEEP or signs is not None:
            old = signs if signs is not None else self.factors.new_ones(self.factors.shape[:2])
            signs = torch.cat([old, torch.sign(rho) if residual is Residual.KEEP else torch.ones_like(rho)], 1)
        return SampleFactors(torch.cat([self.factors, rows], 1), signs)

    def total(self, scale: float) -> Tensor:
        u = self.factors.flatten(2)  # (b, r, n)
        flat = u.reshape(-1, u.shape[2])  # (b r, n)
        if self.signs is None:
            return symmetric_product(flat, flat, scale=scale)
        return symmetrized((flat * self.signs.reshape(-1, 1)).T @ flat, scale)

    def conv_grams(self, rule: Conv2dRule, module: nn.Module, scale: float) -> tuple[Tensor, Tensor]:
        """A conv layer's (bias block = reduce G, expand G) of the factors (``Conv2dRule.out_grams``)."""
        return rule.out_grams(self.factors, self.signs, scale)

    def out_matvec(self) -> TensorMap:
        """v_i ↦ U_iᵀ diag(s_i) U_i v_i on (b, *shape), never forming H_i (``factors_matvec``)."""
        from curvlab.modules.conv import factors_matvec  # the rule file owns the product

        return factors_matvec(self.factors, self.signs)
