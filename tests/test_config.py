"""Each invalid config is rejected with one line that names the key and what is allowed."""

import copy
import re

import pytest
import yaml
from conftest import ROOT

from soupflow.plan.config import ConfigError, resolve_config

DEFAULT = yaml.safe_load((ROOT / "config.yaml").read_text())


def rejected(mutate) -> str:
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    with pytest.raises(ConfigError) as info:
        resolve_config(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_default_config_is_valid():
    config = resolve_config(copy.deepcopy(DEFAULT), check_paths=False)
    assert config["model"]["init"] == "pretrain"


def test_unknown_top_level_key():
    message = rejected(lambda c: c.update(grdi={"lr": [0.1]}))
    assert "'grdi'" in message and "grid" in message


def test_unknown_nested_key_lists_the_allowed_ones():
    message = rejected(lambda c: c["grid"].update(learning_rate=[0.1]))
    assert "grid.learning_rate" in message and "weight_decay" in message


def test_wrong_type():
    message = rejected(lambda c: c["finetune"].update(epochs="two"))
    assert "finetune.epochs" in message and "integer" in message


def test_a_linear_probe_that_is_not_a_boolean():
    message = rejected(lambda c: c["model"].update(linear_probe="sometimes"))
    assert "model.linear_probe" in message and "boolean" in message


def test_empty_grid_axis():
    message = rejected(lambda c: c["grid"].update(lr=[]))
    assert "grid.lr" in message and "empty" in message


def test_no_fine_tune_at_all():
    message = rejected(lambda c: c.update(grid={}))
    assert "grid" in message and "at least one" in message


def test_unknown_recipe():
    message = rejected(lambda c: c["soups"].append({"recipe": "gazpacho"}))
    assert f"soups[{len(DEFAULT['soups'])}].recipe" in message and "greedy" in message and "uniform" in message


def test_unknown_bn_option():
    message = rejected(lambda c: c["soups"].append({"recipe": "greedy", "name": "g2", "bn": "refit"}))
    assert f"soups[{len(DEFAULT['soups'])}].bn" in message and "keep" in message and "recompute" in message


def test_unknown_augmentation_value():
    message = rejected(lambda c: c["grid"].update(augmentation=["flip", "mixup"]))
    assert "grid.augmentation[1]" in message and "flip_shift" in message


def test_unknown_timm_model():
    message = rejected(lambda c: c["model"].update(name="resnet10000"))
    assert "model.name" in message and "timm" in message


def test_missing_data_root():
    message = rejected(lambda c: c["data"].update(root="/nonexistent/fashion"))
    assert "data.root" in message and "/nonexistent/fashion" in message


@pytest.mark.parametrize("value", [0, -0.1])
def test_val_fraction_must_be_positive(value):
    message = rejected(lambda c: c["data"].update(val_fraction=value))
    assert "data.val_fraction" in message and "> 0" in message


def test_splits_that_leave_nothing_to_fine_tune_on_are_rejected():
    message = rejected(lambda c: c["data"].update(pretrain_fraction=0.5, val_fraction=0.2, test_fraction=0.3))
    assert "data.test_fraction" in message and "< 1" in message


def test_tracked_params_leave_out_keys_added_later_while_they_are_at_their_neutral_default():
    """Upgrading soupflow must not rerun finished jobs: a key added to a section after results existed is absent
    from that section's rerun-triggering param while it is at its neutral value, and present when set."""
    from soupflow.plan.params import LATE_DEFAULTS, TRACKED_APART, tracked

    plain = resolve_config(copy.deepcopy(DEFAULT), check_paths=False)
    for section, late in LATE_DEFAULTS.items():
        assert set(late) <= set(plain[section]), section  # the resolved config has every default ...
        assert not set(late) & set(tracked(plain, section)), section  # ... the trigger leaves them out
        apart = TRACKED_APART.get(section, ())  # and the keys rules of their own track (data.shift_sets)
        assert tracked(plain, section) == {k: v for k, v in plain[section].items() if k not in late and k not in apart}
    bigger = copy.deepcopy(DEFAULT)
    bigger["data"].update(test_fraction=0.25, pretrain_fraction=0.5)
    assert tracked(resolve_config(bigger, check_paths=False), "data")["test_fraction"] == 0.25


def test_duplicate_soup_names():
    message = rejected(lambda c: c["soups"].append({"recipe": "greedy"}))
    assert "soups" in message and "greedy" in message and "unique" in message


def test_init_file_must_exist():
    message = rejected(lambda c: c["model"].update(init="file", file="/nonexistent.safetensors"))
    assert "model.file" in message


def test_unknown_heatmap_axis():
    message = rejected(lambda c: c["plots"].update(heatmap_axes=["lr", "colour"]))
    assert "plots.heatmap_axes" in message and "weight_decay" in message


def test_nested_config_overrides_given_as_text_are_read_as_the_yaml_typed():
    """What Snakemake's --config parser (YAML's BaseLoader: every nested scalar is text) hands over, typed as the
    same YAML in a config file would be; text stays text where the schema wants text."""
    from snakemake.cli import parse_config

    from soupflow.plan.config import typed_overrides

    overrides = parse_config(["grid={lr: [0.1, 1e-2], seed: [0, 1], nesterov: [true], perturbation: [salty1]}",
                              "model={name: 123, kwargs: {drop_rate: 0.1}}", "data={max_train: null}",
                              "search={n: 1, space: {lr: {distribution: choice, values: [0.5]}}}"])
    assert overrides["grid"]["seed"] == ["0", "1"]  # what Snakemake gives: text
    config = copy.deepcopy(DEFAULT)
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value}
    typed = typed_overrides(config, overrides)
    assert typed["grid"] == {"lr": [0.1, 0.01], "seed": [0, 1], "nesterov": [True], "perturbation": ["salty1"],
                             "label_smoothing": [0.0, 0.1]}
    assert typed["model"]["name"] == "123" and typed["model"]["kwargs"] == {"drop_rate": 0.1}  # no schema: YAML
    assert typed["data"]["max_train"] is None and typed["search"]["space"]["lr"]["values"] == [0.5]
    assert config["grid"]["seed"] == ["0", "1"]  # the caller's dict is not changed
    assert typed["data"]["root"] == DEFAULT["data"]["root"]  # what came from the file is left as it is


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["model"].update(init="timm"), "analysis.branching.epochs"),
    (lambda c: c["grid"].update(branch_epoch=[99]), "grid.branch_epoch"),
    (lambda c: c.setdefault("runs", []).append({"lr": 0.01, "branch_epoch": 7}), "runs[0].branch_epoch"),
])
def test_a_branch_epoch_that_is_not_kept_names_the_key_the_user_wrote(mutate, key):
    message = rejected(mutate)
    assert f"config key '{key}'" in message and "not a kept pretraining epoch" in message


