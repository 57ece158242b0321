#!/usr/bin/env python
"""Bakker et al.'s cost claim: the CR step's work against depth, beside a gradient step.

Section 4 of Bakker et al. (2018): "The number of matrix multiplications involved in calculating
the components of Equation 9 ... scales quadratically with the number of layers (see the
derivations in Appendix B)". On ReLU nets of ``depth`` hidden layers of ``--width`` units
(MNIST-sized input 784, 10 classes, no biases as in their Appendix B, batch ``--batch``,
synthetic data: only shapes matter for time) this times one training update, median of
``--repeats``:

- ``gradient step``: backward pass and θ ← θ − lr ∇f (plain SGD);
- ``CR step (curvlab)``: the same gradient, then α of Eq. (9) from one forward-over-forward
  pass (:func:`curvlab.solvers.cr.cr_step`), θ ← θ − α ∇f;
- ``CR step (Eq. 39)``: the same gradient, then gᵀ∇f and gᵀHg from the low-rank formulae of
  their Appendix B (Eqs. 38–40), evaluated as written, with the per-sample matrices η^{(k−1,r)}
  of every layer pair r < k: n(n−1)/2 batched matrix products for n hidden layers
  (:func:`lowrank_directional`), θ ← θ − α ∇f.

Writes ``study.json`` + tidy ``data.csv`` (sweep, value, method, repeat, seconds, cpu_seconds,
params, matmuls) into ``--out``; ``curvlab report`` fits the exponent of time against depth and
draws it. ``cpu_seconds`` (the process's CPU time) is what the report uses: on a shared machine
the wall-clock ``seconds`` also count the time other processes held the core.

    OMP_NUM_THREADS=1 python scripts/study_cr_depth.py --out results/runs/studies/cr_depth
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from curvlab import runfiles as rf
from curvlab.solvers.cr import cr_alpha, cr_step

__all__ = ["relu_net", "lowrank_directional", "measure", "main"]


def relu_net(depth: int, width: int, n_in: int = 784, n_out: int = 10) -> nn.Sequential:
    """Bakker et al.'s net (Appendix B, Eqs. 10–13): ``depth`` ReLU layers w^{(k)}, then p = u v^{(n)}; no biases."""
    layers: list[nn.Module] = []
    for k in range(depth):
        layers += [nn.Linear(n_in if k == 0 else width, width, bias=False), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, n_out, bias=False))


