"""Identities between the kinds, option handling and devices."""

from __future__ import annotations

import pytest
import torch
from conftest import ACTIVATIONS, LOSSES, make_problem, rel_err

import curvlab
from curvlab.curvature import reference as ref
from curvlab.curvature.kinds import EA_EXACT, pos_eig
from curvlab.curvature.options import CurvatureOptions
from curvlab.curvature.recursion import backward


def _min_eig(a: torch.Tensor) -> float:
    return torch.linalg.eigvalsh(a).min().item() / max(a.abs().max().item(), 1e-30)


def _ea_exact(p) -> list[torch.Tensor]:
    """Eq. (6) with the residual kept: the EA recursion of the exact Hessian (reference)."""
    return ref.ea_blocks(p.net, p.x, p.y, p.loss, lambda h: h, lambda r: r)


@pytest.mark.parametrize("loss", LOSSES)
def test_exact_equals_gn_for_relu(loss: str) -> None:
    """ReLU has no second derivative, so GN is the Hessian: per sample (B = 1) and in EA."""
    p = make_problem("relu", loss, batch=1, widths=(4, 5, 4, 3))
    exact = curvlab.curvature(p.net, p.x, p.y, kind="exact", loss=p.loss)
    gn = curvlab.curvature(p.net, p.x, p.y, kind="gn", loss=p.loss)
    for e, g in zip(exact, gn):
        assert rel_err(e.bias, g.bias) < 1e-12
    p = make_problem("relu", loss, batch=8, widths=(4, 5, 4, 3))
    gn = curvlab.curvature(p.net, p.x, p.y, kind="gn", loss=p.loss)
    for g, e in zip(gn, _ea_exact(p)):
        assert rel_err(g.bias, e) < 1e-12


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", LOSSES)
def test_psd_kinds(activation: str, loss: str) -> None:
    p = make_problem(activation, loss, batch=8, seed=1)
    kinds = ["pch1", "pch2", "fisher"] + (["gn"] if p.loss.convex else [])
    for kind in kinds:
        for blk in curvlab.curvature(p.net, p.x, p.y, kind=kind, loss=p.loss, fisher="exact"):
            assert _min_eig(blk.bias) > -1e-12, kind


def test_psd_check_is_not_vacuous() -> None:
    """The exact blocks and GN with the non-convex loss do have negative eigenvalues here."""
    p = make_problem("sigmoid", "nonconvex", batch=8, seed=1)
    for kind in ("exact", "gn"):
        assert min(_min_eig(b.bias) for b in curvlab.curvature(p.net, p.x, p.y, kind=kind, loss=p.loss)) < -1e-3


def _mean_residuals(p) -> list[torch.Tensor]:
    """E_i[h'' ⊙ Wᵀ∇_{b^t}ξ_i] for the hidden layers, from the net's closed-form derivatives."""
    cache = p.net.forward_cache(p.x)
    g = p.loss.grad(cache.output, p.y)
    out = []
    for t in range(p.net.depth - 1, 0, -1):
        back = g @ p.net.layers[t].weight
        z = cache.preacts[t - 1]
        out.append((back * p.net.fns.d2f(z)).mean(0).detach())
        g = back * p.net.fns.df(z)
    return out


def test_pch2_equals_ea_exact_when_residuals_are_non_negative() -> None:
    """With a convex loss (PSD output block) and every E[h'' ⊙ Wᵀ∇ξ] ≥ 0, PCH-2 = EA exact."""
    for seed in range(200):
        p = make_problem("sigmoid", widths=(3, 2, 2, 3), batch=4, seed=seed)
        if all((r >= 0).all() for r in _mean_residuals(p)):
            break
    else:
        pytest.fail("no seed gave non-negative residuals")
    pch2 = curvlab.curvature(p.net, p.x, p.y, kind="pch2", loss=p.loss)
    for a, b in zip(pch2, _ea_exact(p)):
        assert rel_err(a.bias, b) < 1e-12
    # ... and PCH-1 differs from EA exact when a residual is negative.
    p = make_problem("sigmoid", widths=(3, 2, 2, 3), batch=4, seed=seed + 1)
    while all((r >= 0).all() for r in _mean_residuals(p)):
        p = make_problem("sigmoid", widths=(3, 2, 2, 3), batch=4, seed=seed + 2)
    pch1 = curvlab.curvature(p.net, p.x, p.y, kind="pch1", loss=p.loss)
    assert max(rel_err(a.bias, b) for a, b in zip(pch1, _ea_exact(p))) > 1e-6


