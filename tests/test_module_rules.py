"""Every verb of the module rules (curvlab.modules) against torch.func autograd in float64."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.func import hessian, jacrev, jvp, vjp

import curvlab
from curvlab.curvature.options import JacobianAverage
from curvlab.modules import (
    ELEMENTWISE, LINEAR, RULES, ElementwiseRule, IdentityRule, LayerRule, ModuleRule, Role, chain, rule_for,
)

B, N_IN, N = 5, 4, 3
KWARGS = {nn.LeakyReLU: {"negative_slope": 0.3}, nn.ELU: {"alpha": 0.7}, nn.Softplus: {"beta": 1.5, "threshold": 3.0}}


@pytest.fixture(params=[True, False], ids=["bias", "nobias"])
def setup(request: pytest.FixtureRequest) -> tuple[nn.Linear, Tensor, Tensor, Tensor]:
    """A Linear layer, pre-activations u (B, N_IN) of the tanh in front of it, h = tanh(u), d = tanh'(u)."""
    torch.manual_seed(0)
    lin = nn.Linear(N_IN, N, bias=request.param).double()
    u = torch.randn(B, N_IN, dtype=torch.float64)
    return lin, u, torch.tanh(u), 1 - torch.tanh(u) ** 2


def _composite_jac(lin: nn.Linear, u: Tensor) -> Tensor:
    """F_i = ∂ lin(tanh(u_i)) / ∂u_i by autograd: (B, N, N_IN)."""
    return torch.stack([jacrev(lambda v: lin(torch.tanh(v)))(u_i) for u_i in u]).detach()


def _sym(b: int, n: int) -> Tensor:
    a = torch.randn(b, n, n, dtype=torch.float64)
    return a + a.transpose(-1, -2)


def test_linear_backward_verbs_match_autograd(setup) -> None:  # type: ignore[no-untyped-def]
    lin, u, h, d = setup
    f = _composite_jac(lin, u)
    g = torch.randn(B, N, dtype=torch.float64)
    # Jᵀ g through the layer alone (∂z/∂h), by vjp
    _, pull = vjp(lambda hh: lin(hh), h)
    torch.testing.assert_close(LINEAR.jac_t_vec(lin, g), pull(g)[0].detach())
    torch.testing.assert_close(LINEAR.jac(lin, d), f)
    blocks = _sym(B, N)
    per = torch.einsum("ian,iab,ibm->inm", f, blocks, f)
    torch.testing.assert_close(LINEAR.jac_t_blocks(lin, blocks.clone(), d, per_sample=True), per)
    torch.testing.assert_close(LINEAR.jac_t_blocks(lin, blocks.clone(), d, per_sample=False), per.mean(0))
    mean = _sym(1, N)[0]
    torch.testing.assert_close(  # Eq. (6) of Chen et al.: E_i[F_iᵀ H̄ F_i]
        LINEAR.jac_t_mean(lin, mean, d, JacobianAverage.PER_SAMPLE),
        torch.einsum("ian,ab,ibm->nm", f, mean, f) / B,
    )
    fbar = f.mean(0)  # Eq. (7) of Dangel & Hennig: the mean Jacobian W diag(E[d])
    torch.testing.assert_close(LINEAR.jac_t_mean(lin, mean, d, JacobianAverage.MEAN), fbar.T @ mean @ fbar)
    factors = torch.randn(B, 2, N, dtype=torch.float64)
    torch.testing.assert_close(LINEAR.jac_t_factors(lin, factors, d), factors @ f)


