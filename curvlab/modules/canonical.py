"""The canonical view of a net: its layers with their rules and the element-wise maps between them.

:func:`chain` reduces a net to a :class:`Chain`: k layers (modules with a
:class:`~curvlab.modules.base.LayerRule`, today ``nn.Linear``) and, between consecutive ones, the
composition of the element-wise modules there (the identity when none, e.g. Linear → Linear).
Modules before the first layer only transform the input; after the last layer only
identity-like modules may follow, because the losses take the logits. The curvature recursion,
the solvers and the exact inverse read only this view and the rules, so they run on the same
fast path for every supported net; :class:`curvlab.MLP` keeps its own fused forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from torch import Tensor, nn

from curvlab.modules.base import LayerRule, Role, rule_for, supported_modules
from curvlab.modules.elementwise import IDENTITY_FNS, ActivationFns, ElementwiseRule, compose
from curvlab.nets import MLP, ForwardCache

__all__ = ["Chain", "chain", "leaves", "Net"]

Net = Union[MLP, nn.Sequential]  # what every entry point takes


def leaves(net: nn.Module) -> list[nn.Module]:
    """The modules of a (nested) ``nn.Sequential`` in forward order; any other module is its own leaf."""
    if isinstance(net, nn.Sequential):
        return [leaf for m in net for leaf in leaves(m)]
    return [net]


@dataclass(frozen=True)
class Chain:
    """The canonical view of a supported net: ``z^t = W^t h^{t−1} + b^t``, ``h^t = σ_t(z^t)``.

    Attributes:
        layers: the k layer modules, input side first (the user's own modules).
        acts: σ_t with σ_t', σ_t'' for t = 1..k−1, the element-wise map between layer t and t+1
            (the composition of the modules there; the identity for Linear → Linear).
        prep: modules applied to the input before the first layer (Flatten, …).
        mlp: the :class:`MLP` this view was taken of (its fused forward pass is used), or None.
        rules: the :class:`LayerRule` of each layer (looked up from ``layers`` when not given).
    """

    layers: tuple[nn.Module, ...]
    acts: tuple[ActivationFns, ...]
    prep: tuple[nn.Module, ...] = ()
    mlp: MLP | None = None
    rules: tuple[LayerRule, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.rules:
            object.__setattr__(self, "rules", tuple(rule_for(m) for m in self.layers))

    @property
    def depth(self) -> int:
        """Number of layers ``k``."""
        return len(self.layers)

    @property
    def widths(self) -> list[int]:
        """``n_0, …, n_k``."""
        return [self.rules[0].widths(self.layers[0])[0], *(r.widths(m)[1] for r, m in zip(self.rules, self.layers))]

    @property
    def biases(self) -> list[bool]:
        """Whether each layer has a bias."""
        return [r.has_bias(m) for r, m in zip(self.rules, self.layers)]

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
        for t, (rule, lin) in enumerate(zip(self.rules, self.layers)):
            inputs.append(h)
            z = rule.forward(lin, h)
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
    layers: list[nn.Module] = []
    rules: list[LayerRule] = []
    acts: list[ActivationFns] = []
    pending: ActivationFns | None = None  # element-wise map since the last layer
    for m in leaves(net):
        if isinstance(m, nn.Conv2d):  # its rule exists (modules/conv.py); the recursion does not walk it yet
            raise TypeError(
                f"unsupported module Conv2d ({m!r}): convolutions are coming (issue 19, the rule is in "
                f"curvlab/modules/conv.py, the recursion does not use it yet); supported: {supported_modules()}"
            )
        rule = rule_for(m)
        if isinstance(rule, LayerRule):
            if any(m is lin for lin in layers):
                raise ValueError(f"{m!r} appears twice in the net; shared weights are not supported")
            if layers:
                acts.append(pending or IDENTITY_FNS)
            layers.append(m)
            rules.append(rule)
            pending = None
        elif not layers:
            prep.append(m)  # transforms the input only
        elif isinstance(rule, ElementwiseRule):
            fns = rule.bind(m)
            pending = fns if pending is None else compose(pending, fns)
        else:
            assert rule.role is Role.IDENTITY
    if not layers:
        raise ValueError(f"the net has no nn.Linear layer; supported modules: {supported_modules()}")
    if pending is not None:
        raise ValueError(
            "an element-wise activation follows the last nn.Linear; the losses take the logits, so the "
            "net must end with nn.Linear (only Identity, Flatten or eval-mode Dropout may follow it)"
        )
    return Chain(tuple(layers), tuple(acts), tuple(prep), rules=tuple(rules))
