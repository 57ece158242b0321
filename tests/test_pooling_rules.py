"""The parameter-free step rules (``curvlab/modules/pooling.py``) against torch.func, float64.

Every verb of every rule is checked against autograd of the module itself: ``jac_factors``
against ``torch.func.jvp``, ``jac_t_factors``/``jac_t_vec`` against ``torch.func.vjp`` (one
pull-back per factor row), ``jac_t_blocks`` against J_iᵀ H_i J_i with the per-sample Jacobians
J_i formed densely by ``torch.func.jacrev``. The cases cover odd map sizes, overlapping windows
(kernel 3, stride 2), padding, ceil_mode, count_include_pad, divisor_override, dilation, the
uneven overlapping windows of adaptive pooling, crops by negative padding, and MaxPool ties.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn
from torch.func import jacrev, jvp, vjp

from curvlab.modules import RULES, Role, chain, parameter_free_rule, rule_for
from curvlab.modules.identity import IdentityRule
from curvlab.modules.pooling import FLATTEN, IDENTITY_STEP, MAX_POOL2D, ParameterFreeRule

DT = torch.float64
B, R = 3, 2  # samples, factor rows

# name: (module factory, per-sample input shape)
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "avg_k2": (lambda: nn.AvgPool2d(2), (2, 6, 6)),
    "avg_k3_s2_odd": (lambda: nn.AvgPool2d(3, stride=2), (2, 7, 5)),
    "avg_pad_ceil_exclude": (lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False), (2, 6, 7)),
    "avg_pad_ceil_include": (lambda: nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), (1, 6, 7)),
    "avg_divisor_rect": (lambda: nn.AvgPool2d((2, 3), (1, 2), padding=(1, 1), divisor_override=5), (2, 5, 6)),
    "adaptive_3x2": (lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 7, 5)),
    "adaptive_none_4": (lambda: nn.AdaptiveAvgPool2d((None, 4)), (1, 3, 7)),
    "adaptive_global": (lambda: nn.AdaptiveAvgPool2d(1), (3, 5, 4)),
    "max_k2": (lambda: nn.MaxPool2d(2), (2, 6, 6)),
    "max_k3_s2_odd": (lambda: nn.MaxPool2d(3, stride=2), (2, 7, 5)),
    "max_pad_ceil": (lambda: nn.MaxPool2d(3, 2, padding=1, ceil_mode=True), (2, 6, 7)),
    "max_dilation": (lambda: nn.MaxPool2d((2, 3), stride=(1, 2), dilation=2, padding=1), (1, 7, 8)),
    "zeropad": (lambda: nn.ZeroPad2d((1, 2, 0, 3)), (2, 4, 5)),
    "zeropad_crop": (lambda: nn.ZeroPad2d((-1, 1, 2, -2)), (2, 5, 5)),
    "flatten_maps": (lambda: nn.Flatten(), (2, 3, 4)),
    "flatten_features": (lambda: nn.Flatten(), (7,)),
    "identity": (lambda: nn.Identity(), (2, 3, 3)),
}


def _case(
    name: str, seed: int = 0, ties: bool = False, device: str = "cpu"
) -> tuple[nn.Module, ParameterFreeRule, torch.Tensor]:
    factory, shape = CASES[name]
    m = factory()
    rule = parameter_free_rule(m)
    assert rule is not None
    torch.manual_seed(seed)
    # ties: few distinct values, so windows have several maxima
    x = torch.randint(0, 3, (B, *shape)).to(DT) if ties else torch.randn(B, *shape, dtype=DT)
    return m, rule, x.to(device)


def _per_sample_jacobians(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J_i (b, n_out, n_in) formed densely: the diagonal blocks of jacrev of the module on the batch."""
    full = jacrev(m)(x)  # (b, *out, b, *in)
    b = x.shape[0]
    full = full.reshape(b, -1, b, x[0].numel())
    return torch.stack([full[i, :, i] for i in range(b)])