def test_the_schema_ships_inside_the_package_and_the_workflow_sees_the_same_file(tmp_path):
    import subprocess
    import sys
    import zipfile

    from conftest import ROOT

    from soupflow.plan.config import SCHEMA_PATH

    assert (ROOT / "workflow/schemas/config.schema.yaml").resolve() == SCHEMA_PATH.resolve()
    pytest.importorskip("setuptools")  # the build backend, present in the project's venv
    import shutil

    project = tmp_path / "project"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(project)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("soupflow-*.whl"))
    assert "soupflow/schemas/config.schema.yaml" in zipfile.ZipFile(wheel).namelist()


def test_a_data_root_without_the_data_set_is_rejected_before_any_job(tmp_path):
    message = rejected(lambda c: c["data"].update(root=str(tmp_path)))
    assert f"config key 'data.root' is '{tmp_path}', which holds no fashion_mnist data set" in message
    assert "train-images-idx3-ubyte" in message


def test_every_training_reads_one_typed_record_of_hyperparameters_with_the_catalogs_defaults():
    """Fine-tunes, pretraining and tests all build ``Hyperparameters``: the finetune section's defaults are the
    record's, pretraining takes only the hyperparameters of its section, numbers get their kind, and a key that
    is not a hyperparameter is refused rather than ignored."""
    from dataclasses import asdict

    from soupflow.plan.catalog import Hyperparameters
    from soupflow.plan.config import DEFAULTS

    assert asdict(Hyperparameters()) == DEFAULTS["finetune"]
    pretraining = Hyperparameters.of_section(DEFAULTS["pretrain"])
    assert (pretraining.lr, pretraining.augmentation, pretraining.nesterov) == (0.05, "flip_shift", True)
    assert not hasattr(pretraining, "keep_every")
    made = Hyperparameters.of({"lr": 1, "epochs": 3.0})
    assert type(made.lr) is float and type(made.epochs) is int and made.momentum == 0.9
    with pytest.raises(KeyError, match="sync_bn"):
        Hyperparameters.of({"lr": 0.1, "sync_bn": True})


