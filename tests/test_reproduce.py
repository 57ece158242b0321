"""The reproduce path (scripts/reproduce.py → runs → curvlab report) at ci scale on tiny data."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

from fixtures import write_idx_mnist, write_npz

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
reproduce = importlib.util.module_from_spec(_spec)
sys.modules["reproduce"] = reproduce  # dataclasses look their module up while the script loads
_spec.loader.exec_module(reproduce)  # type: ignore[union-attr]

TINY = ["--set", "net=tiny"]  # every preset on a one-hidden-layer net


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --data-root with tiny synthetic copies in the layout of ../shared/data (32 px images)."""
    root = tmp_path_factory.mktemp("data")
    write_npz(root / "cifar10_jpeg.npz", n_train=64, n_test=32, size=32)
    write_npz(root / "imagenette_32.npz", n_train=64, n_test=32, size=32, seed=1)
    write_idx_mnist(root, n_train=64, n_test=32)
    return root


def _args(kind: str, root: Path, tmp: Path, *extra: str) -> list[str]:
    return [kind, "--scale", "ci", "--data-root", str(root), "--runs-dir", str(tmp / "runs"),
            "--out", str(tmp / kind), "--train-subset", "64", "--test-subset", "32", *TINY, *extra]


def _check_markdown(path: Path) -> None:
    rows = [line for line in path.read_text().splitlines() if line.startswith("|")]
    assert len(rows) >= 3 and len({r.count("|") for r in rows}) == 1, path