NAMES = sorted(CASES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_out_shape_are_the_modules(name: str) -> None:
    m, rule, x = _case(name)
    z, _ = rule.forward(m, x)
    assert torch.equal(z, m(x))
    assert rule.out_shape(m, tuple(x.shape[1:])) == tuple(z.shape[1:])
    assert rule.role is Role.PARAMETER_FREE


def _check_jac_factors(name: str, ties: bool, device: str = "cpu") -> None:
    m, rule, x = _case(name, ties=ties, device=device)
    _, cache = rule.forward(m, x)
    V = torch.randn(B, R, *x.shape[1:], dtype=DT, device=device)
    got = rule.jac_factors(m, V, cache)
    for r in range(R):
        _, want = jvp(m, (x,), (V[:, r],))
        torch.testing.assert_close(got[:, r], want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rule.jac_vec(m, V[:, 0], cache), got[:, 0], rtol=0, atol=0)


def _check_jac_t(name: str, ties: bool, device: str = "cpu") -> None:
    m, rule, x = _case(name, ties=ties, device=device)
    z, cache = rule.forward(m, x)
    in_shape = tuple(x.shape[1:])
    _, pull = vjp(m, x)
    U = torch.randn(B, R, *z.shape[1:], dtype=DT, device=device)
    got = rule.jac_t_factors(m, U, cache, in_shape)
    assert got.shape == (B, R, *in_shape)
    for r in range(R):
        torch.testing.assert_close(got[:, r], pull(U[:, r])[0], rtol=1e-12, atol=1e-12)
    g = torch.randn_like(z)
    torch.testing.assert_close(rule.jac_t_vec(m, g, cache, in_shape), pull(g)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_jac_factors_equal_jvp(name: str, ties: bool) -> None:
    _check_jac_factors(name, ties)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_jac_t_factors_and_jac_t_vec_equal_vjp(name: str, ties: bool) -> None:
    _check_jac_t(name, ties)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_every_verb_on_gpu_equals_autograd_there(name: str) -> None:
    """On CUDA too (MaxPool: ties broken by the CUDA kernel's indices, which autograd uses as well)."""
    for ties in (False, True):
        _check_jac_factors(name, ties, "cuda")
        _check_jac_t(name, ties, "cuda")
    m, rule, x = _case(name)
    n_out = int(torch.Size(rule.out_shape(m, tuple(x.shape[1:]))).numel())
    H = torch.randn(B, n_out, n_out, dtype=DT)
    H = H + H.transpose(1, 2)
    want = rule.jac_t_blocks(m, H, rule.forward(m, x)[1], tuple(x.shape[1:]))
    got = rule.jac_t_blocks(m, H.cuda(), rule.forward(m, x.cuda())[1], tuple(x.shape[1:]))
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_jac_t_blocks_equal_dense_jt_h_j(name: str) -> None:
    m, rule, x = _case(name)
    z, cache = rule.forward(m, x)
    J = _per_sample_jacobians(m, x)  # (b, n_out, n_in)
    n_out = J.shape[1]
    A = torch.randn(B, n_out, n_out, dtype=DT)
    H = A + A.transpose(1, 2)  # symmetric, indefinite
    got = rule.jac_t_blocks(m, H, cache, tuple(x.shape[1:]))
    want = J.transpose(1, 2) @ H @ J
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(got, got.transpose(1, 2))


@pytest.mark.parametrize("name", [n for n in NAMES if n.startswith(("avg", "adaptive", "zeropad", "flatten"))])
def test_a_fixed_jacobian_is_the_same_for_every_sample(name: str) -> None:
    """``sample_independent`` rules: a batch-mean block pulls back exactly as one sample, with no cache."""
    m, rule, x = _case(name)
    assert rule.sample_independent
    J = _per_sample_jacobians(m, x)
    torch.testing.assert_close(J, J[:1].expand_as(J), rtol=0, atol=0)
    hbar = torch.randn(J.shape[1], J.shape[1], dtype=DT)
    hbar = hbar + hbar.T
    got = rule.jac_t_blocks(m, hbar[None], None, tuple(x.shape[1:]))[0]
    torch.testing.assert_close(got, J[0].T @ hbar @ J[0], rtol=1e-12, atol=1e-12)


def test_a_run_of_steps_pulls_back_as_the_composed_map() -> None:
    """As the step recursion uses the rules: shapes from ``out_shape``, caches from ``forward``,
    per-sample blocks and factors pulled back step by step from the top equal J_iᵀ H_i J_i and
    U_i J_i of the composed map (autograd of the Sequential of the same modules)."""
    mods = [nn.ZeroPad2d((1, 0, 1, 0)), nn.MaxPool2d(3, 2), nn.AvgPool2d(2, ceil_mode=True), nn.Flatten()]
    torch.manual_seed(1)
    x = torch.randn(B, 2, 8, 9, dtype=DT)
    shapes, caches, h = [tuple(x.shape[1:])], [], x
    for m in mods:
        rule = parameter_free_rule(m)
        assert rule is not None
        h, cache = rule.forward(m, h)
        caches.append(cache)
        shapes.append(rule.out_shape(m, shapes[-1]))
        assert tuple(h.shape[1:]) == shapes[-1]
    n_out = h.shape[1]
    H0 = torch.randn(B, n_out, n_out, dtype=DT)
    H0 = H0 + H0.transpose(1, 2)  # per-sample output blocks
    U0 = torch.randn(B, R, n_out, dtype=DT)  # per-sample output factors
    H, U = H0, U0
    for m, cache, in_shape in reversed(list(zip(mods, caches, shapes))):
        rule = parameter_free_rule(m)
        H = rule.jac_t_blocks(m, H, cache, in_shape)  # type: ignore[union-attr]
        U = rule.jac_t_factors(m, U, cache, in_shape)  # type: ignore[union-attr]
    J = _per_sample_jacobians(nn.Sequential(*mods), x)  # (b, n_out, n_in)
    torch.testing.assert_close(H, J.transpose(1, 2) @ H0 @ J, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(U.flatten(2), U0 @ J, rtol=1e-12, atol=1e-12)


def test_maxpool_ties_go_to_the_first_maximum_of_the_window() -> None:
    """PyTorch's indices (CPU) pick the first maximum in row-major window order; the rule follows them."""
    m = nn.MaxPool2d(2)
    x = torch.zeros(1, 1, 4, 4, dtype=DT)  # every window ties
    _, idx = MAX_POOL2D.forward(m, x)
    back = MAX_POOL2D.jac_t_vec(m, torch.ones(1, 1, 2, 2, dtype=DT), idx, (1, 4, 4))
    want = torch.zeros(4, 4, dtype=DT)
    want[0::2, 0::2] = 1  # the top-left corner of each window
    torch.testing.assert_close(back[0, 0], want, rtol=0, atol=0)
    assert not MAX_POOL2D.sample_independent


def test_overlapping_maxpool_windows_add_where_they_pick_one_input_twice() -> None:
    m = nn.MaxPool2d(3, stride=1)
    x = torch.zeros(1, 1, 4, 4, dtype=DT)
    x[0, 0, 1, 1] = 5.0  # the maximum of all four windows
    _, idx = MAX_POOL2D.forward(m, x)
    back = MAX_POOL2D.jac_t_vec(m, torch.ones(1, 1, 2, 2, dtype=DT), idx, (1, 4, 4))
    assert back[0, 0, 1, 1] == 4.0 and back.sum() == 4.0


def test_registration_keeps_flatten_on_its_identity_rule() -> None:
    assert isinstance(rule_for(nn.Flatten()), IdentityRule)  # MLPs: today's fused path
    assert parameter_free_rule(nn.Flatten()) is FLATTEN
    assert parameter_free_rule(nn.Identity()) is IDENTITY_STEP
    assert parameter_free_rule(nn.Dropout(0.5).eval()) is IDENTITY_STEP
    assert parameter_free_rule(nn.Linear(2, 2)) is None and parameter_free_rule(nn.ReLU()) is None
    for cls in (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.MaxPool2d, nn.ZeroPad2d):
        assert RULES[cls].role is Role.PARAMETER_FREE
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3, 2))
    assert not chain(net).steps  # an MLP with Flatten is not a step net


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (nn.MaxPool2d(2, return_indices=True), r"return_indices=True is not supported.*return_indices=False"),
        (nn.Flatten(start_dim=2), r"only nn.Flatten\(start_dim=1, end_dim=-1\)"),
        (nn.Flatten(1, 2), r"only nn.Flatten\(start_dim=1, end_dim=-1\)"),
        (nn.Dropout(0.5), r"training mode.*net.eval\(\)"),
    ],
)
def test_unsupported_settings_are_refused_with_the_fix(module: nn.Module, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parameter_free_rule(module)


def test_shapes_that_do_not_fit_are_refused_with_the_module_named() -> None:
    with pytest.raises(ValueError, match=r"AvgPool2d.*needs feature maps \(C, H, W\).*before the nn.Flatten"):
        parameter_free_rule(nn.AvgPool2d(2)).out_shape(nn.AvgPool2d(2), (12,))  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"MaxPool2d.*does not fit per-sample input \(2, 3, 3\)"):
        MAX_POOL2D.out_shape(nn.MaxPool2d(5), (2, 3, 3))
    with pytest.raises(ValueError, match="needs the indices from its forward"):
        MAX_POOL2D.jac_t_vec(nn.MaxPool2d(2), torch.ones(1, 1, 2, 2), None, (1, 4, 4))