def test_the_schema_takes_its_lists_of_names_from_the_catalog():
    """The catalog is the one source: the schema's hyperparameters name the same keys (checked when it loads),
    and a name the catalog lacks is rejected wherever a list of names applies."""
    from soupflow.plan.catalog import HYPERPARAMETER_NAMES
    from soupflow.plan.config import load_schema

    schema = load_schema()
    assert list(schema["$defs"]["hyperparameters"]["properties"]) == list(HYPERPARAMETER_NAMES)
    assert list(schema["properties"]["grid"]["properties"]) == list(HYPERPARAMETER_NAMES)
    for change, key in [(lambda c: c["data"].update(name="imagenet"), "data.name"),
                        (lambda c: c["soups"].append({"recipe": "fondue"}), "soups[15].recipe"),
                        (lambda c: c["grid"].update(dropout=[0.1]), "grid.dropout"),
                        (lambda c: c.update(search={"n": 1, "space": {"dropout": {"distribution": "uniform"}}}),
                         "search.space"),
                        (lambda c: c["finetune"].update(augmentation="randaugment"), "finetune.augmentation"),
                        (lambda c: c["analysis"]["corruptions"].update(types=["fog"]), "analysis.corruptions.types")]:
        assert key in rejected(change), key


def test_a_wise_ft_base_must_name_another_soup():
    message = rejected(lambda c: c["soups"].append({"name": "w1", "recipe": "wise_ft", "base": "gredy"}))
    assert "soups[" in message and "'gredy'" in message and "greedy" in message
    message = rejected(lambda c: c["soups"].append({"name": "w2", "recipe": "wise_ft", "base": "w2"}))
    assert "'w2'" in message


def test_wise_ft_defaults_to_the_best_individual_as_its_base():
    from soupflow.plan.params import soup_base as wise_ft_base

    assert wise_ft_base({"recipe": "wise_ft"}) == "best_individual"
    assert wise_ft_base({"recipe": "greedy"}) is None


def test_without_timm_the_model_name_is_left_to_the_first_job_with_a_note(monkeypatch, capsys):
    import importlib.metadata

    from soupflow.plan import timm_names as config_module

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    config_module.check_model_name({"name": "resnet_typo"})  # no timm to ask: passes, says so
    assert "first job checks model.name" in capsys.readouterr().err
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="model.name"):  # what every job's open_job() runs, with timm there
        config_module.check_model_name({"name": "resnet_typo"})


def test_a_model_file_that_is_no_checkpoint_is_rejected_naming_model_file(tmp_path):
    (tmp_path / "notes.pth").write_text("these are notes, not weights")
    message = rejected(lambda c: c["model"].update(init="file", file=str(tmp_path / "notes.pth")))
    assert message.startswith("config key 'model.file'") and "neither a safetensors header nor a torch" in message


