"""The figures' styles and labels: one style per soup, fixed by the catalog; learning curves named by what varies."""

import pandas as pd
import pyarrow.parquet as pq

from soupflow.plan.catalog import RECIPES
from soupflow.report.figures import plot_learning_curves, soup_styles, varying_labels
from soupflow.store.tables import history_table, read_history


def test_every_recipe_and_named_variant_gets_a_style_of_its_own():
    names = [*RECIPES, "uniform_bn", "top2_loss", "greedy_gt"]
    recipe_of = {"uniform_bn": "uniform", "top2_loss": "topk", "greedy_gt": "greedy"}
    styles = soup_styles(names, recipe_of)
    assert len({style.color for style in styles.values()}) == len(names)  # no two soups share a colour
    assert len(set(styles.values())) == len(names)
    assert styles["uniform_bn"].marker == styles["uniform"].marker  # a variant: its recipe's marker, lighter hue


def test_a_recipes_style_does_not_depend_on_which_soups_a_config_has():
    everything = soup_styles(RECIPES)
    for chosen in (["learned", "uniform"], ["wise_ft"], ["pruned", "greedy", "uniform"]):
        assert soup_styles(chosen) == {name: everything[name] for name in chosen}
    assert soup_styles(["uniform", "uniform_bn"], {"uniform_bn": "uniform"})["uniform_bn"] == soup_styles(
        ["uniform_bn", "wise_ft"], {"uniform_bn": "uniform"})["uniform_bn"]


def test_runs_are_named_by_the_hyperparameters_that_vary():
    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "hp_lr": [0.05, 0.05, 0.01], "hp_label_smoothing": [0.1, 0.0, 0.0],
                         "hp_seed": [1, 1, 1], "hp_mixup": [None, None, None]})
    assert varying_labels(runs) == {"a": "lr=0.05, ls=0.1", "b": "lr=0.05, ls=0", "c": "lr=0.01, ls=0"}
    assert varying_labels(runs.iloc[:1]) == {"a": "a"}  # nothing varies: the run id


def test_histories_without_val_accuracy_still_read_and_draw(tmp_path):
    """A history.parquet written before val_accuracy was recorded reads with it missing; the figure draws."""
    new = tmp_path / "new.parquet"
    pq.write_table(history_table("run-new", [{"epoch": e, "train_loss": 1.0 / e, "lr": 0.1, "seconds": e,
                                              "images_per_second": 100.0, "val_accuracy": 0.5 + e / 10}
                                             for e in (1, 2)]), new)
    old = tmp_path / "old.parquet"
    pd.DataFrame({"run_id": "run-old", "epoch": [1, 2], "train_loss": [2.0, 1.5], "lr": [0.2, 0.0],
                  "seconds": [1.0, 2.0], "images_per_second": [100.0, 100.0]}).to_parquet(old)
    assert read_history(str(old)).val_accuracy.isna().all()
    runs = tmp_path / "runs.parquet"
    pd.DataFrame({"run_id": ["run-new", "run-old"], "hp_lr": [0.1, 0.2]}).to_parquet(runs)
    figure = tmp_path / "learning_curves.png"
    plot_learning_curves([str(new), str(old)], str(figure), str(runs))
    assert figure.read_bytes()[:4] == b"\x89PNG"


def _pooled_table() -> pd.DataFrame:
    """A pooled table (``POOLED_SCHEMA``) over five replicates: two soups near zero, the best individual at
    zero and an untrained baseline at about −80 points."""
    from soupflow.store.tables import POOLED_SCHEMA, typed_table

    diffs = {"uniform": [0.52, 0.50, -0.10, 0.60, 0.21], "greedy": [0.3, 0.2, 0.25, 0.35, 0.28],
             "best_individual": [0.0] * 5, "untrained": [-80.1, -79.5, -80.4, -79.9, -80.0]}
    rows = []
    for soup, values in diffs.items():
        for seed, diff in enumerate(values):
            rows.append({"soup": soup, "recipe": soup, "scope": "replicate", "seed": seed, "acc_diff_pt": diff,
                         "acc_diff_pt_low": diff - 0.3, "acc_diff_pt_high": diff + 0.3})
        mean, half = sum(values) / len(values), 0.1 if soup == "greedy" else 0.3
        rows.append({"soup": soup, "recipe": soup, "scope": "pooled", "acc_diff_pt": mean,
                     "acc_diff_pt_low": mean - half, "acc_diff_pt_high": mean + half, "t_low": mean - half,
                     "t_high": mean + half, "replicate_diffs": values, "verdict": "WINS" if soup == "greedy" else "",
                     "test_accuracy": 0.9, "sign_p": 0.5, "wins_k": 0, "loses_k": 0, "replicates_n": 5})
    return typed_table(rows, POOLED_SCHEMA).to_pandas()


def test_the_forest_plot_draws_a_collapsed_baseline_apart_and_runs(tmp_path):
    """untrained, 80 points below, goes to a panel of its own; the best individual (at zero) stays on the
    soups' scale; without other soups nothing is set apart; the figure is written."""
    from soupflow.report.figures import forest_panels, plot_replicates

    table = _pooled_table()
    assert forest_panels(table) == (["uniform", "greedy", "best_individual"], ["untrained"])
    baselines = table[table.soup.isin(["best_individual", "untrained"])]
    assert forest_panels(baselines) == (["best_individual", "untrained"], [])
    for name, frame in (("replicates.png", table), ("baselines.png", baselines)):
        plot_replicates(frame, str(tmp_path / name))
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_the_pooled_text_shows_each_replicates_difference():
    from soupflow.report.summary import format_pooled

    text = format_pooled(_pooled_table())
    line = next(line for line in text.splitlines() if line.strip().startswith("uniform"))
    assert "+0.52 +0.50 -0.10 +0.60 +0.21" in line and "+0.35 [+0.05, +0.65]" in line
    assert "pooled over 5 replicates (seeds 0, 1, 2, 3, 4)" in text


def test_the_shift_figure_names_a_collapsed_soup_instead_of_squeezing_the_others(tmp_path):
    """A soup 28 points below the best run is named below the axes; the runs, the ensemble and a soup near
    them are drawn on their own scale."""
    from soupflow.report.figures import _on_scale, plot_shift

    def row(kind, model, test, shift, recipe=""):
        values = {f"{split}_acc_diff_pt{end}": value + offset for split, value in (("test", test), ("shift", shift))
                  for end, offset in (("", 0.0), ("_low", -0.5), ("_high", 0.5))}
        return {"shift_set": "corrupted", "kind": kind, "model": model, "recipe": recipe, "best": model == "r0",
                "images": 100, "test_accuracy": 0.8, "shift_accuracy": 0.5, **values}

    table = pd.DataFrame([row("run", "r0", 0, 0), row("run", "r1", -0.5, -1.0), row("ensemble", "ens", 1.0, 2.0),
                          row("soup", "uniform", 0.8, 1.5, "uniform"), row("soup", "ties", -28.0, -23.0, "ties")])
    drawn, off = _on_scale(table)
    assert list(off.model) == ["ties"] and set(drawn.model) == {"r0", "r1", "ens", "uniform"}
    plot_shift(table, str(tmp_path / "shift.png"))
    assert (tmp_path / "shift.png").stat().st_size > 10_000
