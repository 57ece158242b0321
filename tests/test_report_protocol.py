"""Chen et al.'s protocol (curvlab.report.protocol): averages over θ⁰…θ^{s−1}, seeds, Fisher batch noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from curvlab.report import report
from curvlab.report.protocol import fisher_batch_noise, protocol_errors, protocol_table, protocol_vs_paper
from curvlab.report.tables import paper_frame
from report_fixtures import write_run

LOGGED = [*range(10), 20, 40]  # dense prefix, then sparse, as log.hessian_first / hessian_every write


def _errors(fn, runs=("r0",), batches=(None,), kinds=("gn",), layers=(1,), steps=LOGGED) -> pd.DataFrame:
    rows = [{"run_dir": r, "step": t, "layer": l, "kind": k, "error": fn(r, t, l, k, b),
             **({} if b is None else {"batch": b})}
            for r in runs for b in batches for k in kinds for l in layers for t in steps]
    return pd.DataFrame(rows)


def test_average_is_the_trapezoid_over_every_update_and_short_runs_are_left_out():
    e = _errors(lambda r, t, l, k, b: float(t * t))
    short = e[e["step"] <= 20].assign(run_dir="short")
    both = pd.concat([e, short])
    for s in (10, 30, 41):
        got = protocol_errors(both, s)
        curve = np.interp(np.arange(s), LOGGED, np.square(LOGGED, dtype=float))  # linear between logged θ
        row = got[got["run_dir"] == "r0"].iloc[0]
        assert row["error"] == pytest.approx(curve.mean())
        assert row["error2"] == pytest.approx((curve**2).mean())
        assert row["logged"] == sum(t < s for t in LOGGED)
        assert ("short" in set(got["run_dir"])) == (s <= 21)  # θ^{s−1} must be logged or passed
    assert protocol_errors(both, 10).iloc[0]["error"] == pytest.approx(np.mean(np.square(range(10))))  # exact: dense


def test_table_gives_mean_and_std_over_seeds_and_the_total_per_seed():
    rng = np.random.default_rng(0)
    vals = {(r, l): rng.random() for r in ("a", "b", "c") for l in (1, 2)}
    e = _errors(lambda r, t, l, k, b: vals[r, l], runs=("a", "b", "c"), layers=(1, 2), kinds=("pch1",))
    tab = protocol_table(e, (10, 40, 100))
    assert list(tab.index.get_level_values("s").unique()) == [10, 40]  # no run reaches θ^99
    lay = np.array([vals["a", 1], vals["b", 1], vals["c", 1]])
    assert tab.loc[(10, "Layer-1"), "pch1"] == f"{lay.mean():.3g} ± {lay.std(ddof=1):.2g}"
    tot = np.array([np.hypot(vals[r, 1], vals[r, 2]) for r in "abc"])
    assert tab.loc[(40, "Total"), "pch1"] == f"{tot.mean():.3g} ± {tot.std(ddof=1):.2g}"
    with pytest.raises(ValueError, match="no run was logged"):
        protocol_table(e, (1000,))


def test_batch_noise_fit_recovers_bias_and_noise_and_the_papers_batch():
    a, b = 0.8, 0.004
    e = _errors(lambda r, t, l, k, B: float(np.sqrt(b**2 + a**2 / B)), batches=(100, 500, 1000), kinds=("fisher",),
                layers=range(1, 9))
    e["mc_samples"] = 1
    tab = fisher_batch_noise(e, "table2", (10,))
    row = tab.iloc[0]
    assert row["noise a"] == pytest.approx(a, rel=1e-6) and row["bias b"] == pytest.approx(b, rel=1e-4)
    p = float(paper_frame("table2").loc["Layer-8", "fisher"])
    assert row["paper"] == p and row["B for paper"] == pytest.approx(a**2 / (p**2 - b**2), rel=1e-4)
    assert -0.5 < row["slope"] < -0.45  # nearly pure 1/√B noise at these batches
    biased = fisher_batch_noise(e.assign(error=0.1), "table2", (10,)).iloc[0]  # bias above the paper: no batch
    assert np.isnan(biased["B for paper"]) and biased["slope"] == pytest.approx(0, abs=1e-9)


def test_vs_paper_scores_each_s_beside_the_best_single_point():
    paper = paper_frame("table2")
    exact = {k: paper[k].to_numpy()[:8] for k in ("fisher", "gn", "pch1", "pch2")}
    e = _errors(lambda r, t, l, k, b: exact[k][l - 1] * (1.0 if t == 20 else 10.0), kinds=tuple(exact),
                layers=range(1, 9))
    tab = protocol_vs_paper(e, "table2", (10, 30))
    assert tab.loc["θ^0…θ^9", "score"] == pytest.approx(1.0)  # every layer a factor 10 off
    assert 0 < tab.loc["θ^0…θ^29", "score"] < 1  # θ^20 (= the paper) enters the average
    assert tab.loc["θ^20 alone (best)", "score"] == pytest.approx(0.0)
    assert tab.loc["paper (Table 2)", "Fisher Layer-8"] == f"{paper.loc['Layer-8', 'fisher']:.3g}"


def test_report_renders_the_protocol_tables(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "runs", f"s{seed}", experiment="eacg_table2", curvature="pch1", solver="eacg",
                  seed=seed, steps=12, kinds=("fisher", "gn", "pch1"), reference=True)
    files = {p.name for p in report([tmp_path / "runs"], tmp_path / "out", want={"tables"})}
    assert {"eacg_table2_b10_protocol.md", "eacg_table2_b20_protocol.md", "eacg_table2_protocol_vs_paper.md",
            "eacg_table2_fisher_batch_noise.md"} <= files
    text = (tmp_path / "out" / "eacg_table2_protocol_vs_paper.md").read_text()
    assert "batch 10, θ^0…θ^9" in text and "alone (best)" in text
    assert "± " in (tmp_path / "out" / "eacg_table2_b10_protocol.md").read_text()  # two seeds: a spread


def test_empirical_and_mc_fisher_get_their_own_columns():
    e = _errors(lambda r, t, l, k, b: 0.01 * l, kinds=("fisher",), layers=range(1, 9), batches=(100, 500))
    e = pd.concat([e.assign(fisher="mc", mc_samples=1), e.assign(fisher="empirical", mc_samples=None, error=0.5)])
    tab = protocol_vs_paper(e, "table4", (10,))
    assert tab.loc["batch 100, θ^0…θ^9", "Fisher (empirical) Layer-8"] == "0.5"
    assert tab.loc["batch 100, θ^0…θ^9", "Fisher (MC) Layer-8"] == "0.08"
    noise = fisher_batch_noise(e, "table4", (10,))
    assert {"Fisher (empirical)", "Fisher (MC)"} == set(noise.index.get_level_values("variant"))
    assert noise.loc[("Fisher (empirical)", 10), "bias b"] == pytest.approx(0.5)  # the same at every batch: bias


def test_conv_weight_block_rows_stay_out_of_the_layer_averages():
    e = _errors(lambda r, t, l, k, b: 1.0)
    both = pd.concat([e.assign(block=None), e.assign(block="weight", error=100.0)])
    assert protocol_errors(both, 10)["error"].tolist() == [1.0]
