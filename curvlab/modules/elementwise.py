"""The rules of the element-wise activations h = σ(z) (HBP Table 1, "element-wise activation").

Jacobian ∂h/∂z = diag σ'(z); second-order residual Σ_c (∂²h_c/∂z²) ∂ξ/∂h_c = diag(σ'' ⊙ ∂ξ/∂h),
the second, diagonal term of Eq. (4b) of Chen et al. A kind treats the residual by its own
policy (keep, drop, |·|, max(·, 0): ``curvlab.curvature.messages.Residual``). σ itself is the
user's module, so the forward pass is theirs; this file gives σ' and σ'' from the module's own
hyper-parameters, and consecutive element-wise modules compose by the chain rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from curvlab.modules.base import ModuleRule, Role, register

__all__ = ["ActivationFns", "ElementwiseRule", "ELEMENTWISE", "SIGMOID", "TANH", "RELU", "IDENTITY_FNS", "compose"]


@dataclass(frozen=True)
class ActivationFns:
    """An element-wise map σ with its first and second derivative, bound to one place in the net.

    ``both`` optionally gives (σ', σ'') in one go, sharing their work (σ(z) for sigmoid and
    tanh: 3 passes over z instead of 9, which the recursion repeats on every layer).
    ``df_out(h, out=None)`` and ``d2f_out(h, σ')`` optionally give them from the output h = σ(z), which
    the forward pass has already made: no σ to recompute (sigmoid: one pass for σ', no exp); σ' into
    ``out`` when given (a kept buffer of the recursion).
    They are the same formulas on the same σ(z), so both routes agree bit for bit.
    ``residual_out(g, h, out)`` optionally gives the residual σ'' ⊙ u straight from g = σ' ⊙ u and h
    (sigmoid: σ'' = σ'(1 − 2h), tanh: σ'' = −2hσ', the formulas of ``d2f_out``): one pass, optionally
    into ``out``, in place of forming σ'' and then σ'' ⊙ u. Only the association of the product
    moves ((1 − 2h)(σ'u) for (σ'(1 − 2h))u): in float64 the blocks move by ≤ 5e-16 of their size.
    """

    f: Callable[[Tensor], Tensor]
    df: Callable[[Tensor], Tensor]
    d2f: Callable[[Tensor], Tensor]
    both: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None
    df_out: Callable[..., Tensor] | None = None  # (h, out=None) -> σ'(z)
    d2f_out: Callable[[Tensor, Tensor], Tensor] | None = None
    residual_out: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None

    def derivatives(self, z: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(σ'(z), σ''(z)); from the output ``h`` = σ(z) when given and σ allows it."""
        if h is not None and self.df_out is not None and self.d2f_out is not None:
            d1 = self.df_out(h)
            return d1, self.d2f_out(h, d1)
        return self.both(z) if self.both is not None else (self.df(z), self.d2f(z))

    def first(self, z: Tensor, h: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """σ'(z) alone (Gauss-Newton and Fisher passes); from ``h`` = σ(z) when given and σ allows it,
        then into ``out`` if given (σ' from z is a new tensor)."""
        return self.df_out(h, out) if h is not None and self.df_out is not None else self.df(z)

    @staticmethod
    def jac_t_vec(d1: Tensor, g: Tensor, out: Tensor | None = None) -> Tensor:
        """∂ξ/∂z = σ'(z) ⊙ ∂ξ/∂h: the per-sample gradients (b, n) through diag σ' (σ' = ``d1``),
        optionally into ``out`` (``g`` itself included)."""
        return torch.mul(g, d1, out=out)

    @staticmethod
    def residual(d2: Tensor, g: Tensor) -> Tensor:
        """The diagonal of the residual of Eq. (4b), σ''(z) ⊙ ∂ξ/∂h per sample (b, n) (σ'' = ``d2``)."""
        return g * d2


def _sigmoid_d1_out(s: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.addcmul(s, s, s, value=-1, out=out)  # s (1 − s) from s = σ(z), one pass


def _sigmoid_d2_out(s: Tensor, d1: Tensor) -> Tensor:
    return torch.addcmul(d1, d1, s, value=-2)  # s (1 − s)(1 − 2s)


def _sigmoid_residual_out(g: Tensor, s: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.addcmul(g, g, s, value=-2, out=out)  # σ'' ⊙ u = (1 − 2s) ⊙ g with g = s(1 − s) ⊙ u


def _sigmoid_d1(z: Tensor) -> Tensor:
    return _sigmoid_d1_out(torch.sigmoid(z))


def _sigmoid_d2(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s) * (1 - 2 * s)


def _sigmoid_both(z: Tensor) -> tuple[Tensor, Tensor]:
    s = torch.sigmoid(z)
    d1 = _sigmoid_d1_out(s)
    return d1, _sigmoid_d2_out(s, d1)


def _tanh_d1_out(t: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.addcmul(t.new_ones(()), t, t, value=-1, out=out)  # 1 − t² from t = tanh(z), one pass


def _tanh_d2_out(t: Tensor, d1: Tensor) -> Tensor:
    return torch.mul(t, d1).mul_(-2)  # −2 t (1 − t²)


def _tanh_residual_out(g: Tensor, t: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.mul(g, t, out=out).mul_(-2)  # σ'' ⊙ u = −2t ⊙ g with g = (1 − t²) ⊙ u; ×(−2) is exact


def _tanh_both(z: Tensor) -> tuple[Tensor, Tensor]:
    t = torch.tanh(z)
    d1 = _tanh_d1_out(t)
    return d1, _tanh_d2_out(t, d1)


def _tanh_d1(z: Tensor) -> Tensor:
    return _tanh_d1_out(torch.tanh(z))


def _tanh_d2(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return -2 * t * (1 - t**2)


def _step(v: Tensor) -> Tensor:
    return (v > 0).to(v.dtype)  # ReLU' (0 at 0); relu(z) > 0 exactly where z > 0


def _relu_d1_out(h: Tensor, out: Tensor | None = None) -> Tensor:
    # ReLU' from h = relu(z) ≥ 0: sign(h) is 1 where z > 0 and +0 elsewhere (also for h = −0), the
    # step bit for bit in one pass (≈ 3 µs against 30 µs for the compare and the cast, 128 × 128)
    return torch.sign(h, out=out)


def _ones_out(h: Tensor, out: Tensor | None = None) -> Tensor:
    return torch.ones_like(h) if out is None else out.fill_(1)  # the identity's σ' (Linear → Linear)


def _zeros(h: Tensor, d1: Tensor) -> Tensor:
    return torch.zeros_like(h)


SIGMOID = ActivationFns(torch.sigmoid, _sigmoid_d1, _sigmoid_d2, _sigmoid_both, _sigmoid_d1_out, _sigmoid_d2_out,
                        _sigmoid_residual_out)
TANH = ActivationFns(torch.tanh, _tanh_d1, _tanh_d2, _tanh_both, _tanh_d1_out, _tanh_d2_out, _tanh_residual_out)
# ReLU's second derivative is zero almost everywhere; its first is the step (0 at 0).
RELU = ActivationFns(torch.relu, _step, torch.zeros_like, None, _relu_d1_out, _zeros)
IDENTITY_FNS = ActivationFns(lambda z: z, torch.ones_like, torch.zeros_like, None, _ones_out, _zeros)  # Linear → Linear


def _leaky_relu(m: nn.LeakyReLU) -> ActivationFns:
    s = m.negative_slope
    return ActivationFns(m, lambda z: torch.where(z > 0, torch.ones_like(z), torch.full_like(z, s)), torch.zeros_like)


def _elu(m: nn.ELU) -> ActivationFns:
    a = m.alpha  # σ = α(eᶻ − 1) for z ≤ 0: σ' = σ'' = α eᶻ there (torch's convention at 0)
    return ActivationFns(
        m,
        lambda z: torch.where(z > 0, torch.ones_like(z), a * torch.exp(z)),
        lambda z: torch.where(z > 0, torch.zeros_like(z), a * torch.exp(z)),
    )


def _softplus(m: nn.Softplus) -> ActivationFns:
    beta, thr = m.beta, m.threshold  # linear where β z > threshold, as torch computes it

    def d1(z: Tensor) -> Tensor:
        return torch.where(beta * z > thr, torch.ones_like(z), torch.sigmoid(beta * z))

    def d2(z: Tensor) -> Tensor:
        s = torch.sigmoid(beta * z)
        return torch.where(beta * z > thr, torch.zeros_like(z), beta * s * (1 - s))

    return ActivationFns(m, d1, d2)


def _silu_d1(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)  # σ = z s(z)
    return s * (1 + z * (1 - s))


def _silu_d2(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


def _normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _gelu_d1(z: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * _normal_pdf(z)  # Φ + z φ


def _gelu_d2(z: Tensor) -> Tensor:
    return _normal_pdf(z) * (2 - z * z)  # 2φ + z φ' with φ' = −z φ


def _gelu(m: nn.GELU) -> ActivationFns:
    if m.approximate != "none":
        raise ValueError(
            f"nn.GELU(approximate={m.approximate!r}) is not supported; use nn.GELU() (the exact erf form)"
        )
    return ActivationFns(m, _gelu_d1, _gelu_d2)


def _fixed(fns: ActivationFns) -> Callable[[nn.Module], ActivationFns]:
    return lambda m: replace(fns, f=m)  # σ is the module: the user's forward


# σ' and σ'' of each element-wise activation from the module's own hyper-parameters.
ELEMENTWISE: dict[type[nn.Module], Callable[[nn.Module], ActivationFns]] = {
    nn.Sigmoid: _fixed(SIGMOID),
    nn.Tanh: _fixed(TANH),
    nn.ReLU: _fixed(RELU),
    nn.LeakyReLU: _leaky_relu,
    nn.ELU: _elu,
    nn.Softplus: _softplus,
    nn.SiLU: lambda m: ActivationFns(m, _silu_d1, _silu_d2),
    nn.GELU: _gelu,
}


def compose(inner: ActivationFns, outer: ActivationFns) -> ActivationFns:
    """outer ∘ inner by the chain rule: (g∘f)' = g'(f) f', (g∘f)'' = g''(f) f'² + g'(f) f''."""

    def d1(z: Tensor) -> Tensor:
        return outer.df(inner.f(z)) * inner.df(z)

    def d2(z: Tensor) -> Tensor:
        u, d = inner.f(z), inner.df(z)
        return outer.d2f(u) * d * d + outer.df(u) * inner.d2f(z)

    return ActivationFns(lambda z: outer.f(inner.f(z)), d1, d2)


@dataclass(frozen=True)
class ElementwiseRule(ModuleRule):
    """One element-wise module type; :meth:`bind` gives σ, σ', σ'' of an instance."""

    derivatives: Callable[[nn.Module], ActivationFns]
    role: ClassVar[Role] = Role.ELEMENTWISE

    def check(self, m: nn.Module) -> None:
        self.derivatives(m)  # raises for unsupported settings (GELU's tanh form)

    def bind(self, m: nn.Module) -> ActivationFns:
        """σ of this instance with its derivatives."""
        return self.derivatives(m)


for _cls, _fn in ELEMENTWISE.items():
    register(_cls, ElementwiseRule(_fn))