def test_package_ea_exact_policy_matches_reference() -> None:
    p = make_problem("tanh", "nonconvex")
    opts = CurvatureOptions()
    sums = backward(p.net, p.net.forward_cache(p.x), p.y, p.loss, EA_EXACT, opts)
    for s, want in zip(sums, _ea_exact(p)):
        assert rel_err(s["block"], want) < 1e-12  # default scale 1/B: batch means


def test_mc_fisher_converges_to_exact_fisher() -> None:
    p = make_problem("tanh", batch=4)
    exact = curvlab.curvature(p.net, p.x, p.y, kind="fisher", fisher="exact")
    errs = []
    for m in (10, 1000, 100000):
        gen = torch.Generator().manual_seed(0)
        mc = curvlab.curvature(p.net, p.x, p.y, kind="fisher", fisher="mc", mc_samples=m, generator=gen)
        errs.append(max(rel_err(a.bias, b.bias) for a, b in zip(mc, exact)))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.02  # Monte-Carlo error ~ 1/√m


def test_exact_fisher_of_cross_entropy_is_its_output_hessian() -> None:
    p = make_problem("sigmoid")
    fisher = curvlab.curvature(p.net, p.x, p.y, kind="fisher", fisher="exact")
    exact = curvlab.curvature(p.net, p.x, p.y, kind="exact")
    assert rel_err(fisher[-1].bias, exact[-1].bias) < 1e-12


def test_pos_eig_takes_absolute_eigenvalues() -> None:
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([-2.0, -0.5, 0.0, 3.0], dtype=torch.float64)) @ q.T
    want = q @ torch.diag(torch.tensor([2.0, 0.5, 0.0, 3.0], dtype=torch.float64)) @ q.T
    torch.testing.assert_close(pos_eig(a), want)


@pytest.mark.parametrize("kind", ["exact", "gn", "pch", "pch1", "pch2", "fisher"])
def test_float32_close_to_float64(kind: str) -> None:
    p64 = make_problem("sigmoid", "nonconvex")
    p32 = make_problem("sigmoid", "nonconvex", dtype=torch.float32)
    b64 = curvlab.curvature(p64.net, p64.x, p64.y, kind=kind, loss="nonconvex", fisher="exact")
    b32 = curvlab.curvature(p32.net, p32.x, p32.y, kind=kind, loss="nonconvex", fisher="exact")
    for a, b in zip(b32, b64):
        assert a.bias.dtype == torch.float32
        assert rel_err(a.bias.double(), b.bias) < 1e-4


def test_pch_is_pch1() -> None:
    p = make_problem("tanh", "nonconvex")
    for a, b in zip(curvlab.curvature(p.net, p.x, p.y, kind="pch", loss=p.loss),
                    curvlab.curvature(p.net, p.x, p.y, kind="pch1", loss=p.loss)):
        torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "hessian"}, "curvature.kind.*allowed: exact, gn, fisher, pch, pch1, pch2"),
        ({"kind": "gn", "jacobian_average": "max"}, "curvature.jacobian_average"),
        ({"kind": "fisher", "fisher": "true"}, "curvature.fisher"),
        ({"kind": "fisher", "mc_samples": 0}, "mc_samples"),
        ({"kind": "gn", "damping": 1.0}, "unknown option.*damping.*allowed"),
        ({"kind": "gn", "weight_blocks": True}, "weight_blocks=True needs kind='exact'"),
        ({"kind": "gn", "loss": "mse"}, "unknown loss 'mse'"),
    ],
)
def test_bad_options_raise(kwargs: dict, match: str) -> None:
    p = make_problem()
    with pytest.raises(ValueError, match=match):
        curvlab.curvature(p.net, p.x, p.y, **kwargs)


def test_bad_labels_raise() -> None:
    p = make_problem()
    with pytest.raises(ValueError, match="integer class labels"):
        curvlab.curvature(p.net, p.x, p.y.double())
    with pytest.raises(ValueError, match="integer class labels"):
        curvlab.curvature(p.net, p.x, p.y[:-1])


