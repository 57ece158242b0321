"""The Bakker et al. studies: the structure measures (float64, against torch.func), the scripts' --quick
on tiny synthetic MNIST, and their renderers."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.func import functional_call, hessian

from curvlab.losses import Loss, make_loss
from curvlab.nets import MLP
from curvlab.report import report
from curvlab.report.load import load_study
from curvlab.report.study_lowrank import cr_sigma_table, render_cr_sigma, render_lowrank_structure, structure_summary
from fixtures import write_idx_mnist

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the script loads
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


S = _script("study_lowrank_structure")
CR = _script("study_cr_sigma")
TINY_NET = "net.widths=[784,6,5,10]"  # the lowrank preset's ReLU, no biases, U(±0.2), on a tiny net


def _tiny(seed: int = 0, batch: int = 3):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    net = MLP([7, 6, 5, 4], "relu", "uniform", init_scale=0.8, bias=False).double()
    x = torch.randn(batch, 7, dtype=torch.float64)
    y = torch.randint(0, 4, (batch,))
    return net, x, y, make_loss("cross_entropy")


def _full_hessian(net: MLP, x: torch.Tensor, y: torch.Tensor, loss: Loss) -> tuple[torch.Tensor, list[int]]:
    """The dense Hessian of one sample's loss w.r.t. all weights (row-major, layer by layer)."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    sizes = [p.numel() for _, p in net.named_parameters()]

    def f(theta: torch.Tensor) -> torch.Tensor:
        ps = {n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        return loss(functional_call(net, ps, (x[None],)), y[None])

    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return hessian(f)(theta), sizes


def test_per_sample_gradients_are_outer_products() -> None:
    net, x, y, loss = _tiny()
    rows = S.grad_rank1_rows(net, x, y, loss)
    assert len(rows) == 3 * net.depth
    assert max(r["s2_s1"] for r in rows) < 1e-12
    assert max(r["formula_rel_err"] for r in rows) < 1e-12


def test_sv_ratio_and_ranks_detect_what_is_not_rank_one() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    u, v = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)
    assert S.sv_ratio(torch.outer(u, v))[1] < 1e-14
    assert S.sv_ratio(a)[1] > 0.05  # a generic matrix is not an outer product
    assert S.sv_ratio(torch.outer(u, v) + 1e-3 * a)[1] == pytest.approx(1e-3, rel=2.0)
    three = sum(torch.outer(torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen,
                                                                                         dtype=torch.float64))
                for _ in range(3))
    assert S.ranks(three)[0] == 3
    assert S.ranks(torch.eye(4, dtype=torch.float64)) == (4, pytest.approx(4.0))


def test_hessian_formulas_match_torch_func_on_every_block() -> None:
    """Eq. 5 (diagonal and off-diagonal) on full blocks, and the sub-block Hessian, against torch.func.hessian."""
    net, x, y, loss = _tiny(seed=2)  # a seed where no block is zero (no layer dead for a sample)
    for i in range(len(y)):
        h, sizes = _full_hessian(net, x[i], y[i], loss)
        off = torch.tensor([0, *sizes]).cumsum(0)
        f = S.factors(net, x[i], y[i], loss)
        full = [S.Sub(t, torch.arange(net.widths[t + 1]), torch.arange(net.widths[t])) for t in range(net.depth)]
        for a in range(net.depth):
            for b in range(net.depth):
                ref = h[off[a]:off[a + 1], off[b]:off[b + 1]]
                assert torch.linalg.matrix_norm(ref) > 1e-6  # not trivially zero
                assert torch.allclose(S.formula_block(f, full[a], full[b]), ref, atol=1e-12, rtol=1e-10)
        subs = S.pick_subs(net, f, 3, [0, 2])  # sub-blocks: the same entries of the dense Hessian
        sub = S.sub_hessian(net, x[i:i + 1], y[i:i + 1], loss, subs)
        idx = torch.cat([off[s.t] + (s.rows[:, None] * net.widths[s.t] + s.cols[None, :]).reshape(-1) for s in subs])
        assert torch.allclose(sub, h[idx][:, idx], atol=1e-12)


def test_kronecker_fit_is_exact_only_for_kronecker_products() -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 3, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen, dtype=torch.float64)
    err, ratio = S.kronecker_fit(torch.kron(a, torch.outer(b, b)), 3, 4)
    assert err < 1e-14 and ratio < 1e-14
    err, ratio = S.kronecker_fit(torch.randn(12, 12, generator=gen, dtype=torch.float64), 3, 4)
    assert err > 0.3 and ratio > 0.05


def test_plateau_exit_is_the_first_evaluation_below_the_fraction() -> None:
    rows = [{"step": "0", "train_loss": "2.0"}, {"step": "5", "train_loss": ""}, {"step": "10", "train_loss": "1.85"},
            {"step": "20", "train_loss": "1.79"}, {"step": "30", "train_loss": "1.5"}]
    assert CR.plateau_exit(rows) == 20
    assert CR.plateau_exit(rows[:3]) is None


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_idx_mnist(root, n_train=64, n_test=32)
    return root