def test_linear_parameter_contributions_match_autograd(setup) -> None:  # type: ignore[no-untyped-def]
    lin, _, h, _ = setup
    w0 = lin.weight.detach()
    g = torch.randn(B, N, dtype=torch.float64)
    # Σ_i ∇_W (g_iᵀ z_i): one vjp over the batch
    _, pull = vjp(lambda w: LINEAR.forward(lin, h, w), w0)
    torch.testing.assert_close(LINEAR.weight_grad(g, h), pull(g)[0])
    # Eq. (4c): Σ_i J_iᵀ H_i J_i with J_i = ∂z_i/∂vec(W) (row-major) by jacrev
    blocks = _sym(B, N)
    jw = torch.stack([jacrev(lambda w: LINEAR.forward(lin, h_i[None], w)[0])(w0).reshape(N, -1) for h_i in h])
    expect = 0.5 * torch.einsum("iap,iab,ibq->pq", jw, blocks, jw)
    torch.testing.assert_close(LINEAR.weight_block(blocks, h, 0.5), expect)
    mean, cov = LINEAR.input_factors(h, cov=True)
    torch.testing.assert_close(mean, h.mean(0))
    torch.testing.assert_close(cov, torch.einsum("ia,ib->ab", h, h) / B)
    assert LINEAR.input_factors(h, cov=False)[1] is None
    assert LINEAR.widths(lin) == (N_IN, N) and LINEAR.has_bias(lin) == (lin.bias is not None)


def test_linear_parameter_jacobian_matches_autograd(setup) -> None:  # type: ignore[no-untyped-def]
    """The Riccati sweep's B (jvp in θ), its column layout, and Sᵀ (mixed second derivative)."""
    lin, u, h, d = setup
    bias = lin.bias is not None
    w0 = lin.weight.detach()
    b0 = lin.bias.detach() if bias else torch.zeros(N, dtype=torch.float64)
    p = N * N_IN + (N if bias else 0)
    Y = torch.randn(p, 2, dtype=torch.float64)

    def z_of(theta: Tensor, hh: Tensor) -> Tensor:  # (B, N) with θ = (vec(W) row-major, b)
        w = theta[: N * N_IN].reshape(N, N_IN)
        return hh @ w.T + (theta[N * N_IN :] if bias else 0)

    theta0 = torch.cat([w0.flatten(), b0]) if bias else w0.flatten()
    by = torch.stack([jvp(lambda t: z_of(t, h), (theta0,), (Y[:, c],))[1] for c in range(2)], -1)
    torch.testing.assert_close(LINEAR.param_jvp(Y, h, N, bias), by)
    cols = LINEAR.param_columns(Y, N, bias)
    assert cols.shape == (N_IN + bias, N * 2)
    torch.testing.assert_close(LINEAR.param_rows(cols, N, bias), Y, rtol=0, atol=0)
    torch.testing.assert_close(LINEAR.param_inputs(h, bias) @ cols, by.reshape(B, -1))  # B = H̃ ⊗ I
    # Sᵀ k = ∂/∂u [∂_θ Σ_i δ_iᵀ z(θ, tanh(u_i)) · k]
    delta = torch.randn(B, N, dtype=torch.float64)
    for c in range(2):
        def dir_deriv(uu: Tensor, c: int = c) -> Tensor:
            return jvp(lambda t: (delta * z_of(t, torch.tanh(uu))).sum(), (theta0,), (Y[:, c],))[1]

        torch.testing.assert_close(LINEAR.cross_t(delta, d, Y)[:, :, c], jacrev(dir_deriv)(u))