def test_options_object_and_overrides() -> None:
    p = make_problem("tanh")
    opts = CurvatureOptions(kind="gn", jacobian_average="mean")
    a = curvlab.curvature(p.net, p.x, p.y, options=opts)
    b = curvlab.curvature(p.net, p.x, p.y, kind="gn", jacobian_average="mean")
    c = curvlab.curvature(p.net, p.x, p.y, kind="pch2", options=opts)  # kind overrides options.kind
    d = curvlab.curvature(p.net, p.x, p.y, kind="pch2", jacobian_average="mean")
    for u, v, w, z in zip(a, b, c, d):
        torch.testing.assert_close(u.bias, v.bias, rtol=0, atol=0)
        torch.testing.assert_close(w.bias, z.bias, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gpu_matches_cpu(dtype: torch.dtype) -> None:
    cpu = make_problem("sigmoid", "nonconvex", dtype=dtype)
    gpu = make_problem("sigmoid", "nonconvex", dtype=dtype, device="cuda")
    for kind in ("exact", "gn", "pch1", "pch2", "fisher"):
        a = curvlab.curvature(cpu.net, cpu.x, cpu.y, kind=kind, loss="nonconvex", fisher="exact", input_cov=True)
        b = curvlab.curvature(gpu.net, gpu.x, gpu.y, kind=kind, loss="nonconvex", fisher="exact", input_cov=True)
        for u, v in zip(a, b):
            assert v.bias.device.type == "cuda" and v.bias.dtype == dtype
            tol = 1e-4 if dtype == torch.float32 else 1e-10
            assert rel_err(u.bias, v.bias.cpu()) < tol
            assert rel_err(u.grad_weight, v.grad_weight.cpu()) < tol
    mc = curvlab.curvature(gpu.net, gpu.x, gpu.y, kind="fisher", mc_samples=3)
    assert mc[0].bias.device.type == "cuda"


def test_mismatched_cache_raises() -> None:
    p = make_problem()
    with pytest.raises(ValueError, match="cache holds 6 samples but x has 5"):
        curvlab.curvature(p.net, p.x[:5], p.y[:5], cache=p.net.forward_cache(p.x))


_ACTS = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}


@pytest.mark.parametrize("fisher", ["mc", "empirical", "exact"])
@pytest.mark.parametrize("act", ["relu", "sigmoid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [None, 5])
def test_fisher_factors_carrying_the_gradient_are_bitwise_the_plain_pull_back(monkeypatch, fisher, act, dtype, chunk):
    """The Fisher's factor message carries g (``SampleFactors.carry``: U's rows and g's in one buffer,
    one GEMM per layer; the empirical Fisher's factor *is* g): every returned tensor must be bitwise
    what separate pull-backs of g and of U give, and no layer may pull U back on its own."""
    from dataclasses import replace as dc_replace

    from curvlab.curvature import kinds as kinds_module
    from curvlab.curvature.messages import SampleFactors
    from curvlab.curvature.options import Kind
    from curvlab.modules.linear import LinearRule

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 9), _ACTS[act](), torch.nn.Linear(9, 7), _ACTS[act](),
                              torch.nn.Linear(7, 5)).to(dtype)
    x, y = torch.randn(16, 12, dtype=dtype), torch.randint(0, 5, (16,))

    def run() -> list:
        gen = torch.Generator().manual_seed(3)
        return curvlab.curvature(net, x, y, kind="fisher", fisher=fisher, mc_samples=2, input_cov=True,
                                 generator=gen, chunk_size=chunk, grad_samples=(1,))

    calls = {"jac_t_factors": 0}
    own = LinearRule.jac_t_factors

    def counted(self, m, factors, d):  # the separate pull-back of U
        calls["jac_t_factors"] += 1
        return own(self, m, factors, d)

    monkeypatch.setattr(LinearRule, "jac_t_factors", counted)
    fast = run()
    assert calls["jac_t_factors"] == 0  # U went back with g

    def plain(loss, out, yy, opts, gen):
        return SampleFactors(kinds_module.fisher_factors(loss, out, yy, opts.fisher, opts.mc_samples, gen))

    monkeypatch.setitem(kinds_module.KINDS, Kind.FISHER, dc_replace(kinds_module.KINDS[Kind.FISHER], output=plain))
    monkeypatch.setattr(SampleFactors, "carry", lambda self, g: self)
    slow = run()
    assert calls["jac_t_factors"] == 2 * (1 if chunk is None else 4)  # two hidden layers, per chunk
    for a, b in zip(fast, slow):
        for field in ("bias", "grad_bias", "grad_weight", "grad_samples", "input_mean", "input_cov"):
            va, vb = getattr(a, field), getattr(b, field)
            assert (va is None and vb is None) or torch.equal(va, vb), field