@pytest.fixture(scope="module")
def structure_study(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lowrank_structure")
    assert S.main(["--quick", "--out", str(out), "--data-root", str(mnist_root), "--set", TINY_NET, "--sub", "3"]) == 0
    return out


@pytest.fixture(scope="module")
def cr_study(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cr_sigma")
    assert CR.main(["--quick", "--out", str(out), "--data-root", str(mnist_root), "--set", TINY_NET, "--steps", "8",
                    "--eval-every", "4", "--eval-subset", "16", "--sigmas", "1,10000"]) == 0
    return out


def test_structure_quick_on_tiny_mnist(structure_study: Path) -> None:
    st = load_study(structure_study)
    assert st.meta["study"] == "lowrank_structure" and st.meta["widths"] == [784, 6, 5, 10]
    d = st.data
    assert set(d["part"]) == {"grad_rank1", "hess_block", "batch_rank", "storage"}
    summary = structure_summary(d)
    assert (summary["value"].drop(index=summary.index[-1]) < 1e-12).all()  # exact structure, float64
    grads = d[(d["part"] == "batch_rank") & (d["quantity"] == "gradient")]
    assert (grads["num_rank"] <= grads["max_rank"]).all() and grads["num_rank"].max() > 1  # batch means: not rank 1
    storage = d[d["part"] == "storage"].set_index("representation")["floats"]
    assert storage["gradient (dense)"] == 784 * 6 + 6 * 5 + 5 * 10


def test_structure_refuses_a_missing_dataset_and_other_nets(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--data-root"):
        S.main(["--quick", "--out", str(tmp_path / "o"), "--data-root", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="net.activation=sigmoid"):
        S.main(["--quick", "--out", str(tmp_path / "o"), "--set", "net=tiny"])


def test_cr_sigma_quick_on_tiny_mnist(cr_study: Path) -> None:
    st = load_study(cr_study)
    d = st.data
    assert st.meta["complete"] and st.meta["steps"] == 8
    assert sorted(d["method"]) == ["cr", "cr", "sgd", "sgd", "sgd"]
    assert sorted(d.loc[d["method"] == "cr", "sigma"]) == [1.0, 10000.0]
    sgd = d[d["method"] == "sgd"]
    assert sgd["mean_alpha_over_lr"].to_numpy() == pytest.approx(1.0)  # plain SGD steps by lr itself
    assert (d["steps_run"] == 8).all() and d["final_train_loss"].notna().all()


def test_renderers_write_tables_and_figures(structure_study: Path, cr_study: Path, tmp_path: Path) -> None:
    files = render_lowrank_structure(load_study(structure_study), tmp_path, {"tables", "figures"})
    files += render_cr_sigma(load_study(cr_study), tmp_path, {"tables", "figures"})
    names = {f.name for f in files}
    assert {"lowrank_structure.md", "lowrank_structure_ranks.md", "lowrank_structure_storage.md",
            "lowrank_structure.png", "cr_sigma.md", "cr_sigma.png", "cr_sigma.pdf"} <= names
    assert all(f.stat().st_size > 0 for f in files)
    tab = pd.read_csv(tmp_path / "cr_sigma.csv", index_col=0)
    assert list(tab.index[:2]) == ["CR on SGD, sigma = 1", "CR on SGD, sigma = 10000"]


def test_cr_sigma_table_marks_diverged_and_never() -> None:
    d = pd.DataFrame([
        {"method": "sgd", "value": 10.0, "seed": 0, "status": "failed", "final_train_loss": float("nan"),
         "exit_step": None, "mean_alpha_over_lr": 1.0, "mean_alpha": 10.0},
        {"method": "cr", "value": 100.0, "seed": 0, "status": "completed", "final_train_loss": 1.0,
         "exit_step": 300.0, "mean_alpha_over_lr": 50.0, "mean_alpha": 1.0},
        {"method": "cr", "value": 100.0, "seed": 1, "status": "completed", "final_train_loss": 2.0,
         "exit_step": None, "mean_alpha_over_lr": 70.0, "mean_alpha": 1.4},
    ])
    tab = cr_sigma_table(d)
    assert tab.loc["plain SGD, lr = 10", "final train loss"] == "diverged"
    assert tab.loc["plain SGD, lr = 10", "steps to leave"] == "never"
    row = tab.loc["CR on SGD, sigma = 100"]
    assert row["left plateau"] == "1/2" and row["steps to leave"] == "300"
    assert row["final train loss"] == "1.5 ± 0.71" and row["mean alpha/lr"] == pytest.approx(60.0)


def test_report_renders_both_studies(structure_study: Path, cr_study: Path, tmp_path: Path) -> None:
    for src, name in ((structure_study, "lowrank_structure"), (cr_study, "cr_sigma")):
        dst = tmp_path / "runs" / name
        dst.mkdir(parents=True)
        for f in ("study.json", "data.csv"):
            (dst / f).write_bytes((src / f).read_bytes())
        assert json.loads((dst / "study.json").read_text())["study"] == name
    files = report([tmp_path / "runs"], tmp_path / "out")
    # Their own renderers (registered in STUDY_RENDERERS), not the generic one-table fallback.
    assert {"lowrank_structure_ranks.md", "lowrank_structure.png", "cr_sigma.png"} <= {f.name for f in files}
