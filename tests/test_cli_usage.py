"""Small usability fixes (issue 20, "Smaller"): `make help`, the submitit_local log folder, and a
preset's sweep run without ``-m``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from curvlab import cli

REPO = Path(__file__).resolve().parents[1]
QUIET = ["log.progress=false", "log.hessian_every=0", "log.hessian_first=0"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_help_names_every_scale_and_the_real_output_folders():
    text = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    usage = subprocess.run([sys.executable, str(REPO / "scripts" / "reproduce.py"), "tables", "--help"],
                           capture_output=True, text=True, check=True).stdout
    scales = re.search(r"--scale \{([^}]*)\}", usage).group(1).split(",")  # type: ignore[union-attr]
    assert scales == ["ci", "cpu", "full"]
    source = (REPO / "scripts" / "reproduce.py").read_text()
    assert 'ROOT / "runs" / "reproduce" / "ci"' in source and 'ROOT / "results" / "runs"' in source
    for target, renders in (("reproduce-tables", "results/tables/"), ("reproduce-figures", "results/figures/")):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(target))
        assert f"SCALE={'|'.join(scales)}" in line, line
        assert renders in line and "results/runs/" in line and "runs/reproduce/ci/" in line, line
        assert "results/tables/ci" not in line and "results/figures/ci" not in line, line


@pytest.mark.filterwarnings("ignore::UserWarning")  # Hydra: the launcher yaml extends its schema (cli.py)
def test_submitit_local_folder_has_no_job_id_placeholder():
    """submitit's local controller makes its folder with the name as given: a %j there stays literal."""
    with initialize_config_dir(config_dir=cli.CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=submitit_local"], return_hydra_config=True)
    folder = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)["submitit_folder"]  # type: ignore[index]
    assert folder == "${hydra.sweep.dir}/.submitit", folder


PRESET_SWEEP = {"solver": "eacg,kfi,sgd,kfi_rank1", "curvature": "fisher,gn,pch1,pch2"}


def test_unswept_warning_counts_the_points_left_to_the_sweep():
    warning = cli.unswept_warning(PRESET_SWEEP, ["experiment=eacg_fig1_3"])
    assert warning is not None and "experiment=eacg_fig1_3 declares a sweep of 16 runs" in warning
    assert "add -m (curvlab train -m experiment=eacg_fig1_3)" in warning
    assert "sweep of 4 runs (curvature=" in cli.unswept_warning(PRESET_SWEEP, ["experiment=x", "solver=kfi"])
    assert cli.unswept_warning(PRESET_SWEEP, ["experiment=x", "solver=kfi", "curvature=gn"]) is None
    assert cli.unswept_warning({"seed": "0"}, []) is None and cli.unswept_warning({}, []) is None
    assert "sweep of 3 runs" in cli.unswept_warning({"seed": "range(0,3)"}, [])


def test_a_preset_sweep_without_m_warns_and_names_m(tmp_path, capfd):
    code = cli.main(["train", "experiment=eacg_fig1_3", "dataset=digits", "net=small", "train.max_steps=1",
                     f"run_dir={tmp_path}", *QUIET])
    out = capfd.readouterr()
    assert code == 0
    (line,) = [ln for ln in (out.out + out.err).splitlines() if "declares a sweep" in ln]  # Hydra logs to stdout
    assert "WARNING" in line and "sweep of 16 runs" in line and "curvlab train -m experiment=eacg_fig1_3" in line
