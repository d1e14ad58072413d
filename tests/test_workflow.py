"""End to end: snakemake on tests/smoke.yaml in a temporary folder, then what a rerun would schedule."""

import json
import re

import pandas as pd
import pytest
import timm
import torch
from conftest import SMOKE, snakemake
from safetensors import safe_open
from safetensors.torch import load_file

from soupflow.plan.config import resolve_config
from soupflow.plan.grid import expand_runs

pytestmark = pytest.mark.slow  # runs the workflow (or trains) in subprocesses: the slow tier


def job_counts(dry_run_output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run, as {rule: count}."""
    if "Nothing to be done" in dry_run_output:
        return {}
    table = dry_run_output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def runs(finished):
    return pd.read_parquet(finished[0] / "results/metrics/runs.parquet")


@pytest.fixture(scope="module")
def soups(finished):
    return pd.read_parquet(finished[0] / "results/metrics/soups.parquet")


def test_every_output_exists(finished, runs):
    work, _ = finished
    results = work / "results"
    assert len(runs) == 5  # 2 x 2 grid + 1 explicit run
    for run_id in runs.run_id:
        for name in ("model.safetensors", "outputs.safetensors", "metrics.parquet", "config.yaml", "train.log"):
            assert (results / "runs" / run_id / name).stat().st_size > 0
    names = [s.get("name", s["recipe"]) for s in SMOKE["soups"]]
    for name in names:
        for file in ("model.safetensors", "metrics.parquet", "trace.parquet", "outputs.safetensors"):
            assert (results / "soups" / name / file).exists()
    for table in ("runs", "soups", "soup_trace"):
        assert (results / "metrics" / f"{table}.parquet").exists()
    for plot in ("soups_vs_ingredients", "val_heatmap", "greedy_ingredients", "pruned_passes", "wise_ft"):
        assert (results / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    assert "best individual" in (results / "summary.txt").read_text()
    splits = json.loads((results / "data/splits.json").read_text())
    assert not set(splits["val"]) & set(splits["train"]) and not set(splits["val"]) & set(splits["pretrain"])


def test_run_table_has_hyperparameters_and_scores(runs):
    for column in ("hp_lr", "hp_weight_decay", "hp_seed", "status", "val_accuracy", "test_accuracy",
                   "val_loss", "test_loss", "train_seconds", "n_parameters"):
        assert column in runs
    ok = runs[runs.status == "ok"]
    assert len(ok) == 4 and ok.val_accuracy.between(0, 1).all()


def test_a_diverged_run_is_recorded_and_left_out_of_soups(runs, soups):
    diverged = runs[runs.hp_lr == 100000.0]
    assert list(diverged.status) == ["diverged"]
    bad = diverged.run_id.iloc[0]
    assert not any(bad in ingredients for ingredients in soups.ingredients)


def test_soup_checkpoints_load_in_plain_timm(finished):
    work, _ = finished
    path = work / "results/soups/greedy/model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    model = timm.create_model(meta["model"], num_classes=int(meta["num_classes"]), in_chans=int(meta["in_chans"]),
                              **json.loads(meta["kwargs"]))
    model.load_state_dict(load_file(str(path)))  # strict: every key and shape matches
    model.eval()
    assert model(torch.zeros(2, int(meta["in_chans"]), 28, 28)).shape == (2, int(meta["num_classes"]))


def test_uniform_soup_is_the_mean_of_its_ingredients(finished, soups):
    work, _ = finished
    row = soups[soups.soup == "uniform"].iloc[0]
    soup = load_file(str(work / "results/soups/uniform/model.safetensors"))
    states = [load_file(str(work / "results/runs" / r / "model.safetensors")) for r in row.ingredients]
    assert len(states) == 4
    for name, tensor in soup.items():
        if tensor.is_floating_point():
            mean = torch.stack([s[name].double() for s in states]).mean(0).to(tensor.dtype)
            assert torch.equal(tensor, mean), name
        else:
            assert torch.equal(tensor, states[0][name])


def test_wise_ft_soup_is_the_interpolation_of_the_init_and_its_base_at_the_chosen_alpha(finished, soups):
    from soupflow.core.average import interpolate

    work, _ = finished
    trace = pd.read_parquet(work / "results/metrics/soup_trace.parquet")
    curve = trace[trace.soup == "wise_ft"]
    assert curve.alpha.tolist() == [0.0, 0.5, 1.0]
    chosen = curve[curve.accepted.astype(bool)]
    assert len(chosen) == 1 and chosen.val_accuracy.iloc[0] == curve.val_accuracy.max()
    init, base = (load_file(str(work / f"results/{p}/model.safetensors")) for p in ("init", "soups/greedy"))
    soup = load_file(str(work / "results/soups/wise_ft/model.safetensors"))
    expected = interpolate(init, base, float(chosen.alpha.iloc[0]))
    assert all(torch.equal(soup[name], expected[name]) for name in soup)
    row = soups[soups.soup == "wise_ft"].iloc[0]
    assert list(row.ingredients) == list(soups[soups.soup == "greedy"].iloc[0].ingredients)


def test_model_stock_soup_stays_between_the_init_and_the_uniform_soup(finished, soups):
    """Per weight tensor θ0 + t·(mean − θ0) with one t in [0, 1]; buffers are the uniform soup's."""
    work, _ = finished
    init, uniform, stock = (load_file(str(work / f"results/{p}/model.safetensors"))
                            for p in ("init", "soups/uniform", "soups/model_stock"))
    assert soups[soups.soup == "model_stock"].n_ingredients.iloc[0] == 4
    for name, tensor in stock.items():
        if not tensor.is_floating_point() or "running_" in name:
            assert torch.allclose(tensor.double(), uniform[name].double(), atol=1e-6), name
            continue
        step, moved = (uniform[name] - init[name]).double(), (tensor - init[name]).double()
        if step.norm() > 0:
            t = float((moved * step).sum() / step.pow(2).sum())
            assert -1e-6 <= t <= 1 + 1e-6 and torch.allclose(moved, t * step, atol=1e-5), name


def test_soups_carry_paired_differences_to_the_best_individual(soups, runs):
    ok = runs[runs.status == "ok"]
    best = ok.sort_values(["val_accuracy", "run_id"], ascending=[False, True]).iloc[0]
    for name in ("best_individual", "self_soup"):  # the reference itself: exactly no difference
        row = soups[soups.soup == name].iloc[0]
        assert (row.acc_diff_pt, row.acc_diff_pt_low, row.acc_diff_pt_high, row.acc_p_mcnemar) == (0, 0, 0, 1)
        # the loss to float rounding: the run's cached logits come from its fine-tune job (one thread), the
        # soup's from the soups job (two threads sum in another order); the predictions are the same
        assert abs(row.loss_diff) < 1e-6 and not row.wins
    for row in soups.itertuples():
        assert row.acc_diff_pt_low <= row.acc_diff_pt <= row.acc_diff_pt_high
        assert abs(row.acc_diff_pt - 100 * (row.test_accuracy - best.test_accuracy)) < 1e-6
        assert abs(row.loss_diff - (row.test_loss - best.test_loss)) < 1e-5
        assert row.wins == (row.acc_diff_pt_low > 0)
    uniform = soups[soups.soup == "uniform"].iloc[0]
    assert abs(uniform.ensemble_acc_diff_pt - 100 * (uniform.ensemble_test_accuracy - best.test_accuracy)) < 1e-6


def test_bn_recompute_changes_only_the_batchnorm_statistics(finished, soups):
    work, _ = finished
    kept = load_file(str(work / "results/soups/uniform/model.safetensors"))
    fresh = load_file(str(work / "results/soups/uniform_bn/model.safetensors"))
    statistics = [k for k in kept if k.endswith(("running_mean", "running_var"))]
    assert statistics
    assert all(torch.equal(kept[k], fresh[k]) for k in kept if k not in statistics and not k.endswith("num_batches_tracked"))
    assert not all(torch.equal(kept[k], fresh[k]) for k in statistics)
    rows = soups.set_index("soup")
    assert rows.loc["uniform_bn", "bn"] == "recompute" and rows.loc["uniform", "bn"] == "keep"
    assert rows.loc["uniform_bn", "ingredients"].tolist() == rows.loc["uniform", "ingredients"].tolist()


def test_summary_states_each_soup_against_the_best_individual(finished):
    work, _ = finished
    text = (work / "results/summary.txt").read_text()
    assert re.search(r"greedy soup .* [+-]\d+\.\d\d pt \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\], p = ", text)
    table = pd.read_csv(work / "results/summary.csv")
    assert pd.api.types.is_float_dtype(table.acc_diff_pt) and pd.api.types.is_float_dtype(table.test_accuracy)


def test_self_soup_is_the_best_model_exactly(finished, runs):
    work, _ = finished
    best = runs[runs.status == "ok"].sort_values(["val_accuracy", "run_id"], ascending=[False, True]).run_id.iloc[0]
    soup = load_file(str(work / "results/soups/self_soup/model.safetensors"))
    model = load_file(str(work / f"results/runs/{best}/model.safetensors"))
    assert all(torch.equal(soup[k], model[k]) for k in model)


def test_greedy_is_selected_on_val_and_never_loses_val_score(finished, soups, runs):
    work, _ = finished
    trace = pd.read_parquet(work / "results/metrics/soup_trace.parquet")
    greedy = trace[trace.soup == "greedy"]
    accepted = greedy[greedy.accepted].val_score.tolist()
    assert accepted == sorted(accepted)
    best_val = runs[runs.status == "ok"].val_accuracy.max()
    assert soups[soups.soup == "greedy"].val_accuracy.iloc[0] >= best_val
    assert greedy[greedy.accepted].test_accuracy.notna().all()  # reported for each accepted state


def test_adding_a_grid_point_schedules_exactly_one_fine_tune(finished):
    work, _ = finished
    grown = json.loads(json.dumps(SMOKE))
    grown["grid"]["lr"] = [0.01, 0.02, 0.03]
    grown["grid"]["weight_decay"] = [0.00001]  # remove one value, add one: 1 new run (lr 0.02, wd 1e-5)
    result = snakemake(work, grown, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout + result.stderr)
    assert counts.get("finetune") == 1
    assert "init" not in counts and "prepare_data" not in counts
    assert counts.get("soups") == 1 and counts.get("plots") == 1


def test_changing_only_a_soup_setting_trains_nothing(finished):
    work, _ = finished
    changed = json.loads(json.dumps(SMOKE))
    changed["soups"][[s["recipe"] for s in SMOKE["soups"]].index("pruned")]["passes"] = 3
    result = snakemake(work, changed, "-n")
    counts = job_counts(result.stdout + result.stderr)
    assert "finetune" not in counts and "init" not in counts
    assert counts.get("soups") == 1


def test_a_run_missing_its_checkpoint_is_made_again_before_the_soups(finished):
    """Soups read one runs table, not every run's files; the table asks for every file of every run, so a run
    folder that lost its model is re-trained once the soups must be re-cooked (here: one grid point added).
    (As for any Snakemake intermediate file, a missing checkpoint alone does not re-trigger anything.)"""
    work, _ = finished
    grown = json.loads(json.dumps(SMOKE))
    grown["grid"]["lr"] = [0.01, 0.02, 0.03]
    grown["grid"]["weight_decay"] = [0.00001]  # as above: 1 new run
    kept = [run for run in expand_runs(resolve_config(grown)) if (work / "results" / "runs" / run).exists()]
    model = work / "results" / "runs" / kept[0] / "model.safetensors"
    aside = model.with_suffix(".aside")
    model.rename(aside)
    try:
        result = snakemake(work, grown, "-n")
    finally:
        aside.rename(model)
    counts = job_counts(result.stdout + result.stderr)
    assert counts.get("finetune") == 2 and counts.get("run_table") == 1
    assert counts.get("soups") == 1


def test_invalid_config_is_rejected_before_any_job(tmp_path):
    bad = json.loads(json.dumps(SMOKE))
    bad["soups"].append({"recipe": "minestrone"})
    result = snakemake(tmp_path, bad)
    assert result.returncode != 0
    assert f"soups[{len(SMOKE['soups'])}].recipe" in result.stderr and "greedy_random" in result.stderr
    assert not (tmp_path / "results").exists()


def test_bn_recompute_is_compared_with_averaged_statistics(finished, soups):
    work, _ = finished
    row = soups[soups.soup == "uniform_bn"].iloc[0]
    kept = soups[soups.soup == "uniform"].iloc[0]  # the same ingredients with averaged statistics
    assert abs(row.bn_acc_diff_pt - 100 * (row.test_accuracy - kept.test_accuracy)) < 1e-6
    assert row.bn_acc_diff_pt_low <= row.bn_acc_diff_pt <= row.bn_acc_diff_pt_high
    assert pd.isna(kept.get("bn_acc_diff_pt"))
    assert "BatchNorm statistics re-estimated" in (work / "results/summary.txt").read_text()


def test_every_checkpoint_folder_loads_in_plain_timm_by_local_dir(finished, runs):
    results = finished[0] / "results"
    folders = [results / "init", results / "runs" / runs.run_id.iloc[0], results / "soups" / "greedy"]
    for folder in folders:
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
        saved = load_file(str(folder / "model.safetensors"))
        assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items()), folder
        data_config = timm.data.resolve_data_config({}, model=model)
        assert data_config["input_size"] == (1, 28, 28) and len(data_config["mean"]) == 1


