"""curvlab.sweeps.PointComposer against Hydra's ``compose`` of every point (issue 21, item 5)."""

from __future__ import annotations

import itertools
import random

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import curvlab.config  # noqa: F401  (registers the ${prod:...} resolver the presets use)
from curvlab.cli import CONFIG_DIR
from curvlab.sweeps import PointComposer
from test_reproduce import reproduce

GRID = "eacg_grid_search"


@pytest.fixture
def hydra_configs():
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        yield


def grid_points(head: list[str]) -> list[tuple[str, ...]]:
    """The preset's sweep points, as Hydra's basic sweeper would make them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = compose("config", overrides=head, return_hydra_config=True).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return list(itertools.product(*([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed)))


def assert_same_as_compose(composer: PointComposer, head: list[str], point: tuple[str, ...]) -> None:
    ref = compose("config", overrides=[*head, *point])
    fast = composer(point)
    assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(ref), point  # the same nodes, interpolations unresolved
    assert OmegaConf.is_struct(fast) and OmegaConf.is_struct(ref)  # unknown keys are refused alike
    assert composer.resolved(point) == OmegaConf.to_container(ref, resolve=True), point


def test_grid_points_equal_composing_each_point(hydra_configs):
    head = [f"experiment={GRID}", "train.max_steps=3", "dataset.train_subset=500"]
    points = grid_points(head)
    assert len(points) == 576
    composer = PointComposer("config", head)
    sample = random.Random(0).sample(points, 20)
    for point in sample:
        assert_same_as_compose(composer, head, point)
    assert composer.compositions == 1  # the grid varies plain fields only
    # Resolving in place: a point after many others still gets exactly its own values.
    for point in points[:50]:
        composer.resolved(point)
    assert composer.resolved(sample[0]) == OmegaConf.to_container(compose("config", overrides=[*head, *sample[0]]),
                                                                  resolve=True)


def test_interpolations_that_read_an_overridden_field_follow_it(hydra_configs):
    """net.widths[0] is ${dataset.input_dim} = ${prod:3,${dataset.image_size},${dataset.image_size}}."""
    head = [f"experiment={GRID}"]
    composer = PointComposer("config", head)
    for point in itertools.product(["dataset.image_size=16", "dataset.image_size=8"], ["solver.lr=0.1", "solver.lr=0.2"]):
        assert_same_as_compose(composer, head, point)
    assert composer.resolved(("dataset.image_size=8", "solver.lr=0.1"))["net"]["widths"][0] == 3 * 8 * 8


def test_group_sweep_composes_once_per_group_choice(hydra_configs):
    head = ["experiment=eacg_fig5_7", "net=tiny"]
    points = [(*p, f"seed={i % 2}") for i, p in enumerate(grid_points(head))]
    composer = PointComposer("config", head)
    for point in points:
        assert_same_as_compose(composer, head, point)
    assert composer.compositions == len(points) == 9  # solver × curvature; the seed is a plain field
    composer.resolved(points[0][:2] + ("seed=5",))
    assert composer.compositions == 9


def test_add_and_delete_overrides_take_hydras_path(hydra_configs):
    head = ["experiment=example_digits"]
    composer = PointComposer("config", head)
    for point in [("+solver.nesterov=true", "solver=sgd"), ("~log.hessian_kinds", "seed=3")]:
        assert_same_as_compose(composer, head, point)


def test_reproduce_expand_matches_composing_each_job():
    base = ["net=tiny", "train.max_steps=3"]
    jobs = reproduce.expand("eacg_fig5_7", base, 2)
    assert len(jobs) == 2 * 7  # {Fisher, PCH-1, PCH-2} × {EA-CG, KFI} + SGD once, 2 seeds
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        for job in jobs:
            ref = compose("config", overrides=["experiment=eacg_fig5_7", *base, *job.overrides])
            assert job.cfg == OmegaConf.to_container(ref, resolve=True), job.name