def test_model_kwargs_the_model_does_not_take_are_rejected_naming_model_kwargs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # a fresh verdict cache: timm is asked
    message = rejected(lambda c: c["model"].update(kwargs={"channels": [16, 32, 64, 128], "wings": 2}))
    assert message.startswith("config key 'model.kwargs'") and "wings" in message
    again = rejected(lambda c: c["model"].update(kwargs={"channels": [16, 32, 64, 128], "wings": 2}))
    assert again == message and list(tmp_path.glob("soupflow/kwargs-*.txt"))  # the verdict comes from the cache


@pytest.mark.parametrize("replicates, says", [
    ([1, 2], "holds the top-level seed 0"),
    ([0, 0], "without repeated values"),
    ([], "at least 1"),
    ([0, -1], ">= 0"),
])
def test_bad_replicates_name_the_key(replicates, says):
    message = rejected(lambda c: c.update(replicates=replicates))
    assert "'replicates" in message and says in message


def test_replicates_give_one_pipeline_per_seed_the_top_level_one_in_results():
    from soupflow.plan.params import pipelines

    config = resolve_config({**copy.deepcopy(DEFAULT), "seed": 1, "replicates": [2, 1, 0]}, check_paths=False)
    folders = pipelines(config)
    assert list(folders) == ["results", "results/replicates/2", "results/replicates/0"]
    assert [c["seed"] for c in folders.values()] == [1, 2, 0]
    assert all(c["grid"] == config["grid"] for c in folders.values())  # the same experiment under each seed
    assert list(pipelines(resolve_config(copy.deepcopy(DEFAULT), check_paths=False))) == ["results"]


TRANSFER = {"pretrain_classes": [1, 3, 5, 7, 9], "finetune_classes": [0, 2, 4, 6, 8], "labels_per_class": 100,
            "pretrain_fraction": 0.0}


@pytest.mark.parametrize("change, key, says", [
    ({"finetune_classes": [0, 2, 3]}, "data.finetune_classes", "shares [3]"),
    ({"finetune_classes": [0, 12]}, "data.finetune_classes", "0 to 9"),
    ({"pretrain_classes": [1, 10]}, "data.pretrain_classes", "0 to 9"),
    ({"labels_per_class": 5900}, "data.labels_per_class", "at most"),
    ({"pretrain_classes": None}, "data.pretrain_classes", "model.init is 'pretrain'"),
    ({"pretrain_fraction": 0.5}, "data.pretrain_fraction", "allowed: 0"),
    ({"finetune_classes": None}, "data.pretrain_classes", "without data.finetune_classes"),
    ({"max_train": 1000}, "data.labels_per_class", "at most 83"),  # ~100 per class, val takes 17
])
def test_bad_class_splits_name_the_key(change, key, says):
    message = rejected(lambda c: c["data"].update({**TRANSFER, **change}))
    assert f"'{key}'" in message and says in message


def test_a_class_split_is_valid():
    config = copy.deepcopy(DEFAULT)
    config["data"].update(TRANSFER)
    assert resolve_config(config, check_paths=False)["data"]["labels_per_class"] == 100


@pytest.mark.parametrize("change, key, says", [
    ({"grid": {"branch_epoch": [1, 2]}}, "grid.branch_epoch", "skip model.shared_finetune"),
    ({"training": {"devices_per_run": 2}}, "model.shared_finetune", "devices_per_run 1"),
    ({"model": {"shared_finetune": {"epochs": 5}}}, "model.shared_finetune", "lr"),
])
def test_a_shared_fine_tune_that_runs_cannot_honour_names_the_key(change, key, says):
    def mutate(config):
        config["model"]["shared_finetune"] = {"epochs": 5, "lr": 0.05}
        for section, values in change.items():
            config.setdefault(section, {}).update(values)
    message = rejected(mutate)
    assert f"'{key}'" in message and says in message, message


