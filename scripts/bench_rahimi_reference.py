"""Benchmark: curvlab's exact Hessian inverse against Rahimi's own reference code, side by side.

On the shapes of ``bench_exact_inverse.py`` (input/width/depth/batch: 8/8/8/4, 8/8/64/4,
16/16/16/8, 32/32/16/8, 64/32/16/16; tanh; float64) this solves ``(H + λI) u = v`` for the full
Hessian of the batch-mean cross-entropy (10 classes) twice: with
:func:`curvlab.solvers.exact_inverse.hessian_inverse_product` and with the reference
implementation of Rahimi's paper ("The Hessian of tall-skinny networks is easy to invert"),
``SequenceOfDenseBlocks.hessian_inverse_product`` (derivatives by ``torch.func``, then the
augmented system pivoted to block-tridiagonal form and solved by a block LDU sweep).

The two problems are identical: the reference's nets have no biases, so curvlab's MLP is built
without biases too (``bias=False``; the issue-9 benchmark uses biases, so its P differs), and its
weights are copied into the reference's model; same batch, labels, loss, damping and ``v``.
The solutions are compared (``‖u_curvlab − u_ref‖/‖u_ref‖``) and each one's residual
``‖(H + λI)u − v‖/‖v‖`` is measured with exact double-backward Hessian-vector products.

Times are process CPU time (``time.process_time``) with one torch thread, timed round-robin
with the unit, one HVP (:func:`curvlab.hvp.hvp`), so that a noisy machine loads them alike:
medians of 7 rounds (HVP: 4 timed calls after an untimed one; curvlab: 1 after an untimed one)
and of ``--ref-rounds`` single reference calls (seconds each; one untimed call per shape comes
first). "curvlab faster by" is reference time ÷ curvlab time.

The reference code is not part of curvlab and is not shipped with it. Get it from the public
repository ``a-rahimi/hessian`` on GitHub: ``src/hessian.py`` and
``src/block_partitioned_matrices.py`` (measured: the batch-capable ``hessian.py`` whose
``hessian_inverse_product(z_in, target, b, epsilon)`` solves by the block LDU sweep, with
``block_partitioned_matrices.py`` of commit 47ef70c). Put both files, unchanged, in a directory
outside this repository and pass it as ``--reference-dir``. That code is written for
Python ≥ 3.14 (lazily evaluated annotations); on older Pythons :func:`load_reference` compiles it
as if under ``from __future__ import annotations`` and lets ``singledispatchmethod.register``
evaluate only the dispatch argument's annotation, as 3.14 does; no line of it is changed.
It makes float32 constants, so the default dtype is set to float64 here.

Usage: ``python scripts/bench_rahimi_reference.py --reference-dir DIR [--quick] [--damping 1e-3]``
(or ``RAHIMI_REFERENCE_DIR=DIR make bench``; without a directory it says it is skipped).
"""

from __future__ import annotations
import __future__

import argparse
import functools
import importlib.util
import inspect
import os
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from curvlab.hvp import flatten, hvp
from curvlab.nets import MLP
from curvlab.solvers.exact_inverse import hessian_inverse_product

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_exact_inverse import CONFIGS, N_CLASSES  # noqa: E402  (the same shapes: input, width, depth, batch)

REFERENCE_REPO = "a-rahimi/hessian (https://github.com/a-rahimi/hessian)"
REFERENCE_FILES = ("block_partitioned_matrices", "hessian")  # import order: hessian imports the other


def _dispatch_on_first_argument(original: Callable[..., Any]) -> Callable[..., Any]:
    """``singledispatchmethod.register`` that evaluates only the dispatch argument's annotation."""

    def register(self: functools.singledispatchmethod, cls: Any, method: Callable | None = None) -> Any:
        if method is None and isinstance(cls, types.FunctionType):
            arg = list(inspect.signature(cls).parameters)[1]  # the one after ``self``
            annotation = cls.__annotations__[arg]
            while isinstance(annotation, str):  # a postponed annotation, or a quoted one inside it
                annotation = eval(annotation, cls.__globals__)  # the reference's own names
            return self.dispatcher.register(annotation, func=cls)
        return original(self, cls, method)

    return register


