"""The rule interface of a module type and the registry :data:`RULES` (cf. BackPACK's per-module derivatives).

Hessian backpropagation is modular (Dangel & Hennig, Sections 3–3.2, Table 1, Supplement B–C):
every module type has a small local rule, and the recursion of EA-CG, Eq. (4b) of Chen et al.,

    H^{t−1} = Jᵀ H^t J + Σ_c (∂²z_c/∂h²) ∂ξ/∂z_c,

is the composition of them: each module pulls the quantities the recursion carries back
through its Jacobian ``J`` and adds its second-order residual where it has one. The rules
come in four families, one file each:

* :class:`LayerRule` (``linear.py``): a module with parameters and a full Jacobian; it also
  gives the parameters' contributions (gradient, block, Kronecker factors, per-sample pieces);
* :class:`~curvlab.modules.elementwise.ElementwiseRule` (``elementwise.py``): h = σ(z), Jacobian
  diag σ', residual diag(σ'' ⊙ ∂ξ/∂h);
* :class:`~curvlab.modules.identity.IdentityRule` (``identity.py``): Flatten, Identity, eval Dropout;
* :class:`~curvlab.modules.pooling.ParameterFreeRule` (``pooling.py``): pooling, zero padding and
  Flatten of feature maps, z_i = P_i h_i (the steps of a conv net between its layers).

Adding a module type is one new file with its rule and a call to :func:`register`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from typing import ClassVar

from torch import Tensor, nn

from curvlab.curvature.options import JacobianAverage

__all__ = ["Role", "ModuleRule", "LayerRule", "RULES", "register", "rule_for", "supported_modules"]


class Role(str, Enum):
    """What a module is in the canonical chain."""

    LINEAR = "linear"  # z = W h + b: Jacobian W, no residual term
    ELEMENTWISE = "elementwise"  # h = σ(z): Jacobian diag σ', residual diag(σ'' ⊙ ∂ξ/∂h)
    IDENTITY = "identity"  # passes a (B, n) tensor through unchanged
    PARAMETER_FREE = "parameter_free"  # z_i = P_i h_i on maps (pooling, padding): Jacobian P_i, no residual


class ModuleRule(ABC):
    """The local rule of one module type; stateless, the module instance is an argument."""

    role: ClassVar[Role]

    def check(self, m: nn.Module) -> None:
        """Raise ``ValueError`` with a message when this instance's settings are not supported."""