def test_reproduce_tables_ci(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tables = [f"eacg_table{n}" for n in (2, 3, 4, 5)]
    only = [x for t in tables for x in ("--only", t)]
    assert reproduce.main(_args("tables", tiny_root, tmp_path, *only)) == 0
    out = tmp_path / "tables"
    for t in tables:
        for suffix in (".md", ".csv", ".tex", "_vs_paper.md", "_vs_paper.csv", "_vs_paper.tex"):
            assert (out / f"{t}{suffix}").stat().st_size > 0, (t, suffix)
        _check_markdown(out / f"{t}.md")
        _check_markdown(out / f"{t}_vs_paper.md")
        tab = pd.read_csv(out / f"{t}.csv", index_col=0)
        assert list(tab.index) == ["Layer-1", "Layer-2", "Total"]  # net=tiny has two layers
        convex = t in ("eacg_table2", "eacg_table3")
        assert ("gn" in tab.columns) == convex  # GN is not PSD for Eq. (14): excluded
        assert (tab.to_numpy() >= 0).all()
        for kind in tab.columns:
            assert tab.loc["Total", kind] == pytest.approx(math.sqrt((tab[kind].iloc[:-1] ** 2).sum()))
        assert r"\begin{tabular}" in (out / f"{t}.tex").read_text()
    # Second call: every job already has a completed summary.json, so nothing is trained again.
    capsys.readouterr()
    assert reproduce.main(_args("tables", tiny_root, tmp_path, *only)) == 0
    assert capsys.readouterr().out.count("skipped (completed)") == 4


def test_reproduce_figures_ci(tiny_root: Path, tmp_path: Path) -> None:
    exps = ["eacg_fig5_7", "lowrank_fig2", "hbp_fig5"]
    only = [x for e in exps for x in ("--only", e)]
    # 16 hidden units: HBP's split 16 needs a layer of at least 16 rows (config check)
    wide = ["--set", "net.widths=[${dataset.input_dim},16,${dataset.num_classes}]"]
    assert reproduce.main(_args("figures", tiny_root, tmp_path, "--steps", "3", "--seeds", "2", *only, *wide)) == 0
    out = tmp_path / "figures"
    for name in ["eacg_fig5_7", "eacg_fig11", "lowrank_fig2", "lowrank_fig2_cr", "hbp_fig5"]:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-", name
    labels = set(pd.read_csv(out / "eacg_fig5_7_final.csv")["label"])
    # {Fisher, PCH-1, PCH-2} × {EA-CG, KFI} + SGD once; GN is not PSD for Eq. (14) (labels belong to the report)
    assert len(labels) == 7 and not any("GN" in label for label in labels)
    hbp = pd.read_csv(out / "hbp_fig5_final.csv").set_index("label")
    assert len(hbp.index) == 5  # splits 1, 2, 4, 16 and SGD
    view = set(pd.read_csv(out / "eacg_fig11_final.csv")["label"])  # Figure 11: Figure 5's PCH-1/PCH-2 runs
    assert len(view) == 4 and view < labels
    assert (hbp["seeds"] == 2).all()
    assert len(set(pd.read_csv(out / "lowrank_fig2_final.csv")["label"])) == 2  # SGD and SGD + CR


def test_more_seeds_keep_the_one_seed_run(tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--seeds 2 after a 1-seed campaign trains seed 1 only: the seed-0 run, named without its seed, is kept."""
    base = _args("figures", tiny_root, tmp_path, "--steps", "2", "--only", "eacg_fig1_3", "--where", "solver=sgd",
                 "--no-render")
    assert reproduce.main([*base, "--seeds", "1"]) == 0
    exp = tmp_path / "runs" / "eacg_fig1_3"
    (first,) = [p.name for p in exp.iterdir()]
    assert "seed" not in first
    capsys.readouterr()
    assert reproduce.main([*base, "--seeds", "2"]) == 0
    assert f"{first}: skipped (completed)" in capsys.readouterr().out
    assert sorted(p.name for p in exp.iterdir()) == [first, f"{first},seed=1"]
    # A seed-0 run whose config would not continue to the job's (another lr) is not taken for it.
    assert reproduce.main([*base, "--seeds", "2", "--set", "solver.lr=0.05"]) == 0
    assert (exp / f"{first},seed=0" / "summary.json").is_file()


def test_expand_follows_the_presets_sweeps() -> None:
    fig = reproduce.expand("eacg_fig1_3", [], 1)
    assert len(fig) == 13  # {fisher, gn, pch1, pch2} × {eacg, kfi, kfi_rank1} + SGD once (it ignores the curvature)
    assert {tuple(j.overrides) for j in fig} >= {("solver=kfi", "curvature=gn"), ("solver=sgd", "curvature=fisher")}
    only_pch = reproduce.expand("eacg_fig1_3", [], 1, {"curvature": "pch1"})  # --sweep curvature=pch1
    assert [j.name for j in only_pch] == ["solver=eacg,curvature=pch1", "solver=kfi,curvature=pch1",
                                          "solver=sgd,curvature=pch1", "solver=kfi_rank1,curvature=pch1"]
    hbp = reproduce.expand("hbp_fig5", [], 3)
    assert len(hbp) == 5 * 3 and {j.cfg["seed"] for j in hbp} == {0, 1, 2}


def test_scales_size_the_jobs() -> None:
    args = reproduce.argparse.Namespace(steps=None, seeds=None, train_subset=None, test_subset=None,
                                        keep_batch=False, hessian_every=None)
    full, seeds = reproduce.scale_overrides("hbp_fig5", "full", args)
    assert full == ["log.compact=true"] and seeds == 0  # full: the preset as it is, its 10 seeds included
    ci, seeds = reproduce.scale_overrides("eacg_table2", "ci", args)
    assert "train.max_steps=2" in ci and "log.hessian_first=2" in ci and seeds == 1
    args.hessian_every, args.steps = 10, 100
    table, _ = reproduce.scale_overrides("eacg_table2", "full", args)
    assert table == ["log.compact=true", "train.max_steps=100", "log.hessian_first=0", "log.hessian_every=10"]
    assert "log.compact=true" not in ci  # ci scale stays plain (its runs are not the record)


def test_cpu_scale_sizes_the_campaign() -> None:
    args = reproduce.argparse.Namespace(steps=None, seeds=None, train_subset=None, test_subset=None,
                                        keep_batch=False, hessian_every=None)
    fig, seeds = reproduce.scale_overrides("eacg_fig2_4", "cpu", args)
    assert "train.max_steps=2000" in fig and seeds == 3
    hbp, seeds = reproduce.scale_overrides("hbp_fig5", "cpu", args)
    assert "train.max_steps=2000" in hbp and seeds == 5
    table, seeds = reproduce.scale_overrides("eacg_table4", "cpu", args)
    assert "train.max_steps=4000" in table and "log.hessian_batches=[100,500,1000]" in table and seeds == 3
    assert "log.hessian_fisher_types=[mc,empirical]" in table and "log.compact=true" in table
    e200, seeds = reproduce.scale_overrides("eacg_fig1_3_e200", "cpu", args)
    assert "train.max_steps=20000" in e200 and seeds == 1  # the 200-epoch family before eacg_fig's prefix


def test_campaign_listing_filters_and_orders_by_seed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    done = tmp_path / "runs" / "hbp_fig5" / "solver=sgd,seed=0"
    done.mkdir(parents=True)
    (done / "summary.json").write_text('{"status": "completed", "steps": 2000}')
    base = ["figures", "--scale", "cpu", "--list", "--only", "hbp_fig5", "--runs-dir", str(tmp_path / "runs"),
            "--data-root", "none", "--where", "solver=sgd,eacg_split2"]
    assert reproduce.main(base) == 0
    lines = [ln.strip() for ln in capsys.readouterr().out.splitlines() if ln.startswith("   ")]
    assert lines[:3] == ["solver=eacg_split2,seed=0: to do", "solver=sgd,seed=0: completed (2000 steps)",
                         "solver=eacg_split2,seed=1: to do"]
    assert len(lines) == 2 * 5
    with pytest.raises(SystemExit):  # no hand-made sharding: several workers are a launcher (--launcher joblib)
        reproduce.main([*base, "--shard", "1/2"])


# A slice of the figure campaign at ci scale: 13 EA-CG/KFI runs and 2 low-rank ones, one torch thread each.
CAMPAIGN = ["--only", "eacg_fig1_3", "--only", "lowrank_fig2", "--steps", "3", "--threads", "1", "--no-render"]
TIME_COLUMNS = ["wall_time", "elapsed", "log_time"]  # the only columns that differ between two identical runs


def _run_files(runs: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, str]]:
    """Each run directory's metrics and Hessian errors (time columns dropped) and config (its run_dir line dropped)."""
    out = {}
    for path in sorted(runs.glob("*/*/metrics.csv")):
        frames = [pd.read_csv(path.parent / name) for name in ("metrics.csv", "hessian_errors.csv")]
        config = "".join(ln for ln in (path.parent / "config.yaml").read_text().splitlines(True)
                         if not ln.startswith("run_dir:"))
        out[str(path.parent.relative_to(runs))] = (*(f.drop(columns=[c for c in TIME_COLUMNS if c in f]) for f in frames),
                                                   config)
    return out


@pytest.fixture(scope="module")
def serial_runs(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The campaign slice on the default launcher (Hydra's basic one: one job after another in this process)."""
    tmp = tmp_path_factory.mktemp("serial")
    assert reproduce.main(_args("figures", tiny_root, tmp, *CAMPAIGN)) == 0
    return tmp / "runs"


@pytest.mark.parametrize("launcher", ["joblib", "ray"])
def test_campaign_through_a_launcher_matches_the_serial_run(launcher: str, serial_runs: Path, tiny_root: Path,
                                                            tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--launcher joblib|ray`` writes the same run files (bit-identical metrics) into the same directories;
    a run interrupted under the launcher resumes there, and a rerun launches nothing."""
    if launcher == "ray":
        pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="Hydra's Ray launcher: pip install 'curvlab[ray]'")
    workers = ["--launcher-set", "n_jobs=2"] if launcher == "joblib" else ["--launcher-set", "ray.init.num_cpus=2"]
    args = _args("figures", tiny_root, tmp_path, *CAMPAIGN, "--launcher", launcher, *workers)
    assert reproduce.main([*args, "--set", "train.stop_after=2"]) == 1  # every run stops after 2 of its 3 updates
    assert capsys.readouterr().out.count("failed: running after 2 steps; rerun the same command to resume it") == 15
    assert reproduce.main(args) == 0  # ... and resumes from its checkpoint
    out = capsys.readouterr().out
    assert out.count("to resume (running (2 steps))") == 15 and out.count("completed in") == 15
    want, got = _run_files(serial_runs), _run_files(tmp_path / "runs")
    assert len(want) == 15 and sorted(got) == sorted(want)  # runs-dir/<experiment>/<job>, as the serial run
    for name, (metrics, errors, config) in want.items():
        pd.testing.assert_frame_equal(got[name][0], metrics, check_exact=True, obj=f"{name}/metrics.csv")
        pd.testing.assert_frame_equal(got[name][1], errors, check_exact=True, obj=f"{name}/hessian_errors.csv")
        assert got[name][2] == config, name
    assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("skipped (completed)") == 15 and "launching" not in out


def test_reproduce_rejects_unknown_experiment(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown --only"):
        reproduce.main(_args("tables", tiny_root, tmp_path, "--only", "eacg_fig1_3"))
    with pytest.raises(SystemExit, match="cifar10_jpeg.npz"):
        reproduce.data_overrides("cifar10", tmp_path)


def test_a_set_key_of_a_swept_solver_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """conv_mnist_2c2d's default solver is SGD: --set solver.alpha names the fix, ++ runs the KFI jobs with it."""
    args = ["figures", "--scale", "cpu", "--data-root", "none", "--runs-dir", str(tmp_path), "--only",
            "conv_mnist_2c2d", "--where", "solver=kfi_conv", "--list"]
    with pytest.raises(SystemExit) as stop:
        reproduce.main([*args, "--set", "solver.alpha=0.1"])
    assert stop.value.code == 2 and "use ++KEY=VALUE" in capsys.readouterr().err
    assert reproduce.main([*args, "--set", "++solver.alpha=0.1"]) == 0
    assert "conv_mnist_2c2d: 6 job(s)" in capsys.readouterr().out  # KFI × {PCH-1, Fisher} × 3 seeds
    kfi = [j for j in reproduce.expand("conv_mnist_2c2d", ["++solver.alpha=0.1"], 3) if j.cfg["solver"]["name"] == "kfi"]
    assert len(kfi) == 6 and {j.cfg["solver"]["alpha"] for j in kfi} == {0.1}


@pytest.mark.slow
def test_reproduce_everything_ci(tiny_root: Path, tmp_path: Path) -> None:
    """Both make targets at ci scale on tiny data, studies included."""
    assert reproduce.main(_args("tables", tiny_root, tmp_path)) == 0
    assert reproduce.main(_args("figures", tiny_root, tmp_path, "--steps", "2")) == 0
    assert (tmp_path / "tables" / "table1_measured.md").is_file()
    for name in ["appendix_chain_rule", "rahimi_scaling", *[e for e in reproduce.FIGURES if e != "eacg_grid_search"]]:
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0, name


def test_pin_configs_keeps_a_campaign_on_the_configs_it_started_with(monkeypatch, tmp_path):
    """A long worker composes its later jobs from a copy taken at its start, not from the changing checkout."""
    import os

    import curvlab.cli as cli

    original = tmp_path / "configs"
    original.mkdir()
    (original / "config.yaml").write_text("seed: 0\n")
    monkeypatch.delenv(cli.CONFIG_ENV, raising=False)
    monkeypatch.setattr(cli, "CONFIG_DIR", str(original))
    copy = reproduce.pin_configs()
    assert copy is not None and cli.CONFIG_DIR == str(copy) and copy != original
    (original / "config.yaml").write_text("seed: 0\nnew_field: 1\n")  # a later edit of the checkout
    assert (copy / "config.yaml").read_text() == "seed: 0\n"
    assert reproduce.pin_configs() is None  # pinned once: the env var now names the copy
    assert os.environ[cli.CONFIG_ENV] == str(copy)