def lowrank_directional(net: nn.Sequential, x: Tensor, y: Tensor, direction: list[Tensor],
                        as_printed: bool = False) -> tuple[Tensor, Tensor]:
    """(gᵀ∇F, gᵀHg) of the batch-mean cross-entropy by Bakker et al.'s Eqs. (38)–(39).

    Per sample b (shapes with the batch first): γ_k = A'(z_k) (B, n_k), β^{(k)} = γ_k w^{(k)}
    (B, n_k, n_{k−1}), α^{(k,l)} = β^{(k)} ⋯ β^{(l+1)} (Eq. 21), η^{(k,l)} = α^{(k,l)} diag(γ_l)
    (Eq. 23); ψ_k = φ^{(k)} v^{(k−1)} (B, n_k) for the direction φ^{(k)} of w^{(k)} and ω of u.
    With J = ω v^{(n)} + Σ_k u η^{(n,k)} ψ_k (B, C) and δ_k = η^{(n,k)ᵀ} uᵀ ∂F/∂p (B, n_k):

        gᵀ∇F = Σ_b ∂F/∂pᵀ J                                        (Eq. 38)
        gᵀHg = Σ_b [Jᵀ ∂²F/∂p² J + 2 ∂F/∂pᵀ ω Σ_k η^{(n,k)} ψ_k
                    + 2 Σ_{k>r} δ_kᵀ φ^{(k)} η^{(k−1,r)} ψ_r]          (Eq. 39)

    The last sum forms η^{(k−1,r)} for every pair r < k: the quadratic count of matrix products.
    Eq. (39)'s third line, as printed, keeps only the k = r Gauss-Newton terms of the hidden layers
    (``as_printed=True`` evaluates it so); the cross terms k ≠ r of Eq. (36) belong to the exact
    Hessian, and Jᵀ ∂²F/∂p² J adds them at no extra matrix product. The ReLU's A'' = 0 (Eq. 29).
    Checked against forward-over-forward AD in ``tests/test_study_cr_depth.py``.
    """
    linears = [m for m in net if isinstance(m, nn.Linear)]
    ws, u = [m.weight for m in linears[:-1]], linears[-1].weight
    phis, omega = direction[:-1], direction[-1]
    with torch.no_grad():
        vs, gammas = [x], []
        for w in ws:  # Eq. (10)
            z = vs[-1] @ w.T  # (B, n_k)
            gammas.append((z > 0).to(x.dtype))
            vs.append(torch.relu(z))
        p = vs[-1] @ u.T  # (B, C)
        prob = torch.softmax(p, dim=1)
        batch = x.shape[0]
        dp = (prob - F.one_hot(y, p.shape[1]).to(x.dtype)) / batch  # ∂F/∂p per sample: F is the batch mean
        hp = (torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]) / batch  # (B, C, C)
        n = len(ws)
        betas = {k: gammas[k][:, :, None] * ws[k] for k in range(1, len(ws))}  # β^{(k)}: (B, n_k, n_{k−1}), k ≥ 2
        psis = [v @ phi.T for v, phi in zip(vs[:-1], phis)]  # ψ_k = φ^{(k)} v^{(k−1)}: (B, n_k)
        # η^{(n,k)} for k = n … 1 (Eq. 23), from α^{(n,k)} = α^{(n,k+1)} β^{(k+1)}
        alpha = torch.diag_embed(torch.ones_like(gammas[-1]))  # α^{(n,n)} = I: (B, n_n, n_n)
        eta_top: list[Tensor] = [alpha * gammas[-1][:, None, :]]
        for k in range(n - 2, -1, -1):
            alpha = alpha @ betas[k + 1]
            eta_top.insert(0, alpha * gammas[k][:, None, :])  # η^{(n,k)}: (B, n_n, n_k)
        tangent = sum(torch.einsum("bij,bj->bi", e, s) for e, s in zip(eta_top, psis))  # Σ_k η^{(n,k)} ψ_k
        jac = vs[-1] @ omega.T + tangent @ u.T  # J: (B, C)
        g_grad = (dp * jac).sum()
        ghg = torch.einsum("bi,bij,bj->", jac, hp, jac) + 2 * (dp * (tangent @ omega.T)).sum()
        if as_printed:  # drop the Gauss-Newton cross terms 2 Σ_{k>r} J_kᵀ ∂²F/∂p² J_r of the hidden layers
            per_layer = [torch.einsum("bij,bj->bi", e, s) @ u.T for e, s in zip(eta_top, psis)]  # J_k: (B, C)
            hidden = sum(per_layer)
            ghg = ghg - torch.einsum("bi,bij,bj->", hidden, hp, hidden) + sum(
                torch.einsum("bi,bij,bj->", j, hp, j) for j in per_layer)
        deltas = [torch.einsum("bji,bj->bi", e, dp @ u) for e in eta_top]  # δ_k: (B, n_k)
        for k in range(1, n):  # layer pairs r < k (0-based): η^{(k−1,r)} = α^{(k−1,r)} diag(γ_r)
            alpha = torch.diag_embed(torch.ones_like(gammas[k - 1]))  # α^{(k−1,k−1)} = I
            for r in range(k - 1, -1, -1):
                if r < k - 1:
                    alpha = alpha @ betas[r + 1]  # α^{(k−1,r)} = α^{(k−1,r+1)} β^{(r+1)}: (B, n_{k−1}, n_r)
                e = torch.einsum("bij,bj->bi", alpha * gammas[r][:, None, :], psis[r])  # η^{(k−1,r)} ψ_r
                ghg = ghg + 2 * torch.einsum("bi,ij,bj->", deltas[k], phis[k], e)
    return g_grad, ghg


