"""Module rules: one small rule object per supported module type, and the canonical chain.

Each module type lives in one file (cf. BackPACK's per-module derivatives; Dangel & Hennig,
Table 1): ``linear.py`` (``nn.Linear``), ``elementwise.py`` (the activations of
:data:`ELEMENTWISE`), ``identity.py`` (``nn.Identity``, ``nn.Flatten(start_dim=1)``,
``nn.Dropout`` in eval mode), ``conv.py`` (``nn.Conv2d``), ``pooling.py`` (pooling, zero padding and
Flatten of feature maps: :func:`parameter_free_rule`). ``base.py`` holds the rule interface and the registry
:data:`RULES`; ``canonical.py`` reduces a net to its :class:`Chain` of layers. The curvature
recursion, the exact inverse's sweep and the float64 reference read only these rules, so adding
a module type is one new rule file (``docs/module_rules.md``).
"""

from curvlab.modules.base import RULES, LayerRule, ModuleRule, Role, register, rule_for, supported_modules
from curvlab.modules.linear import LINEAR, LinearRule  # registered first: error messages list it first
from curvlab.modules.elementwise import ELEMENTWISE, ActivationFns, ElementwiseRule
from curvlab.modules.identity import IdentityRule
from curvlab.modules.conv import CONV2D, Conv2dRule
from curvlab.modules.pooling import ParameterFreeRule, parameter_free_rule  # registers the pooling/padding rules
from curvlab.modules.canonical import Chain, Net, chain, leaves

__all__ = [
    "Role", "ModuleRule", "LayerRule", "LinearRule", "Conv2dRule", "CONV2D", "ElementwiseRule", "IdentityRule",
    "ActivationFns", "LINEAR",
    "RULES", "ELEMENTWISE", "register", "rule_for", "Chain", "chain", "leaves", "Net", "supported_modules",
    "ParameterFreeRule", "parameter_free_rule",
]