def test_every_run_has_a_learning_curve_and_the_report_a_figure(finished, runs):
    results = finished[0] / "results"
    for row in runs.itertuples():
        history = pd.read_parquet(results / "runs" / row.run_id / "history.parquet")
        if row.status == "ok":
            assert history.epoch.tolist() == list(range(1, SMOKE["finetune"]["epochs"] + 1))
            assert history.train_loss.iloc[-1] == pytest.approx(row.train_loss)
            assert (history.lr >= 0).all() and (history.images_per_second > 0).all()
            assert history.val_accuracy.iloc[-1] == row.val_accuracy  # the last epoch's weights are the run's
        else:
            assert history.run_id.isin([row.run_id]).all()  # a diverged run: what it finished, maybe nothing
    assert (results / "plots" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_every_soup_row_carries_the_soupability_pre_check(soups):
    keep = soups[soups.bn == "keep"]
    assert set(soups.soupability) <= {"ok", "barrier", "collapsed"}
    assert keep.precheck_midpoint_val_accuracy.nunique() == 1  # the same two runs, the same midpoint, every job
    assert (keep.precheck_pair_val_accuracy > 0).all()


def test_every_soup_and_trace_table_reads_as_one_data_set(finished):
    """Soups differ in their columns (bn_*, alpha, pass …): each file is still written with the whole
    explicit schema, so pyarrow.dataset (as polars or DuckDB) reads all of them together."""
    import pyarrow.dataset as ds

    from soupflow.store.tables import SOUP_SCHEMA, TRACE_SCHEMA

    work, _ = finished
    for name, schema in (("metrics.parquet", SOUP_SCHEMA), ("trace.parquet", TRACE_SCHEMA)):
        files = sorted(str(p) for p in (work / "results/soups").glob(f"*/{name}"))
        table = ds.dataset(files, format="parquet").to_table()
        assert table.schema.remove_metadata().equals(schema), name
        assert set(table.column("soup").to_pylist()) == {p.split("/")[-2] for p in files}
    wise = ds.dataset(str(work / "results/soups/wise_ft/trace.parquet")).to_table().column("alpha").to_pylist()
    assert wise == [0.0, 0.5, 1.0]


def test_the_paired_columns_of_the_schema_are_the_statistics_columns():
    import torch

    from soupflow.core.stats import compare
    from soupflow.store.tables import SOUP_SCHEMA

    labels = torch.arange(20) % 3
    comparison = compare(torch.randn(20, 3), torch.randn(20, 3), labels)
    for prefix in ("", "ensemble_", "bn_"):
        assert set(comparison.columns(prefix)) <= set(SOUP_SCHEMA.names)


def test_soups_over_epoch_checkpoints_take_every_kept_epoch_as_a_candidate(tmp_path):
    """ingredients: epochs — each run keeps its epoch checkpoints (with val scores), the soup's pool holds
    them beside the final ones; dropping the option afterwards plans no fine-tune again."""
    config = {**SMOKE, "finetune": {"epochs": 3, "batch_size": 32}, "grid": {"lr": [0.01, 0.03]}, "runs": [],
              "soups": [{"recipe": "best_individual"}, {"recipe": "greedy", "ingredients": "epochs"},
                        {"name": "uniform_epochs", "recipe": "uniform", "ingredients": "epochs"}]}
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = pd.read_parquet(tmp_path / "results/metrics/runs.parquet")
    for run_id in runs.run_id:
        epochs = pd.read_parquet(tmp_path / "results/runs" / run_id / "epochs.parquet")
        assert epochs.epoch.tolist() == [1, 2] and epochs.val_accuracy.between(0, 1).all()
        assert all((tmp_path / "results/runs" / run_id / p).exists() for p in epochs.path)
    soups = pd.read_parquet(tmp_path / "results/metrics/soups.parquet").set_index("soup")
    assert soups.loc["uniform_epochs", "n_ingredients"] == 6 and soups.loc["greedy", "n_candidates"] == 6
    trace = pd.read_parquet(tmp_path / "results/metrics/soup_trace.parquet")
    assert trace[trace.soup == "greedy"].candidate.str.contains("@epoch").sum() == 4
    without = {**config, "soups": [{"recipe": "best_individual"}, {"recipe": "greedy"}]}
    plan = snakemake(tmp_path, without, "-n")
    assert plan.returncode == 0 and "rule finetune" not in plan.stdout, plan.stdout[-2000:]


def test_replicates_are_pooled_from_each_pipeline_and_a_new_one_plans_only_its_jobs(tmp_path):
    """replicates: the whole pipeline once per seed (the top-level seed's in results/, as without replicates),
    each soup pooled over them; adding a seed plans its own pipeline and the pooled table, nothing else."""
    from soupflow.core.stats import compare, pooled_compare
    from soupflow.store.tables import best_run

    config = {**SMOKE, "grid": {"lr": [0.01, 0.03]}, "runs": [], "replicates": [0, 1],
              "soups": [{"recipe": "best_individual"}, {"recipe": "uniform"}, {"recipe": "greedy"}]}
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    results = tmp_path / "results"
    folders = {0: results, 1: results / "replicates" / "1"}
    pooled = pd.read_parquet(results / "metrics/pooled.parquet")
    assert set(pooled.soup) == {"best_individual", "uniform", "greedy"}
    replicates = {}
    for seed, folder in folders.items():
        runs = pd.read_parquet(folder / "metrics/runs.parquet")
        assert len(runs) == 2 and all(path.startswith(f"{folder.relative_to(tmp_path)}/runs/") for path in runs.model_file)
        best = best_run(runs)
        outputs = load_file(folder / "soups/uniform/outputs.safetensors")
        replicates[seed] = (outputs["test_logits"], load_file(tmp_path / best.outputs_file)["test_logits"], outputs["test_labels"])
        row = pooled[(pooled.soup == "uniform") & (pooled.seed == seed)].iloc[0]
        assert row.acc_diff_pt == compare(*replicates[seed]).accuracy_pt.diff
    splits = [json.loads((folder / "data/splits.json").read_text())["train"] for folder in folders.values()]
    assert splits[0] != splits[1]  # each replicate draws its own split
    row = pooled[(pooled.soup == "uniform") & (pooled.scope == "pooled")].iloc[0]
    from soupflow.store.prepared import test_rows

    images = [test_rows(json.loads((folder / "data/splits.json").read_text())) for folder in folders.values()]
    expected = pooled_compare(list(replicates.values()), images)
    assert (row.acc_diff_pt, row.acc_diff_pt_low, row.acc_diff_pt_high) == (
        expected.accuracy_pt.diff, expected.accuracy_pt.low, expected.accuracy_pt.high)
    # each replicate's difference in seed order, their t interval, and the verdict that reads both intervals
    assert list(row.replicate_diffs) == [compare(*replicates[seed]).accuracy_pt.diff for seed in folders]
    assert (row.t_low, row.t_high) == (expected.seeds_pt.low, expected.seeds_pt.high)
    assert row.verdict == ("WINS" if row.acc_diff_pt_low > 0 and row.t_low > 0 else
                           "LOSES" if row.acc_diff_pt_high < 0 and row.t_high < 0 else "")
    assert row.replicates_n == 2 and row.test_images == sum(len(r[2]) for r in replicates.values())
    assert "pooled over 2 replicates" in (results / "pooled.txt").read_text()
    assert (results / "plots/replicates.png").read_bytes()[:4] == b"\x89PNG"
    single = {key: value for key, value in config.items() if key != "replicates"}
    plan = snakemake(tmp_path, single, "-n")  # the top-level seed's pipeline is the single pipeline
    # (only results/config.yaml is rewritten: it records the config, `replicates` included; and timm's
    # config.json files, one job for every pipeline's: it reads checkpoint headers, seconds)
    assert plan.returncode == 0 and not job_counts(plan.stdout + plan.stderr).keys() - {"all", "resolved_config",
                                                                                         "timm_configs"}
    plan = snakemake(tmp_path, {**config, "replicates": [0, 1, 2]}, "-n")
    counts = job_counts(plan.stdout + plan.stderr)
    assert counts.get("prepare_data") == 1 and counts.get("init") == 1 and counts.get("finetune") == 2
    assert counts.get("soups") == 1 and counts.get("pooled") == 1
    assert "results/replicates/2/" in plan.stdout and "wildcards: pipeline=results," not in plan.stdout

    # editing one soup entry reruns the soups job, which restores the other soups instead of cooking them
    # (the soups job of the top-level pipeline only: what follows it was checked above)
    uniform = results / "soups/uniform/model.safetensors"
    before = uniform.read_bytes()
    edited = {**config, "soups": [{"recipe": "best_individual"}, {"recipe": "uniform"}, {"recipe": "greedy", "tie": "gt"}]}
    result = snakemake(tmp_path, edited, str(uniform.relative_to(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    log = (results / "logs/soups.log").read_text()
    assert "soup uniform: unchanged" in log and "soup best_individual: unchanged" in log
    assert "soup greedy (greedy" in log and "soup uniform (uniform" not in log
    assert uniform.read_bytes() == before