class LayerRule(ModuleRule):
    """A module with parameters θ = (W, b) whose output z^t is a layer of the recursion.

    Shapes: b samples, input width n_in, output width n (= ``widths(m)``). Every backward verb
    takes ``d`` (b, n_in), the diagonal Jacobian diag σ'(z^{t−1}) of the element-wise map in front
    of the layer, and pulls back through the composite ``F_i = J_h z · diag(d_i)``: the canonical
    chain fuses the two rules there, one kernel instead of two passes over the message.
    """

    role: ClassVar[Role] = Role.LINEAR

    @abstractmethod
    def widths(self, m: nn.Module) -> tuple[int, int]:
        """(n_in, n): the feature widths of the input and output."""

    @abstractmethod
    def has_bias(self, m: nn.Module) -> bool:
        """Whether the module has a bias (then ∂z/∂b = I and the z block is the bias block)."""

    @abstractmethod
    def forward(self, m: nn.Module, h: Tensor, weight: Tensor | None = None) -> Tensor:
        """z (b, n) of inputs h (b, n_in), with the module's weight or ``weight`` in its place."""

    # --- the quantities the recursion carries: (b, n) → (b, n_in) -------------------------------

    @abstractmethod
    def jac_t_vec(self, m: nn.Module, g: Tensor) -> Tensor:
        """Per-sample vectors through Jᵀ: (b, n) → (b, n_in)."""

    @abstractmethod
    def jac(self, m: nn.Module, d: Tensor) -> Tensor:
        """The per-sample Jacobians F_i (b, n, n_in) of the composite."""

    @abstractmethod
    def jac_t_blocks(self, m: nn.Module, blocks: Tensor, d: Tensor, per_sample: bool) -> Tensor:
        """F_iᵀ H_i F_i of per-sample blocks (b, n, n): (b, n_in, n_in), or with ``per_sample``
        False the mean over the samples (n_in, n_in), exactly symmetric."""

    @abstractmethod
    def jac_t_mean(self, m: nn.Module, block: Tensor, d: Tensor, average: JacobianAverage) -> Tensor:
        """A batch-mean block (n, n) pulled back with averaged Jacobians: (n_in, n_in)."""

    @abstractmethod
    def jac_t_factors(self, m: nn.Module, factors: Tensor, d: Tensor) -> Tensor:
        """Per-sample factors U_i (b, r, n) ↦ U_i F_i (b, r, n_in)."""

    # --- the parameters' contributions ----------------------------------------------------------

    @abstractmethod
    def weight_grad(self, g: Tensor, h: Tensor) -> Tensor:
        """Σ_i ∇_W ξ_i of the per-sample output gradients g (b, n) and inputs h (b, n_in)."""

    @abstractmethod
    def weight_block(self, blocks: Tensor, h: Tensor, scale: float) -> Tensor:
        """``scale`` · Σ_i of the exact weight block of per-sample z blocks (b, n, n)."""


    @abstractmethod
    def input_factors(self, h: Tensor, cov: bool) -> tuple[Tensor, Tensor | None]:
        """The input-side Kronecker factors of the weight block: E[h] and, with ``cov``, E[h hᵀ]."""

    # --- the parameter Jacobian B (Kronecker form) for the exact inverse's Riccati sweep ----------

    def _no_sweep(self) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__} has no Kronecker-form parameter Jacobian; "
            "hessian_inverse_product (the Riccati sweep) does not support this module type"
        )

    def param_inputs(self, h: Tensor, bias: bool) -> Tensor:
        """H̃ (b, m_in) with ∂z_i/∂θ = h̃_iᵀ ⊗ I."""
        raise self._no_sweep()

    def param_jvp(self, Y: Tensor, h: Tensor, n: int, bias: bool) -> Tensor:
        """``B Y`` for Y (p, c): the output perturbations (b, n, c)."""
        raise self._no_sweep()

    def param_columns(self, v: Tensor, n: int, bias: bool) -> Tensor:
        """Parameter rows (p, c) → the columns (m_in, n c) of each output unit."""
        raise self._no_sweep()

    def param_rows(self, X: Tensor, n: int, bias: bool) -> Tensor:
        """The inverse of :meth:`param_columns`."""
        raise self._no_sweep()

    def cross_t(self, delta: Tensor, d: Tensor, k: Tensor) -> Tensor:
        """``Sᵀ k``: the cross term ∂²L/∂θ∂z^{t−1} applied to k (p, c), (b, n_in, c)."""
        raise self._no_sweep()

    def cross_columns(self, delta: Tensor, d: Tensor, x: Tensor) -> Tensor:
        """``S x`` for state perturbations x (b, n_in, c), in the layout of :meth:`param_columns`."""
        raise self._no_sweep()

    def add_cross_basis_(self, out: Tensor, delta: Tensor, d: Tensor, V: Tensor) -> None:
        """out += (Eᵀ S)ᵀ for a basis E = I ⊗ V of parameter space."""
        raise self._no_sweep()

    def sub_cross_gram_(self, out: Tensor, delta: Tensor, d: Tensor, proj: Tensor, damping: float) -> None:
        """out −= Sᵀ (I ⊗ proj) S / λ."""
        raise self._no_sweep()


RULES: dict[type[nn.Module], ModuleRule] = {}


def register(cls: type[nn.Module], rule: ModuleRule) -> None:
    """Make ``rule`` the rule of module type ``cls`` (exact type, as BackPACK's table)."""
    RULES[cls] = rule


def supported_modules() -> str:
    """The supported module types, for error messages."""
    return ", ".join(["Sequential", *(cls.__name__ for cls in RULES)])


def rule_for(m: nn.Module) -> ModuleRule:
    """The rule of ``m``, after its instance check; ``TypeError`` naming the supported types."""
    rule = RULES.get(type(m))
    if rule is None:
        raise TypeError(
            f"unsupported module {type(m).__name__} ({m!r}); the curvature recursion supports a "
            f"feed-forward nn.Sequential of: {supported_modules()}"
        )
    rule.check(m)
    return rule
