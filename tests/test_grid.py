import pytest

from soupflow.plan.config import merge_defaults
from soupflow.plan.grid import expand_runs, run_id, search_points


def runs_of(grid=None, runs=None, search=None):
    return expand_runs(merge_defaults({"grid": grid or {}, "runs": runs or [], "search": search or {}}))


def test_grid_is_the_cartesian_product():
    runs = runs_of({"lr": [0.1, 0.01], "weight_decay": [0.0, 1e-4, 1e-3]})
    assert len(runs) == 6
    assert {(h["lr"], h["weight_decay"]) for h in runs.values()} == {
        (lr, wd) for lr in (0.1, 0.01) for wd in (0.0, 1e-4, 1e-3)}


def test_inserting_a_value_in_the_middle_of_an_axis_renames_nothing():
    before = runs_of({"lr": [0.01, 0.1], "seed": [0, 1]})
    after = runs_of({"lr": [0.01, 0.03, 0.1], "seed": [0, 1]})
    assert set(before) < set(after)
    assert len(set(after) - set(before)) == 2
    for rid in before:
        assert before[rid] == after[rid]


def test_ids_ignore_spelling_of_numbers_and_key_order():
    assert run_id({"lr": 1, "epochs": 2}) == run_id({"epochs": 2.0, "lr": 1.0})
    assert run_id({"lr": 0.1}) != run_id({"lr": 0.01})


def test_explicit_runs_and_duplicates_of_grid_points_merge():
    runs = runs_of({"lr": [0.01, 0.1]}, runs=[{"lr": 0.1}, {"lr": 0.5, "epochs": 3}])
    assert len(runs) == 3
    assert any(h["epochs"] == 3 and h["lr"] == 0.5 for h in runs.values())


def test_random_search_keeps_its_first_draws_when_n_grows():
    space = {"lr": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1},
             "augmentation": {"distribution": "choice", "values": ["none", "flip"]},
             "epochs": {"distribution": "int_uniform", "low": 1, "high": 3}}
    five = search_points({"n": 5, "seed": 7, "space": space})
    eight = search_points({"n": 8, "seed": 7, "space": space})
    assert eight[:5] == five
    assert all(1e-4 <= p["lr"] <= 1e-1 and p["epochs"] in (1, 2, 3) for p in eight)
    assert len({p["lr"] for p in eight}) == 8
    assert search_points({"n": 5, "seed": 8, "space": space}) != five


def test_adding_a_search_dimension_keeps_the_other_dimensions_draws():
    lr = {"lr": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1}}
    with_wd = {**lr, "weight_decay": {"distribution": "uniform", "low": 0, "high": 1e-3}}
    a = search_points({"n": 4, "space": lr})
    b = search_points({"n": 4, "space": with_wd})
    assert [p["lr"] for p in a] == [p["lr"] for p in b]


def test_the_top_level_seed_reseeds_every_run_without_renaming_it():
    from soupflow.plan.seeds import pipeline_seed

    grid = {"lr": [0.01, 0.1], "seed": [0, 1]}
    zero, one = (merge_defaults({"grid": grid, "seed": s}) for s in (0, 1))
    assert list(expand_runs(zero)) == list(expand_runs(one))  # same run ids, same folders
    assert [pipeline_seed(zero, s) for s in (0, 1)] == [0, 1]  # seed 0: each run's own seed, as before
    used = {pipeline_seed(config, s) for config in (zero, one) for s in (0, 1)}
    assert len(used) == 4  # seed 1 gives every run (and the init) a stream no run of seed 0 uses


@pytest.mark.parametrize("entropy", [0, 1, 12345, [0, 1, 2], [7, 3, 2**32 + 5], [0, 99, 4294967295], 2**70 + 3])
def test_the_pure_python_generator_draws_what_numpy_default_rng_draws(entropy):
    """Run ids of random-search points and the analysis' pairs come from these draws: without numpy (a bare
    Snakemake parsing the Snakefile) they must be bit for bit numpy's."""
    np = pytest.importorskip("numpy")
    from soupflow.plan.pcg64 import Generator

    reference, ours = np.random.default_rng(entropy), Generator(entropy)
    for _ in range(100):
        assert ours.random() == reference.random()
        assert ours.uniform(-2.5, 7.0) == reference.uniform(-2.5, 7.0)
        assert ours.integers(17) == int(reference.integers(17))
        assert ours.integers(-5, 2**40) == int(reference.integers(-5, 2**40))
        assert [ours.integers(1000), ours.integers(1000)] == [int(v) for v in reference.integers(1000, size=2)]


def test_search_points_and_pairs_are_numpys_draws():
    np = pytest.importorskip("numpy")
    import math
    import zlib

    from soupflow.plan.grid import sample_pairs, search_points

    space = {"lr": {"distribution": "log_uniform", "low": 1e-4, "high": 0.1},
             "epochs": {"distribution": "int_uniform", "low": 1, "high": 9},
             "augmentation": {"distribution": "choice", "values": ["none", "flip", "shift"]}}
    for index, point in enumerate(search_points({"n": 20, "seed": 3, "space": space})):
        rng = {name: np.random.default_rng([3, index, zlib.crc32(name.encode())]) for name in space}
        assert point["lr"] == math.exp(rng["lr"].uniform(math.log(1e-4), math.log(0.1)))  # as grid.py before
        assert point["epochs"] == int(rng["epochs"].integers(1, 10))
        assert point["augmentation"] == space["augmentation"]["values"][int(rng["augmentation"].integers(3))]
    ids = [f"run{i:03d}" for i in range(60)]
    rng, chosen = np.random.default_rng(5), set()
    while len(chosen) < 100:
        i, j = rng.integers(60, size=2)
        if i != j:
            chosen.add((min(i, j), max(i, j)))
    assert sample_pairs(ids, 100, 5) == [(ids[i], ids[j]) for i, j in sorted(chosen)]