def _gradient(net: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()
    return [p.grad.detach().clone() for p in net.parameters()]  # type: ignore[union-attr]


def _step(net: nn.Module, direction: list[Tensor], alpha: float) -> None:
    with torch.no_grad():
        for p, d in zip(net.parameters(), direction):
            p.add_(d, alpha=alpha)


def methods(net: nn.Sequential, x: Tensor, y: Tensor, sigma: float, lr: float) -> dict[str, Callable[[], object]]:
    """One update of each method on the same batch (the net moves; the timing does not depend on where)."""
    def grad_step() -> None:
        _step(net, _gradient(net, x, y), -lr)

    def cr_curvlab() -> None:
        d = [-g for g in _gradient(net, x, y)]
        _step(net, d, cr_step(net, x, y, d, sigma).alpha)

    def cr_lowrank() -> None:
        d = [-g for g in _gradient(net, x, y)]
        g_grad, ghg = lowrank_directional(net, x, y, d)
        norm = float(torch.sqrt(sum((v * v).sum() for v in d)))
        _step(net, d, cr_alpha(float(ghg), float(g_grad), norm, sigma)[0])

    return {"gradient step": grad_step, "CR step (curvlab)": cr_curvlab, "CR step (Eq. 39)": cr_lowrank}


def measure(depth: int, width: int, batch: int, repeats: int, sigma: float = 100.0, lr: float = 0.02) -> list[dict]:
    """Seconds per update of each method on a ``depth``-layer ReLU net; the methods interleave per repeat, so a
    busy machine slows them alike."""
    torch.manual_seed(0)
    net = relu_net(depth, width)
    for m in net:
        if isinstance(m, nn.Linear):
            nn.init.uniform_(m.weight, -0.2, 0.2)  # Bakker et al. Appendix A (no plateau)
    x, y = torch.rand(batch, 784), torch.randint(0, 10, (batch,))
    calls = methods(net, x, y, sigma, lr)
    params = sum(p.numel() for p in net.parameters())
    rows = []
    for fn in calls.values():
        fn()  # warm-up: allocations, lazy imports
    for r in range(repeats):
        for name, fn in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            rows.append({"sweep": "depth", "value": depth, "method": name, "repeat": r,
                         "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                         "params": params, "width": width, "batch": batch,
                         "matmuls": depth * (depth - 1) // 2 if "Eq. 39" in name else 0})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/studies/cr_depth")
    p.add_argument("--depths", default="2,4,6,8,12,16", help="hidden layers (comma-separated)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sweep for tests")
    a = p.parse_args(argv)
    if a.quick:
        a.depths, a.width, a.batch, a.repeats = "2,3", 8, 4, 1
    t0 = time.perf_counter()
    rows = []
    for depth in map(int, a.depths.split(",")):
        rows += measure(depth, a.width, a.batch, a.repeats)
        cpu = {m: sorted(r["cpu_seconds"] for r in rows if r["value"] == depth and r["method"] == m) for m in
               dict.fromkeys(r["method"] for r in rows)}
        print(f"depth {depth}: " + ", ".join(f"{m} {v[len(v) // 2]:.4f} s" for m, v in cpu.items()), flush=True)
    about = {k: getattr(a, k) for k in ("width", "batch", "repeats")}
    rf.write_study(a.out, rows, {"study": "cr_depth", "name": "cr_depth", **about, "activation": "relu", "input": 784,
                                 "paper": "Bakker et al. (2018), Section 4 and Appendix B",
                                 "seconds": round(time.perf_counter() - t0, 2),
                                 "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads"})
    print(f"{len(rows)} rows (median CPU seconds above) into {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