def test_the_analysis_batchnorm_statistics_are_validated():
    assert resolve_config(copy.deepcopy(DEFAULT), check_paths=False)["analysis"]["bn"] == ["keep", "recompute"]
    message = rejected(lambda c: c["analysis"].update(bn=["keep", "average"]))
    assert "analysis.bn" in message and "keep, recompute" in message
    assert "analysis.bn" in rejected(lambda c: c["analysis"].update(bn=[]))
    assert "analysis.bn" in rejected(lambda c: c["analysis"].update(bn=["keep", "keep"]))
    assert "analysis.bn" in rejected(lambda c: c["analysis"].update(bn="recompute")) and "array" in \
        rejected(lambda c: c["analysis"].update(bn="recompute"))
    assert "analysis.bn_images" in rejected(lambda c: c["analysis"].update(bn_images=0))
    assert resolve_config({**copy.deepcopy(DEFAULT), "analysis": {"bn": ["keep"]}}, check_paths=False)["analysis"]["bn"] == ["keep"]


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_experiment_config_is_valid(path):
    """The configs under experiments/ that the docs tell users to run parse as they ship (data and weight
    paths aside, which are the user's machine's)."""
    config = resolve_config(yaml.safe_load(path.read_text()), check_model=False, check_paths=False)
    assert config["soups"], f"{path.name} cooks no soup"


@pytest.mark.parametrize("entry, key", [({"recipe": "uniform", "passes": 3}, "soups[0].passes"),
                                        ({"recipe": "greedy", "alphas": [0.5]}, "soups[0].alphas"),
                                        ({"recipe": "topk", "k": 2, "repeats": 2}, "soups[0].repeats"),
                                        ({"recipe": "model_stock", "tie": "gt"}, "soups[0].tie")])
def test_an_option_the_recipe_does_not_take_is_rejected_naming_the_key(entry, key):
    """A foreign option would be ignored silently by the recipe: the parse refuses it instead."""
    config = copy.deepcopy(DEFAULT)
    config["soups"] = [entry]
    with pytest.raises(ConfigError, match=rf"'{re.escape(key)}' is not an option of recipe '{entry['recipe']}'"):
        resolve_config(config, check_paths=False, check_model=False)


def test_every_recipe_takes_its_own_options_and_the_entry_options():
    from soupflow.plan.catalog import ENTRY_OPTIONS, RECIPES, SOUP_OPTIONS

    for name, traits in RECIPES.items():
        entry = {**{key: SOUP_OPTIONS[key] for key in (*ENTRY_OPTIONS, *traits.takes) if SOUP_OPTIONS.get(key) is not None},
                 **traits.defaults, "recipe": name, "name": f"{name}_all"}
        if traits.needs_base:
            entry["base"] = "best_individual"
        config = copy.deepcopy(DEFAULT)
        config["soups"] = [{"recipe": "best_individual"}, entry]
        resolve_config(config, check_paths=False, check_model=False)
    assert set(SOUP_OPTIONS) <= set(ENTRY_OPTIONS).union(*(t.takes for t in RECIPES.values())), \
        "every shared option is read by some recipe"


def test_a_recipes_option_records_are_the_schemas_soup_keys_and_their_bounds_hold():
    """The schema's recipe options come from the recipes' Option records: each record's values are what the
    parse accepts, and a value outside them is rejected naming the key."""
    from soupflow.plan.catalog import RECIPES
    from soupflow.plan.config import load_schema

    keys = load_schema()["properties"]["soups"]["items"]["properties"]
    for traits in RECIPES.values():
        for option in traits.options:
            assert {k: v for k, v in keys[option.name].items() if k != "description"} == option.schema
    bad = [({"recipe": "pruned", "passes": 0}, "soups[0].passes"),
           ({"recipe": "learned", "granularity": "layer"}, "soups[0].granularity"),
           ({"recipe": "learned", "lr": 0}, "soups[0].lr")]
    for entry, key in bad:
        config = copy.deepcopy(DEFAULT)
        config["soups"] = [entry]
        with pytest.raises(ConfigError, match=re.escape(key)):
            resolve_config(config, check_paths=False, check_model=False)
