"""Losses: closed-form per-sample gradients and Hessians against torch.func, in float64."""

from __future__ import annotations

import pytest
import torch

from curvlab.losses import CrossEntropy, NonConvex, make_loss


def _autograd_value(name: str, o: torch.Tensor, c: torch.Tensor, delta: float = 5.0, eps: float = 0.2):
    """Per-sample loss written from the definitions, independent of the package."""
    s = torch.softmax(o, -1).gather(0, c[None])[0]  # ŷ_y (indexing by a tensor breaks vmap)
    if name == "cross_entropy":
        return -torch.log(s)
    return 1 / (1 + torch.exp(delta * (s - eps)))  # EA-CG Eq. (14)


LOSSES = [("cross_entropy", {}), ("nonconvex", {}), ("nonconvex", {"delta": 2.0, "eps": 0.5})]


@pytest.mark.parametrize(("name", "opts"), LOSSES)
def test_values_grad_hessian_match_torch_func(name: str, opts: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    out = 2 * torch.randn(9, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=gen)
    loss = make_loss(name, **opts)

    def f(o: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return _autograd_value(name, o, c, **opts)

    torch.testing.assert_close(loss.values(out, y), torch.func.vmap(f)(out, y))
    torch.testing.assert_close(loss.grad(out, y), torch.func.vmap(torch.func.grad(f))(out, y), rtol=0, atol=1e-13)
    torch.testing.assert_close(
        loss.hessian(out, y), torch.func.vmap(torch.func.hessian(f))(out, y), rtol=0, atol=1e-13
    )
    torch.testing.assert_close(loss(out, y), loss.values(out, y).mean())


def test_cross_entropy_matches_torch() -> None:
    out = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(CrossEntropy()(out, y), torch.nn.functional.cross_entropy(out, y))


def test_convexity_flags() -> None:
    assert CrossEntropy().convex and not NonConvex().convex
    # The non-convex criterion has an indefinite output Hessian somewhere.
    out = torch.tensor([[3.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.linalg.eigvalsh(NonConvex().hessian(out, torch.tensor([0])))[0].min() < 0


def test_sample_labels_follow_the_predictive_distribution() -> None:
    out = torch.log(torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64))
    draws = CrossEntropy().sample_labels(out, 20000, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (20000, 1)
    freq = torch.bincount(draws[:, 0], minlength=3).double() / 20000
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64), rtol=0, atol=0.02)


def test_make_loss_errors_and_passthrough() -> None:
    with pytest.raises(ValueError, match="unknown loss 'mse'; allowed: cross_entropy, nonconvex"):
        make_loss("mse")
    with pytest.raises(ValueError, match="delta must be > 0"):
        make_loss("nonconvex", delta=0.0)
    nc = NonConvex(delta=3.0)
    assert make_loss(nc) is nc


def test_mse_matches_torch_and_torch_func() -> None:
    """MSE in closed form: F.mse_loss's value, and torch.func's per-sample gradient and Hessian."""
    from curvlab.losses import MSE

    gen = torch.Generator().manual_seed(3)
    out = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    for y in (torch.randn(7, 4, generator=gen, dtype=torch.float64), torch.randint(0, 4, (7,), generator=gen)):
        target = y if y.is_floating_point() else torch.eye(4, dtype=torch.float64)[y]  # labels: one-hot
        torch.testing.assert_close(MSE()(out, y), torch.nn.functional.mse_loss(out, target))

        def f(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return ((o - t) ** 2).mean()

        grad, hess = torch.func.vmap(torch.func.grad(f)), torch.func.vmap(torch.func.hessian(f))
        torch.testing.assert_close(MSE().grad(out, y), grad(out, target), rtol=0, atol=1e-15)
        torch.testing.assert_close(MSE().hessian(out, y), hess(out, target), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"mse loss: targets must be \(B, C\)"):
        MSE()(out, torch.randn(7, 3, dtype=torch.float64))


@pytest.mark.parametrize("name", ["cross_entropy", "nonconvex"])
def test_function_loss_equals_the_closed_forms(name: str) -> None:
    """A loss given as a batch-mean function, differentiated per sample by torch.func."""
    from curvlab.losses import FunctionLoss

    def batch_mean(o: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # the user's function of a batch
        return torch.func.vmap(lambda oi, ci: _autograd_value(name, oi, ci))(o, c).mean()

    gen = torch.Generator().manual_seed(4)
    out = 2 * torch.randn(9, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=gen)
    own, closed = FunctionLoss(batch_mean), make_loss(name)
    for method in ("values", "grad", "hessian"):
        torch.testing.assert_close(getattr(own, method)(out, y), getattr(closed, method)(out, y), rtol=0, atol=1e-13)
    assert not own.convex and FunctionLoss(torch.nn.CrossEntropyLoss(), convex=True).convex
    module_loss = FunctionLoss(torch.nn.CrossEntropyLoss())  # an nn.Module loss works as well
    torch.testing.assert_close(module_loss.hessian(out, y), CrossEntropy().hessian(out, y), rtol=0, atol=1e-13)


def test_as_loss_resolves_names_losses_and_functions() -> None:
    from curvlab.losses import MSE, FunctionLoss, as_loss

    nc = NonConvex(delta=2.0)
    assert as_loss(nc) is nc and isinstance(as_loss("cross_entropy"), CrossEntropy) and isinstance(as_loss("mse"), MSE)
    assert isinstance(as_loss(torch.nn.functional.cross_entropy), FunctionLoss)
    with pytest.raises(ValueError, match=r"unknown name 'l1'; allowed: cross_entropy, nonconvex, mse, or a function"):
        as_loss("l1")
    with pytest.raises(ValueError, match=r"loss must be a callable"):
        as_loss(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "opts"), [*LOSSES, ("mse", {}), ("function", {})])
def test_mean_hessian_is_the_batch_mean_of_the_per_sample_hessians(name: str, opts: dict) -> None:
    """The one-pass mean Hessian (the GN/PCH output block) against the mean of the per-sample Hessians,
    in float64, exactly symmetric; cross-entropy's is PSD with the null vector 1 (rank C − 1)."""
    from curvlab.losses import MSE, FunctionLoss

    gen = torch.Generator().manual_seed(5)
    out = 3 * torch.randn(33, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 6, (33,), generator=gen)
    others = {"mse": MSE, "function": lambda: FunctionLoss(torch.nn.functional.cross_entropy)}
    loss = others[name]() if name in others else make_loss(name, **opts)
    mean = loss.mean_hessian(out, y)
    per_sample = loss.hessian(out, y).mean(0)
    assert mean.shape == (6, 6) and torch.equal(mean, mean.T)
    torch.testing.assert_close(mean, per_sample, rtol=0, atol=1e-15 * per_sample.abs().max().item())
    if name == "cross_entropy":
        assert torch.linalg.eigvalsh(mean).min() > -1e-15
        assert (mean @ torch.ones(6, dtype=torch.float64)).abs().max() < 1e-15


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_gradient_is_p_minus_one_hot_bit_for_bit(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(6)
    out = (8 * torch.randn(50, 7, generator=gen)).to(dtype)
    out[0] = -200.0  # softmax entries that underflow to +0
    out[0, 3] = 0.0
    y = torch.randint(0, 7, (50,), generator=gen)
    p = torch.softmax(out, -1)
    want = p - torch.nn.functional.one_hot(y, 7).to(dtype)
    got = CrossEntropy().grad(out, y)
    assert got.dtype == dtype and got.numpy().tobytes() == want.numpy().tobytes()  # also the signs of zeros


def test_a_bound_loss_shares_one_softmax(monkeypatch: pytest.MonkeyPatch) -> None:
    """``loss.at(out)``: gradient, Hessians and Fisher rows at ``out`` from one softmax, the same values;
    other outputs get their own softmax, and the loss itself keeps none."""
    calls = []
    softmax = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda t, dim: calls.append(t) or softmax(t, dim=dim))
    gen = torch.Generator().manual_seed(7)
    out, other = torch.randn(2, 12, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (12,), generator=gen)
    for loss in (CrossEntropy(), NonConvex(delta=3.0)):
        want = [loss.grad(out, y), loss.hessian(out, y), loss.mean_hessian(out, y)]
        calls.clear()
        bound = loss.at(out)
        got = [bound.grad(out, y), bound.hessian(out, y), bound.mean_hessian(out, y)]
        assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(got, want))
        assert bound.probs(other) is not bound.probs(out) and len(calls) == 2
        assert bound.delta == 3.0 if isinstance(loss, NonConvex) else type(bound) is CrossEntropy
        assert loss._shared is None  # the caller's loss is untouched


def test_cross_entropy_mean_hessian_is_accurate_entry_by_entry_where_p_is_near_one() -> None:
    """Every entry of the one-pass mean Hessian against exact rational arithmetic on the same p: its
    diagonal E[p (1 − p)] keeps 14 digits where diag(p̄) − E[p²] would lose them (p_y ≈ 1 − 1e-13)."""
    from fractions import Fraction

    gen = torch.Generator().manual_seed(8)
    b, c = 16, 4
    y = torch.randint(0, c, (b,), generator=gen)
    out = torch.randn(b, c, generator=gen, dtype=torch.float64)
    out[torch.arange(b), y] += 30.0  # confident and right: H_i → 0
    p = [[Fraction(v) for v in row] for row in torch.softmax(out, -1).tolist()]
    got = CrossEntropy().mean_hessian(out, y)
    for i in range(c):
        for j in range(c):
            exact = sum((p[n][i] if i == j else 0) - p[n][i] * p[n][j] for n in range(b)) / b
            assert abs(Fraction(got[i, j].item()) - exact) <= 1e-14 * abs(exact), (i, j)
