"""Benchmark: the exact damped Hessian inverse against one HVP, the dense solve and CG.

The shapes of issue 9 (input/width/depth/batch: 8/8/8/4, 8/8/64/4, 16/16/16/8, 32/32/16/8,
64/32/16/16), tanh nets in float64, for the Hessian (``H``) and the Gauss-Newton matrix (``GN``).
For each, in the same process: one double-backward Hessian-vector product (the unit),
``hessian_inverse_product`` with the pivot form chosen per layer (``auto``) and with every
layer forced to the (p_t × p_t) parameter pivot (``param``, the form used before the
push-through pivot of ``docs/exact_inverse.md`` §6), the residual ‖(M + λI)u − v‖/‖v‖ by
exact products, the dense ``torch.func`` matrix + ``torch.linalg.solve`` where P is small
enough, and plain CG with exact products to the inverse's residual (``--cg``; it stops on
non-positive curvature on the indefinite Hessian). The pivot form of each layer is printed
run-length encoded from the input layer (``s`` = state/push-through, ``p`` = parameter).

Times are process CPU time (``time.process_time``) with one torch thread: medians of calls
timed round-robin with the HVP, so that a noisy machine loads them alike (7 rounds, 2 for
``param``; in each round the first call is not timed, and the HVP is timed 4 times); the dense
matrix and solve once. Compare the ratios across machines, not the milliseconds.

Usage: ``python scripts/bench_exact_inverse.py [--quick] [--cg] [--damping 1e-3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from typing import Callable

import torch

from curvlab.hvp import dense_gauss_newton, dense_hessian, flatten, gnvp, hvp
from curvlab.losses import make_loss
from curvlab.nets import MLP
from curvlab.solvers.exact_inverse import hessian_inverse_product
from curvlab.solvers.riccati import layer_terms, pivot_forms

CONFIGS = [  # (input, width, depth, batch)
    (8, 8, 8, 4),
    (8, 8, 64, 4),
    (16, 16, 16, 8),
    (32, 32, 16, 8),
    (64, 32, 16, 16),
]
N_CLASSES = 10
DENSE_MAX_PARAMS = 4500


def timed(fn: Callable[[], object]) -> float:
    """CPU time of one call of ``fn``."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: dict[str, int], calls: dict[str, int]
) -> dict[str, float]:
    """Median CPU time of each ``fn`` over ``rounds[k]`` rounds, timed round-robin so that all see
    the same load. Each round makes ``calls[k]`` calls and times all but the first: right after a
    large solve the first HVPs run up to 2× slower (cold caches), which would flatter the ratios."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(max(rounds.values())):
        for k, fn in fns.items():
            if i < rounds[k]:
                fn()
                times[k] += [timed(fn) for _ in range(calls[k] - 1)]
    return {k: statistics.median(v) for k, v in times.items()}


def cg(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, tol: float, max_iter: int) -> tuple[int, float]:
    """Plain CG on ``apply(u) = b`` until ‖r‖ ≤ tol‖b‖: (iterations, residual; nan if pᵀAp ≤ 0)."""
    u, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), r @ r
    for it in range(1, max_iter + 1):
        ap = apply(p)
        pap = p @ ap
        if pap <= 0:
            return it, float("nan")
        a = rr / pap
        u, r = u + a * p, r - a * ap
        rr_new = r @ r
        if rr_new.sqrt() <= tol * b.norm():
            return it, float(rr_new.sqrt() / b.norm())
        p, rr = r + (rr_new / rr) * p, rr_new
    return max_iter, float(r.norm() / b.norm())


def forms_label(net: MLP, x: torch.Tensor, y: torch.Tensor) -> str:
    """The pivot form per layer from the input, run-length encoded: ``s15 p1``."""
    terms = layer_terms(net, x, y, make_loss("cross_entropy"), exact=False)
    letters = [f.value[0] for f in pivot_forms(terms, net.has_bias)]
    return " ".join(f"{c}{len(list(g))}" for c, g in itertools.groupby(letters))


def run(cfg: tuple[int, int, int, int], damping: float, curvature: str, use_cg: bool) -> dict:
    n_in, width, depth, batch = cfg
    torch.manual_seed(0)
    net = MLP([n_in] + [width] * (depth - 1) + [N_CLASSES], activation="tanh").double()
    x = torch.randn(batch, n_in, dtype=torch.float64)
    y = torch.randint(0, N_CLASSES, (batch,))
    n_params = sum(p.numel() for p in net.parameters())
    v = torch.randn(n_params, dtype=torch.float64)
    product = hvp if curvature == "exact" else gnvp

    def apply(u: torch.Tensor) -> torch.Tensor:
        return flatten(product(net, x, y, u)) + damping * u

    def inverse(pivot: str) -> torch.Tensor:
        return hessian_inverse_product(net, x, y, v, damping, curvature=curvature, pivot=pivot)

    fns = {"hvp": lambda: flatten(hvp(net, x, y, v)), "auto": lambda: inverse("auto")}
    fns["param"] = lambda: inverse("param")
    t = interleaved(fns, rounds={"hvp": 7, "auto": 7, "param": 2}, calls={"hvp": 5, "auto": 2, "param": 2})
    t_hvp, t_auto, t_param = t["hvp"], t["auto"], t["param"]
    u, u_param = inverse("auto"), inverse("param")
    res = float((apply(u) - v).norm() / v.norm())
    row = dict(curvature=curvature, input=n_in, width=width, depth=depth, batch=batch, params=n_params)
    row.update(hvp_s=t_hvp, inv_s=t_auto, inv_param_s=t_param, forms=forms_label(net, x, y))
    row.update(inv_over_hvp=t_auto / t_hvp, param_over_hvp=t_param / t_hvp, inv_residual=res)
    row.update(param_residual=float((apply(u_param) - v).norm() / v.norm()))
    if use_cg:
        t0 = time.process_time()
        iters, cg_res = cg(apply, v, max(res, 1e-12), 1000)
        row.update(cg_iters=iters, cg_residual=cg_res, cg_over_hvp=(time.process_time() - t0) / t_hvp)
    if n_params <= DENSE_MAX_PARAMS:
        eye = torch.eye(n_params, dtype=torch.float64)
        dense = dense_hessian if curvature == "exact" else dense_gauss_newton
        t0 = time.process_time()
        u_dense = torch.linalg.solve(dense(net, x, y) + damping * eye, v)
        t_dense = time.process_time() - t0
        row.update(dense_s=t_dense, dense_over_hvp=t_dense / t_hvp)
        row.update(inv_vs_dense_relerr=float((u - u_dense).norm() / u_dense.norm()))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="only the three smallest shapes")
    ap.add_argument("--cg", action="store_true", help="also run CG with exact products (slow)")
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    configs = CONFIGS[:3] if args.quick else CONFIGS
    print(f"exact Hessian inverse, tanh, float64, damping {args.damping}, 1 torch thread, CPU-time medians")
    print("kind in/wd/dep/B       P  HVP ms   inv ms  inv/HVP  param/HVP  residual  param res "
          "| dense/HVP vs dense | forms")
    tiny = MLP([2, 2], activation="tanh").double()  # warm torch.func up before the dense timings
    for dense in (dense_hessian, dense_gauss_newton):
        dense(tiny, torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, dtype=torch.long))
    rows = []
    for cfg, curvature in itertools.product(configs, ("exact", "gn")):
        r = run(cfg, args.damping, curvature, args.cg)
        rows.append(r)
        shape = f"{r['input']}/{r['width']}/{r['depth']}/{r['batch']}"
        too_big = "     (too big)    "
        dense = f"{r['dense_over_hvp']:9.0f} {r['inv_vs_dense_relerr']:8.1e}" if "dense_s" in r else too_big
        cg_txt = ""
        if args.cg:
            cg_txt = f" | CG {r['cg_iters']} its, {r['cg_over_hvp']:.0f} HVPs, res {r['cg_residual']:.0e}"
        print(
            f"{'H' if curvature == 'exact' else 'GN':4s} {shape:13s} {r['params']:6d} {1e3 * r['hvp_s']:7.2f} "
            f"{1e3 * r['inv_s']:8.1f} {r['inv_over_hvp']:8.1f} {r['param_over_hvp']:10.1f} {r['inv_residual']:9.1e} "
            f"{r['param_residual']:10.1e} | {dense} | {r['forms']}{cg_txt}",
            flush=True,
        )
    print("inv = pivot form chosen per layer by flop count; param = every layer on the (p_t x p_t) parameter pivot "
          "(the form before issue 9); residual = ||(M + damping I) u - v|| / ||v|| with exact products.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
