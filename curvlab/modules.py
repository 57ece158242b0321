"""Module rules: any supported feed-forward ``nn.Sequential`` as a chain of linear layers.

Hessian backpropagation is modular (Dangel & Hennig, Sections 3–3.2, Table 1, Supplement B–C):
every module type has a small local rule, and the recursion of EA-CG, Eq. (4b) of Chen et al.,
is the composition of two of them, a linear layer (Jacobian ``W``, no second-order term) and
an element-wise activation (Jacobian ``diag σ'``, residual ``diag(σ'' ⊙ ∂ξ/∂h)``). This module
holds the table of rules (:data:`RULES`) and reduces a net to its canonical :class:`Chain`:
k ``nn.Linear`` layers and, between consecutive ones, the composition of the element-wise
modules there (Identity when none, e.g. Linear → Linear). The curvature recursion, the
solvers and the exact inverse read only this view, so they run on the composed fast path for
every supported net; :class:`curvlab.MLP` keeps its own fused forward pass.

Supported: ``nn.Linear`` (with or without bias), the element-wise activations of
:data:`ELEMENTWISE`, ``nn.Identity``, ``nn.Flatten`` (keeping the batch dimension),
``nn.Dropout`` in eval mode (the identity; in training mode its random mask would make the
curvature random, so it is refused), and nested ``nn.Sequential``. Modules before the first
Linear only transform the input; after the last Linear only identity-like modules may follow,
because the losses take the logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Union

import torch
from torch import Tensor, nn

from curvlab.nets import ACTIVATIONS, MLP, Activation, ActivationFns, ForwardCache

__all__ = ["Role", "ModuleRule", "RULES", "ELEMENTWISE", "Chain", "chain", "leaves", "Net", "supported_modules"]

Net = Union[MLP, nn.Sequential]  # what every entry point takes


class Role(str, Enum):
    """What a module is in the canonical chain."""

    LINEAR = "linear"  # z = W h + b: Jacobian W, no residual term
    ELEMENTWISE = "elementwise"  # h = σ(z): Jacobian diag σ', residual diag(σ'' ⊙ ∂ξ/∂h)
    IDENTITY = "identity"  # passes a (B, n) tensor through unchanged


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


def _gelu_d1(z: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * _normal_pdf(z)  # Φ + z φ


def _gelu_d2(z: Tensor) -> Tensor:
    return _normal_pdf(z) * (2 - z * z)  # 2φ + z φ' with φ' = −z φ


def _normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _gelu(m: nn.GELU) -> ActivationFns:
    if m.approximate != "none":
        raise ValueError(
            f"nn.GELU(approximate={m.approximate!r}) is not supported; use nn.GELU() (the exact erf form)"
        )
    return ActivationFns(m, _gelu_d1, _gelu_d2)


def _fixed(which: Activation) -> Callable[[nn.Module], ActivationFns]:
    fns = ACTIVATIONS[which]
    return lambda m: ActivationFns(m, fns.df, fns.d2f, fns.both)


def _identity_fns() -> ActivationFns:
    return ActivationFns(lambda z: z, torch.ones_like, torch.zeros_like)


# σ' and σ'' of each element-wise activation from the module's own hyper-parameters; σ itself is
# the module, so the forward pass is the user's.
ELEMENTWISE: dict[type[nn.Module], Callable[[nn.Module], ActivationFns]] = {
    nn.Sigmoid: _fixed(Activation.SIGMOID),
    nn.Tanh: _fixed(Activation.TANH),
    nn.ReLU: _fixed(Activation.RELU),
    nn.LeakyReLU: _leaky_relu,
    nn.ELU: _elu,
    nn.Softplus: _softplus,
    nn.SiLU: lambda m: ActivationFns(m, _silu_d1, _silu_d2),
    nn.GELU: _gelu,
}


def _check_dropout(m: nn.Dropout) -> None:
    if m.training and m.p > 0:
        raise ValueError(
            f"{m!r} is in training mode: its random mask would make the curvature random; "
            "call net.eval() (Dropout is then the identity) or remove it"
        )


def _check_flatten(m: nn.Flatten) -> None:
    if m.start_dim != 1:
        raise ValueError(f"{m!r}: only nn.Flatten(start_dim=1) is supported (it keeps the batch dimension)")


@dataclass(frozen=True)
class ModuleRule:
    """The local rule of one module type (cf. BackPACK's per-module derivatives).

    Attributes:
        role: its place in the chain.
        derivatives: for element-wise modules, ``module ↦ (σ, σ', σ'')``.
        check: raises with a message when this module instance is not supported.
    """

    role: Role
    derivatives: Callable[[nn.Module], ActivationFns] | None = None
    check: Callable[[nn.Module], None] | None = None


RULES: dict[type[nn.Module], ModuleRule] = {
    nn.Linear: ModuleRule(Role.LINEAR),
    **{cls: ModuleRule(Role.ELEMENTWISE, derivatives=fn) for cls, fn in ELEMENTWISE.items()},
    nn.Identity: ModuleRule(Role.IDENTITY),
    nn.Flatten: ModuleRule(Role.IDENTITY, check=_check_flatten),
    nn.Dropout: ModuleRule(Role.IDENTITY, check=_check_dropout),
}


def supported_modules() -> str:
    """The supported module types, for error messages."""
    return ", ".join(["Sequential", *(cls.__name__ for cls in RULES)])


def _compose(inner: ActivationFns, outer: ActivationFns) -> ActivationFns:
    """outer ∘ inner by the chain rule: (g∘f)' = g'(f) f', (g∘f)'' = g''(f) f'² + g'(f) f''."""

    def d1(z: Tensor) -> Tensor:
        return outer.df(inner.f(z)) * inner.df(z)

    def d2(z: Tensor) -> Tensor:
        u, d = inner.f(z), inner.df(z)
        return outer.d2f(u) * d * d + outer.df(u) * inner.d2f(z)

    return ActivationFns(lambda z: outer.f(inner.f(z)), d1, d2)


def leaves(net: nn.Module) -> list[nn.Module]:
    """The modules of a (nested) ``nn.Sequential`` in forward order; any other module is its own leaf."""
    if isinstance(net, nn.Sequential):
        return [leaf for m in net for leaf in leaves(m)]
    return [net]


def _rule(m: nn.Module) -> ModuleRule:
    rule = RULES.get(type(m))
    if rule is None:
        raise TypeError(
            f"unsupported module {type(m).__name__} ({m!r}); the curvature recursion supports a "
            f"feed-forward nn.Sequential of: {supported_modules()}"
        )
    if rule.check is not None:
        rule.check(m)
    return rule


@dataclass(frozen=True)
class Chain:
    """The canonical view of a supported net: ``z^t = W^t h^{t−1} + b^t``, ``h^t = σ_t(z^t)``.

    Attributes:
        layers: the k ``nn.Linear`` modules, input side first (the user's own modules).
        acts: σ_t with σ_t', σ_t'' for t = 1..k−1, the element-wise map between layer t and t+1
            (the composition of the modules there; the identity for Linear → Linear).
        prep: modules applied to the input before the first Linear (Flatten, …).
        mlp: the :class:`MLP` this view was taken of (its fused forward pass is used), or None.
    """

    layers: tuple[nn.Linear, ...]
    acts: tuple[ActivationFns, ...]
    prep: tuple[nn.Module, ...] = ()
    mlp: MLP | None = None

    @property
    def depth(self) -> int:
        """Number of linear layers ``k``."""
        return len(self.layers)

    @property
    def widths(self) -> list[int]:
        """``n_0, …, n_k``."""
        return [self.layers[0].in_features, *(lin.out_features for lin in self.layers)]

    @property
    def biases(self) -> list[bool]:
        """Whether each linear layer has a bias."""
        return [lin.bias is not None for lin in self.layers]

    def forward_cache(self, x: Tensor) -> ForwardCache:
        """Forward pass that keeps every layer input ``h^{t−1}`` (B, n_{t−1}) and pre-activation ``z^t``."""
        if self.mlp is not None:
            return self.mlp.forward_cache(x)
        h = x
        for m in self.prep:
            h = m(h)
        if h.dim() != 2:
            raise ValueError(
                f"the first nn.Linear gets an input of shape {tuple(h.shape)}; it must be (batch, features): "
                "put nn.Flatten() in front of it"
            )
        inputs, preacts = [], []
        for t, lin in enumerate(self.layers):
            inputs.append(h)
            z = lin(h)
            preacts.append(z)
            h = self.acts[t].f(z) if t < self.depth - 1 else z
        return ForwardCache(inputs, preacts, h)


def chain(net: Net) -> Chain:
    """The canonical :class:`Chain` of ``net`` (an :class:`MLP` or a supported ``nn.Sequential``).

    Raises:
        TypeError: for an unsupported net or module, naming it and the supported ones.
        ValueError: for a supported type in an unsupported setting (Dropout in training mode,
            GELU's tanh form, an activation after the last Linear, a Linear used twice).
    """
    if isinstance(net, MLP):
        return Chain(tuple(net.layers), (net.fns,) * (net.depth - 1), mlp=net)
    if not isinstance(net, nn.Sequential):
        raise TypeError(
            f"net must be a curvlab.MLP or an nn.Sequential of supported modules ({supported_modules()}), "
            f"got {type(net).__name__}"
        )
    prep: list[nn.Module] = []
    layers: list[nn.Linear] = []
    acts: list[ActivationFns] = []
    pending: ActivationFns | None = None  # element-wise map since the last Linear
    for m in leaves(net):
        rule = _rule(m)
        if rule.role is Role.LINEAR:
            if any(m is lin for lin in layers):
                raise ValueError(f"{m!r} appears twice in the net; shared weights are not supported")
            if layers:
                acts.append(pending or _identity_fns())
            layers.append(m)  # type: ignore[arg-type]
            pending = None
        elif not layers:
            prep.append(m)  # transforms the input only
        elif rule.role is Role.ELEMENTWISE:
            fns = rule.derivatives(m)  # type: ignore[misc]
            pending = fns if pending is None else _compose(pending, fns)
    if not layers:
        raise ValueError(f"the net has no nn.Linear layer; supported modules: {supported_modules()}")
    if pending is not None:
        raise ValueError(
            "an element-wise activation follows the last nn.Linear; the losses take the logits, so the "
            "net must end with nn.Linear (only Identity, Flatten or eval-mode Dropout may follow it)"
        )
    return Chain(tuple(layers), tuple(acts), tuple(prep))