def test_linear_cross_term_products_match_the_assembled_matrix(setup) -> None:  # type: ignore[no-untyped-def]
    """S = ∂²/∂θ∂u of Σ_i δ_iᵀ z(θ, tanh(u_i)) assembled by autograd; the sweep's products with it."""
    lin, u, _, d = setup
    bias = lin.bias is not None
    m_in = N_IN + bias
    theta0 = torch.cat([lin.weight.detach().flatten(), *([lin.bias.detach()] if bias else [])])
    delta = torch.randn(B, N, dtype=torch.float64)

    def loss(theta: Tensor, uu: Tensor) -> Tensor:
        w = theta[: N * N_IN].reshape(N, N_IN)
        return (delta * (torch.tanh(uu) @ w.T + (theta[N * N_IN :] if bias else 0))).sum()

    S = jacrev(lambda uu: torch.func.grad(loss)(theta0, uu))(u).reshape(theta0.numel(), B * N_IN)  # (p, B n_in)
    cols = torch.stack([LINEAR.param_columns(S[:, s, None], N, bias) for s in range(B * N_IN)])  # (B n_in, m_in, n)
    x = torch.randn(B, N_IN, 2, dtype=torch.float64)
    sx = LINEAR.param_columns(S @ x.reshape(B * N_IN, 2), N, bias)  # (m_in, n 2)
    torch.testing.assert_close(LINEAR.cross_columns(delta, d, x), sx[:N_IN])
    if bias:
        assert bool((sx[N_IN:] == 0).all())  # the bias rows do not enter
    r = 2
    V = torch.randn(m_in, r, dtype=torch.float64)
    out = torch.zeros(B, N_IN, r, N, dtype=torch.float64)
    LINEAR.add_cross_basis_(out, delta, d, V)  # (Eᵀ S)ᵀ, E = I ⊗ V
    torch.testing.assert_close(out.reshape(B * N_IN, r, N), V.T @ cols)
    q, _ = torch.linalg.qr(torch.randn(m_in, m_in, dtype=torch.float64))
    proj = q[:, :2] @ q[:, :2].T
    gram = torch.einsum("sea,ef,tfa->st", cols, proj, cols) / 0.5  # Sᵀ (I ⊗ proj) S / λ
    out = torch.zeros(B, N_IN, B, N_IN, dtype=torch.float64)
    LINEAR.sub_cross_gram_(out, delta, d, proj, 0.5)
    torch.testing.assert_close(out.reshape(B * N_IN, -1), -gram)


@pytest.mark.parametrize("cls", list(ELEMENTWISE), ids=lambda c: c.__name__)
def test_elementwise_verbs_match_autograd(cls: type[nn.Module]) -> None:
    """diag σ' by vjp; the residual diag(σ'' ⊙ g) (Eq. 4b) as the Hessian of gᵀσ(z) per sample."""
    module = cls(**KWARGS.get(cls, {}))
    rule = rule_for(module)
    assert isinstance(rule, ElementwiseRule)
    fns = rule.bind(module)
    torch.manual_seed(1)
    z = torch.randn(B, N, dtype=torch.float64) * 2
    g = torch.randn(B, N, dtype=torch.float64)
    d1, d2 = fns.derivatives(z)
    _, pull = vjp(module, z)
    torch.testing.assert_close(fns.jac_t_vec(d1, g), pull(g)[0])
    for i in range(B):
        hess = hessian(lambda v, i=i: (g[i] * module(v)).sum())(z[i])
        torch.testing.assert_close(torch.diag(fns.residual(d2, g)[i]), hess, rtol=1e-10, atol=1e-12)


def test_registry_and_identity_rules() -> None:
    assert isinstance(RULES[nn.Linear], LayerRule)
    assert all(isinstance(r, ModuleRule) for r in RULES.values())
    assert {r.role for r in RULES.values()} == set(Role)  # every family is registered (Conv2d: LINEAR)
    assert isinstance(rule_for(nn.Flatten()), IdentityRule)
    with pytest.raises(ValueError, match=r"Flatten\(start_dim=1\)"):
        rule_for(nn.Flatten(0))
    with pytest.raises(TypeError, match=r"unsupported module Conv1d"):
        rule_for(nn.Conv1d(1, 1, 3))


class _MyLinear(nn.Linear):
    """A user's own layer type: not supported until a rule is registered for it."""


def test_a_registered_rule_is_all_a_new_layer_type_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    mine = nn.Sequential(_MyLinear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    mine.load_state_dict(ref.state_dict())
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6,))
    with pytest.raises(TypeError, match="unsupported module _MyLinear"):
        chain(mine)
    monkeypatch.setitem(RULES, _MyLinear, LINEAR)
    assert chain(mine).rules == (LINEAR, LINEAR)
    for kind in ("exact", "pch1", "fisher"):
        a = curvlab.curvature(mine, x, y, kind, fisher="exact")
        b = curvlab.curvature(ref, x, y, kind, fisher="exact")
        for la, lb in zip(a, b):
            torch.testing.assert_close(la.bias, lb.bias, rtol=0, atol=0)
