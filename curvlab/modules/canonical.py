"""The canonical view of a net: its layers with their rules and the element-wise maps between them.

:func:`chain` reduces a net to a :class:`Chain`: k layers (modules with a
:class:`~curvlab.modules.base.LayerRule`, ``nn.Linear``, or ``nn.Conv2d``) and, between consecutive
ones, the composition of the element-wise modules there (the identity when none, e.g. Linear →
Linear). Modules before the first layer only transform the input; after the last layer only
identity-like modules may follow, because the losses take the logits. The curvature recursion,
the solvers and the exact inverse read only this view and the rules, so they run on the same
fast path for every supported net; :class:`curvlab.MLP` keeps its own fused forward pass.

A net with a ``nn.Conv2d`` or a parameter-free step (pooling, padding) is a *step net*: its
``Chain`` also lists every module from the first layer on as ``steps`` (module, rule) in forward
order, and the recursion walks those one by one (``curvature/steps.py``). Nets of Linear,
element-wise and identity-like modules keep the fused path (``steps`` empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from torch import Tensor, nn

from curvlab.modules.base import LayerRule, ModuleRule, Role, rule_for, supported_modules
from curvlab.modules.conv import Conv2dRule
from curvlab.modules.elementwise import IDENTITY_FNS, ActivationFns, ElementwiseRule, compose
from curvlab.modules.pooling import ParameterFreeRule, parameter_free_rule
from curvlab.nets import MLP, ForwardCache, StepCache

__all__ = ["Chain", "chain", "leaves", "Net", "is_layer", "is_parameter_free"]

Net = Union[MLP, nn.Sequential]  # what every entry point takes
Step = tuple[nn.Module, ModuleRule]


def is_layer(rule: ModuleRule) -> bool:
    """Whether a module of this rule has parameters (a layer of the recursion)."""
    return isinstance(rule, (LayerRule, Conv2dRule))


def is_parameter_free(rule: ModuleRule) -> bool:
    """Whether the rule is a parameter-free linear step (pooling, padding, Flatten of maps)."""
    return isinstance(rule, ParameterFreeRule)


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
        rules: the rule of each layer (looked up from ``layers`` when not given).
        steps: for a step net, every module from the first layer on with its rule, in forward
            order (``acts`` is then empty); empty for the fused path.
    """

    layers: tuple[nn.Module, ...]
    acts: tuple[ActivationFns, ...]
    prep: tuple[nn.Module, ...] = ()
    mlp: MLP | None = None
    rules: tuple[LayerRule | Conv2dRule, ...] = field(default=(), repr=False)
    steps: tuple[Step, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not self.rules:
            object.__setattr__(self, "rules", tuple(rule_for(m) for m in self.layers))

    @property
    def depth(self) -> int:
        """Number of layers ``k``."""
        return len(self.layers)

    @property
    def has_steps(self) -> bool:
        """Whether this is a step net (convolutions or pooling): the recursion walks ``steps``."""
        return bool(self.steps)

    @property
    def widths(self) -> list[int]:
        """``n_0, …, n_k`` (fused path only: a step net's widths depend on the input size)."""
        if self.steps:
            raise ValueError("a net with convolutions has no fixed widths; read the shapes off forward_cache(x)")
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
        if self.steps:
            return self._step_cache(h)
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

    def _step_cache(self, h: Tensor) -> ForwardCache:
        """A step net's forward pass: every step's input and cache, each layer's input and output."""
        inputs, preacts, steps = [], [], []
        for m, rule in self.steps:
            cache = None
            if isinstance(rule, Conv2dRule):
                if h.dim() != 4:
                    raise ValueError(f"{m!r} gets an input of shape {tuple(h.shape)}; it must be (batch, C, H, W)")
                z, cache = rule.forward_cache(m, h)
            elif isinstance(rule, LayerRule):
                if h.dim() != 2:
                    raise ValueError(
                        f"{m!r} gets an input of shape {tuple(h.shape)}; it must be (batch, features): "
                        "put nn.Flatten() in front of it"
                    )
                z = rule.forward(m, h)
            elif is_parameter_free(rule):
                z, cache = rule.forward(m, h)  # type: ignore[attr-defined]
            else:
                z = m(h)  # element-wise or identity-like: the user's own forward
            if is_layer(rule):
                inputs.append(h)
                preacts.append(z)
            steps.append(StepCache(h, cache))
            h = z
        return ForwardCache(inputs, preacts, h, steps)


def _step_chain(mods: list[nn.Module], rules: list[ModuleRule]) -> Chain:
    """The :class:`Chain` of a step net (a Conv2d or a pooling step among ``mods``)."""
    first = next((i for i, r in enumerate(rules) if is_layer(r)), None)
    if first is None:
        raise ValueError(f"the net has no nn.Linear or nn.Conv2d layer; supported modules: {supported_modules()}")
    steps = tuple(zip(mods[first:], rules[first:]))
    layers = [m for m, r in steps if is_layer(r)]
    if len({id(m) for m in layers}) < len(layers):
        raise ValueError("a layer appears twice in the net; shared weights are not supported")
    last = max(i for i, (_, r) in enumerate(steps) if is_layer(r))
    if not isinstance(steps[last][1], LayerRule) or any(r.role is not Role.IDENTITY for _, r in steps[last + 1 :]):
        raise ValueError(
            "a net with convolutions must end with nn.Linear (the losses take the logits): put "
            "nn.Flatten() and nn.Linear(features, classes) after the last convolution or pooling"
        )
    # Identity-like modules (Flatten of maps, Identity, eval Dropout) walk as parameter-free steps.
    steps = tuple((m, parameter_free_rule(m) or r) for m, r in steps)
    layer_rules = tuple(r for _, r in steps if is_layer(r))
    return Chain(tuple(layers), (), tuple(mods[:first]), rules=layer_rules, steps=steps)  # type: ignore[arg-type]


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
    mods = leaves(net)
    mod_rules = [rule_for(m) for m in mods]  # TypeError naming an unsupported module
    first = next((i for i, r in enumerate(mod_rules) if is_layer(r)), len(mods))
    # A step net: a conv, or pooling/padding between layers (in front of the first only the input changes).
    if any(isinstance(r, Conv2dRule) or (is_parameter_free(r) and i > first) for i, r in enumerate(mod_rules)):
        return _step_chain(mods, mod_rules)
    prep: list[nn.Module] = []
    layers: list[nn.Module] = []
    rules: list[LayerRule] = []
    acts: list[ActivationFns] = []
    pending: ActivationFns | None = None  # element-wise map since the last layer
    for m, rule in zip(mods, mod_rules):
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