def load_reference(directory: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """Import the reference's ``block_partitioned_matrices`` and ``hessian`` modules from ``directory``.

    Exits with a message naming the repository if a file is missing. Before Python 3.14 each file
    is compiled with postponed annotations and loaded under :func:`_dispatch_on_first_argument`.
    """
    paths = [directory / f"{name}.py" for name in REFERENCE_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(
            f"reference code not found: {', '.join(missing)}. It is not shipped with curvlab: get "
            f"src/hessian.py and src/block_partitioned_matrices.py from {REFERENCE_REPO} and pass "
            "their directory as --reference-dir."
        )
    lazy = sys.version_info >= (3, 14)
    flags = 0 if lazy else __future__.annotations.compiler_flag
    original = functools.singledispatchmethod.register
    if not lazy:
        functools.singledispatchmethod.register = _dispatch_on_first_argument(original)  # type: ignore[method-assign]
    modules = []
    try:
        for name, path in zip(REFERENCE_FILES, paths):
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            code = compile(path.read_text(encoding="utf-8"), str(path), "exec", flags=flags, dont_inherit=True)
            exec(code, module.__dict__)  # noqa: S102 - the reference module, as an import would
            modules.append(module)
    finally:
        functools.singledispatchmethod.register = original  # type: ignore[method-assign]
    bpm, reference = modules
    if not hasattr(getattr(reference, "SequenceOfDenseBlocks", None), "hessian_inverse_product"):
        sys.exit(f"{paths[1]} has no SequenceOfDenseBlocks.hessian_inverse_product: not the code of {REFERENCE_REPO}")
    return bpm, reference


def timed(fn: Callable[[], object]) -> float:
    """CPU time of one call of ``fn``."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: dict[str, int], calls: dict[str, int], warm: set[str]
) -> dict[str, float]:
    """Median CPU time of each ``fn``, timed round-robin over ``rounds[k]`` rounds of ``calls[k]``
    timed calls, each round led by one untimed call for the keys in ``warm`` (cold caches right after
    a large solve slow the first HVPs down)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(max(rounds.values())):
        for k, fn in fns.items():
            if i < rounds[k]:
                if k in warm:
                    fn()
                times[k] += [timed(fn) for _ in range(calls[k])]
    return {k: statistics.median(v) for k, v in times.items()}


def run(
    cfg: tuple[int, int, int, int], damping: float, ref_rounds: int, bpm: types.ModuleType, reference: types.ModuleType
) -> dict[str, Any]:
    """Build one shape's problem for both codes, check that the solutions agree, and time them."""
    n_in, width, depth, batch = cfg
    torch.manual_seed(0)
    net = MLP([n_in] + [width] * (depth - 1) + [N_CLASSES], activation="tanh", bias=False).double()
    x = torch.randn(batch, n_in, dtype=torch.float64)
    y = torch.randint(0, N_CLASSES, (batch,))
    ref_net = reference.SequenceOfDenseBlocks(n_in, width, N_CLASSES, num_layers=depth, activation=torch.tanh)
    ref_net = ref_net.double()
    ref_layers = list(ref_net)
    assert len(ref_layers) == net.depth
    with torch.no_grad():
        for ref_layer, layer in zip(ref_layers, net.layers):
            ref_layer.linear.weight.copy_(layer.weight)  # (out, in), row-major in both vectorisations
    n_params = sum(p.numel() for p in net.parameters())
    v = torch.randn(n_params, dtype=torch.float64)
    sizes = [layer.linear.weight.numel() for layer in ref_layers]
    b = bpm.Vertical([bpm.Tensor(c.reshape(-1, 1)) for c in v.split(sizes)])

    def ours() -> torch.Tensor:
        return hessian_inverse_product(net, x, y, v, damping)

    def theirs() -> torch.Tensor:
        return ref_net.hessian_inverse_product(x, y, b, damping).to_tensor().detach().reshape(-1)

    def residual(u: torch.Tensor) -> float:
        return float((flatten(hvp(net, x, y, u)) + damping * u - v).norm() / v.norm())

    u_ref, u = theirs(), ours()  # also the untimed first calls
    row: dict[str, Any] = {"input": n_in, "width": width, "depth": depth, "batch": batch, "params": n_params}
    row.update(rel_diff=float((u - u_ref).norm() / u_ref.norm()))
    row.update(res_ref=residual(u_ref), res_curvlab=residual(u))
    fns = {"hvp": lambda: flatten(hvp(net, x, y, v)), "curvlab": ours, "reference": theirs}
    t = interleaved(
        fns,
        rounds={"hvp": 7, "curvlab": 7, "reference": ref_rounds},
        calls={"hvp": 4, "curvlab": 1, "reference": 1},
        warm={"hvp", "curvlab"},
    )
    row.update(hvp_s=t["hvp"], curvlab_s=t["curvlab"], reference_s=t["reference"])
    row.update(ref_over_hvp=t["reference"] / t["hvp"], curvlab_over_hvp=t["curvlab"] / t["hvp"])
    row.update(speedup=t["reference"] / t["curvlab"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--reference-dir", type=Path, default=os.environ.get("RAHIMI_REFERENCE_DIR"),
        help=f"directory with the reference code of {REFERENCE_REPO} (default: $RAHIMI_REFERENCE_DIR)",
    )
    ap.add_argument("--quick", action="store_true", help="only the three smallest shapes")
    ap.add_argument("--damping", type=float, default=1e-3)
    ap.add_argument("--ref-rounds", type=int, default=3, help="timed calls of the reference per shape (seconds each)")
    args = ap.parse_args()
    if args.reference_dir is None:  # `make bench` runs every bench script without arguments
        print(f"skipped: the reference code is not shipped; get it from {REFERENCE_REPO} and pass "
              "--reference-dir DIR (or set RAHIMI_REFERENCE_DIR)")
        return
    if not args.reference_dir.is_dir():
        sys.exit(f"--reference-dir {args.reference_dir} is not a directory; get the code from {REFERENCE_REPO}")
    torch.set_default_dtype(torch.float64)  # the reference builds float32 constants otherwise
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # the reference's hooks
    bpm, reference = load_reference(args.reference_dir.resolve())
    configs = CONFIGS[:3] if args.quick else CONFIGS
    print(f"(H + damping I)^-1 v, tanh, float64, no biases, damping {args.damping}, 1 torch thread, CPU-time medians")
    t_start = time.perf_counter()
    rows = []
    for cfg in configs:
        r = run(cfg, args.damping, args.ref_rounds, bpm, reference)
        rows.append(r)
        print(
            f"  {r['input']}/{r['width']}/{r['depth']}/{r['batch']}: P {r['params']}, HVP {1e3 * r['hvp_s']:.2f} ms, "
            f"curvlab {1e3 * r['curvlab_s']:.1f} ms, reference {r['reference_s']:.2f} s",
            flush=True,
        )
        if r["rel_diff"] > 1e-6:
            print(f"  WARNING: the two solutions differ by {r['rel_diff']:.1e}", flush=True)
    print()
    print(
        "| in/width/depth/batch | P | reference ÷ HVP | curvlab ÷ HVP | curvlab faster by "
        "| agreement ‖Δu‖/‖u‖ | residual ref / curvlab |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['input']}/{r['width']}/{r['depth']}/{r['batch']} | {r['params']} | {r['ref_over_hvp']:.0f} | "
            f"{r['curvlab_over_hvp']:.1f} | {r['speedup']:.0f}× | {r['rel_diff']:.1e} | "
            f"{r['res_ref']:.0e} / {r['res_curvlab']:.0e} |"
        )
    wall = time.perf_counter() - t_start
    print(f"\nresidual = ||(H + damping I) u - v|| / ||v|| by exact HVPs; wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
