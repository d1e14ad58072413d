"""The checks a JSON schema cannot make: names that must exist, fractions that must fit, files that must be
there, unique soup names. Each raises ``ConfigError`` with one line naming the key the user wrote."""

from __future__ import annotations

import logging
import os
from typing import Any

from soupflow.plan.augment import check_auto_augment
from soupflow.plan.catalog import (
    CORRUPTED_SHIFT,
    DATASETS,
    FILES_ONLY_HYPERPARAMETERS,
    HYPERPARAMETER_NAMES,
    IMAGE_DATASETS,
    RECIPES,
)
from soupflow.plan.errors import ConfigError
from soupflow.plan.model_file import WeightsError, checkpoint_kind, resolve_file
from soupflow.plan.one_folder import class_folders, count_images, images_needed, is_one_folder
from soupflow.plan.params import kept_epochs, soup_base, soup_name
from soupflow.plan.pool import check_pool_files, pool_checkpoints, soup_only
from soupflow.plan.timm_names import (
    check_model_kwargs,
    check_model_name,
    check_optimizer_names,
    check_pretrained_name,
)

log = logging.getLogger("soupflow")


def _check_model_file(model: dict[str, Any]) -> None:
    """``model.file`` must exist when init = file needs it, or when init = timm names one."""
    spec = model.get("file")
    if model["init"] == "pretrain" or (model["init"] == "timm" and not spec):
        return
    try:
        exists = bool(spec) and os.path.isfile(resolve_file(spec))
    except WeightsError as error:
        raise ConfigError(f"config key {error}") from None
    if not exists:
        raise ConfigError(f"config key 'model.file' is {spec!r}; allowed: an existing .safetensors or .pth file "
                          f"(or package:NAME/path) when model.init is {model['init']!r}")
    kind = checkpoint_kind(resolve_file(spec))
    if kind is None:
        raise ConfigError(f"config key 'model.file' is {spec!r}, whose first bytes are neither a safetensors header "
                          "nor a torch checkpoint (zip or pickle); allowed: a .safetensors or torch.save file")


def _check_branch_epochs(config: dict[str, Any]) -> None:
    """Every branch epoch a user wrote must be a kept pretraining epoch; the error names where it was written."""
    written = [("analysis.branching.epochs", e) for e in config["analysis"]["branching"]["epochs"]]
    written += [("grid.branch_epoch", e) for e in config["grid"].get("branch_epoch", [])]
    written += [(f"runs[{i}].branch_epoch", run["branch_epoch"]) for i, run in enumerate(config["runs"])
                if run.get("branch_epoch") is not None]
    kept = kept_epochs(config)
    for key, epoch in written:
        if epoch not in kept:
            why = ("model.init is not 'pretrain', so there is no pretraining to branch from; set it to [] or remove it"
                   if config["model"]["init"] != "pretrain" else "see pretrain.epochs and pretrain.keep_every")
            raise ConfigError(f"config key '{key}' has {epoch}, which is not a kept pretraining epoch; allowed values: "
                              f"{', '.join(map(str, kept))} ({why})")


def _check_data_root(data: dict[str, Any]) -> None:
    """``data.root`` must be a folder holding the data set (unless torchvision may download it)."""
    root = data.get("root")
    if data["name"] in {"cifar10", "cifar100"} and data["download"]:
        return
    if not root or not os.path.isdir(root):
        hint = " (install Debian's dataset-fashion-mnist or point data.root at the IDX files)" if data["name"] == "fashion_mnist" else ""
        raise ConfigError(f"config key 'data.root' is {root!r}, which is not an existing folder{hint}")
    if data["name"] == "image_folder" and is_one_folder(root):
        return  # one folder of class folders: check_class_folders
    needs = DATASETS[data["name"]].needs
    missing = [name for name in needs if not any(os.path.exists(os.path.join(root, name + suffix))
                                                 for suffix in ("", ".gz"))]
    if missing:
        other = " or of class folders (<class>/<image>, split by the workflow)" if data["name"] == "image_folder" else ""
        raise ConfigError(f"config key 'data.root' is {root!r}, which holds no {data['name']} data set: missing "
                          f"{', '.join(missing)}; allowed: a folder with {', '.join(needs)}{other}")


def check_class_folders(data: dict[str, Any]) -> None:
    """An image folder's classes are the sub-folders of train/; a class of test/ that train/ lacks is an error
    naming both (only the folders are listed: cheap however many images they hold). One folder of class
    folders: ``_check_one_folder``."""
    if data["name"] != "image_folder":
        return
    if is_one_folder(data["root"]):
        _check_one_folder(data)
        return
    train, test = (os.path.join(data["root"], split) for split in ("train", "test"))
    unknown = sorted(set(_folders(test)) - set(_folders(train)))
    if unknown:
        raise ConfigError(f"config key 'data.root' is {data['root']!r}, whose {test} has class folders that {train} "
                          f"lacks: {', '.join(unknown[:5])}; allowed: test classes that train has")


def _check_one_folder(data: dict[str, Any]) -> None:
    """``data.root`` holds class folders (no ``train/`` or ``test/``), which the workflow splits itself
    (``soupflow.plan.one_folder``): two classes or more, a test share, and enough images in every class that
    each split expects one of them (the images are counted by name, none opened)."""
    root = data["root"]
    if data["finetune_classes"] is not None:
        raise ConfigError(f"config key 'data.finetune_classes' is {data['finetune_classes']}, but data.root "
                          f"{root!r} holds class folders without train/ and test/; allowed: null, or train/ and "
                          "test/ folders in data.root")
    if not data["test_fraction"]:
        raise ConfigError(f"config key 'data.test_fraction' is {data['test_fraction']}, but data.root {root!r} holds "
                          "class folders without a test/ folder; allowed: > 0 (the share of each class held out "
                          "for test), or train/ and test/ folders in data.root")
    classes = class_folders(root)
    if len(classes) < 2:
        raise ConfigError(f"config key 'data.root' is {root!r}, which holds {len(classes)} class folder(s) and no "
                          "train/ or test/ folder; allowed: a folder of two or more class folders "
                          "(<class>/<image>) or train/ and test/ folders")
    needed = images_needed(data)
    for name in classes:
        found = count_images(os.path.join(root, name))
        if found < needed:
            raise ConfigError(f"config key 'data.root' is {root!r}, whose class folder {name!r} holds {found} "
                              f"image(s): too few to split by data.pretrain_fraction {data['pretrain_fraction']}, "
                              f"val_fraction {data['val_fraction']} and test_fraction {data['test_fraction']}; "
                              f"allowed: at least {needed} images in every class (one expected in each split), "
                              "or other fractions")


def _check_shift_sets(data: dict[str, Any]) -> None:
    """Each shift set is ``corruptions`` or a folder of class folders holding images; for image_folder data, of
    the training classes only (other data sets' class names are checked when the set is prepared)."""
    for name, source in data["shift_sets"].items():
        key = f"config key 'data.shift_sets.{name}' is {source!r}"
        if source == CORRUPTED_SHIFT:
            continue
        if not os.path.isdir(source) or not class_folders(source):
            raise ConfigError(f"{key}, which is not a folder of class folders; allowed: a folder holding "
                              f"<class>/<image> for the training classes, or {CORRUPTED_SHIFT!r}")
        empty = [folder for folder in class_folders(source) if not count_images(os.path.join(source, folder))]
        if empty:
            raise ConfigError(f"{key}, whose class folder {empty[0]!r} holds no image; allowed: class folders "
                              "with images (.jpg, .png, …)")
        if data["name"] == "image_folder" and os.path.isdir(data.get("root") or ""):
            root = data["root"] if is_one_folder(data["root"]) else os.path.join(data["root"], "train")
            unknown = sorted(set(class_folders(source)) - set(class_folders(root)))
            if unknown:
                raise ConfigError(f"{key}, whose class folders {', '.join(unknown[:5])} are not training classes "
                                  f"(the class folders of {root}); allowed: class folders named as those")


def _folders(path: str) -> list[str]:
    return [entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith(".")]


def _check_normalize(data: dict[str, Any]) -> None:
    """Given mean/std need one value, or one per channel (3 RGB values are averaged for grey images)."""
    given = data["normalize"]
    if not isinstance(given, dict):
        return
    channels = DATASETS[data["name"]].channels
    allowed = sorted({1, channels, 3})
    for name in ("mean", "std"):
        if len(given[name]) not in allowed:
            raise ConfigError(f"config key 'data.normalize.{name}' has {len(given[name])} values; allowed: "
                              f"{' or '.join(map(str, allowed))} for {data['name']}'s {channels}-channel images")


def _check_fractions(config: dict[str, Any]) -> None:
    data = config["data"]
    if data["pretrain_fraction"] + data["val_fraction"] + data["test_fraction"] >= 1:
        raise ConfigError("config keys 'data.pretrain_fraction' + 'data.val_fraction' + 'data.test_fraction' must be "
                          "< 1 so that images remain to fine-tune on")
    pretrains = config["model"]["init"] == "pretrain" and not soup_only(config)
    if pretrains and data["pretrain_fraction"] <= 0 and not data["pretrain_classes"]:
        raise ConfigError("config key 'data.pretrain_fraction' must be > 0 when model.init is 'pretrain'")


def _check_soups(soups: list[dict[str, Any]]) -> None:
    names = [soup_name(soup) for soup in soups]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"config key 'soups' names {', '.join(duplicates)} more than once; give each entry a unique 'name'")
    for index, soup in enumerate(soups):
        allowed = RECIPES[soup["recipe"]].allowed
        foreign = [key for key in soup if key not in allowed]
        if foreign:
            raise ConfigError(f"config key 'soups[{index}].{foreign[0]}' is not an option of recipe "
                              f"{soup['recipe']!r}; allowed: {', '.join(allowed)}")
    bases = [name for name, soup in zip(names, soups) if not RECIPES[soup["recipe"]].needs_base]
    for index, soup in enumerate(soups):
        base = soup_base(soup)
        if base is not None and base not in bases:
            raise ConfigError(f"config key 'soups[{index}].base' is {base!r}; allowed: the name of another soup "
                              f"entry that takes no base ({', '.join(bases) or 'none configured'})")


def _check_hyperparameter_names(config: dict[str, Any]) -> None:
    """Keys whose value must name a hyperparameter."""
    named = [("plots.heatmap_axes", "has", axis) for axis in config["plots"]["heatmap_axes"]]
    named.append(("analysis.color_by", "is", config["analysis"]["color_by"]))
    for key, verb, name in named:
        if name not in HYPERPARAMETER_NAMES:
            raise ConfigError(f"config key '{key}' {verb} {name!r}; allowed values: {', '.join(HYPERPARAMETER_NAMES)}")


def _check_perturbations(config: dict[str, Any]) -> None:
    named = [("analysis.branching.perturbations", name) for name in config["analysis"]["branching"]["perturbations"]]
    named += [("grid.perturbation", name) for name in config["grid"].get("perturbation", [])]
    named += [(f"runs[{i}].perturbation", run["perturbation"]) for i, run in enumerate(config["runs"])
              if run.get("perturbation")]
    for key, name in named:
        if name not in config["perturbations"]:
            raise ConfigError(f"config key '{key}' names perturbation {name!r}; allowed values: "
                              f"{', '.join(config['perturbations'])}")


def _check_search(search: dict[str, Any]) -> None:
    for name, spec in search["space"].items():
        if spec["distribution"] == "choice" and not spec.get("values"):
            raise ConfigError(f"config key 'search.space.{name}' needs 'values' for distribution 'choice'")
        if spec["distribution"] != "choice" and not ("low" in spec and "high" in spec and spec["low"] <= spec["high"]):
            raise ConfigError(f"config key 'search.space.{name}' needs 'low' <= 'high' for distribution {spec['distribution']!r}")
        if spec["distribution"] == "log_uniform" and spec["low"] <= 0:
            raise ConfigError(f"config key 'search.space.{name}.low' must be > 0 for distribution 'log_uniform'")


def written(config: dict[str, Any], name: str) -> list[tuple[str, Any]]:
    """Where the user set hyperparameter ``name`` (other than to null), as (config key, value): the fine-tune
    default, each grid axis value, each explicit run, and the choices of a random-search dimension."""
    found = [(f"finetune.{name}", config["finetune"][name])] if config["finetune"].get(name) is not None else []
    found += [(f"grid.{name}", value) for value in config["grid"].get(name, []) if value is not None]
    found += [(f"runs[{i}].{name}", run[name]) for i, run in enumerate(config["runs"]) if run.get(name) is not None]
    space = config["search"]["space"].get(name) if config["search"]["n"] else None
    if space is not None:
        found += [(f"search.space.{name}", value) for value in space.get("values") or [space.get("low")]]
    return found


def _check_format(config: dict[str, Any]) -> None:
    """What each data format can do: files reads image files; tensors augments whole batches in memory."""
    data, files = config["data"], config["data"]["format"] == "files"
    if files and data["name"] not in IMAGE_DATASETS:
        raise ConfigError(f"config key 'data.format' is 'files', which reads image files; allowed: data.name "
                          f"{' or '.join(IMAGE_DATASETS)} ({data['name']} is decoded to tensors: data.format tensors)")
    if not files and data["name"] == "image_shards":
        raise ConfigError("config key 'data.name' is 'image_shards', which data.format 'tensors' cannot decode; "
                          "allowed: data.format: files")
    for key in ("crop_pct", "interpolation"):
        if not files and data[key] is not None:
            raise ConfigError(f"config key 'data.{key}' applies to data.format: files only (tensors are resized "
                              "once when prepared: data.image_size)")
    for name in FILES_ONLY_HYPERPARAMETERS if not files else ():
        for key, _ in written(config, name):
            raise ConfigError(f"config key '{key}' needs data.format: files (a per-image transform in the loader's "
                              "workers); the tensors path augments whole batches: augmentation, mixup, cutmix, "
                              "random_erase")
    pretrained_here = [("pretrain.augmentation", config["pretrain"]["augmentation"])]
    for key, value in written(config, "augmentation") + pretrained_here if files else ():
        if "shift" in value and (key != "pretrain.augmentation" or config["model"]["init"] == "pretrain"):
            raise ConfigError(f"config key '{key}' is {value!r}, a batch translation of the tensors path; allowed "
                              "with data.format files: none or flip (random crops: crop_scale)")
    if files and config["analysis"]["corruptions"]["max_images"] is None:
        raise ConfigError("config key 'analysis.corruptions.max_images' is null, which corrupts every test image in "
                          "memory; allowed with data.format files: a number of images")
    if files and config["model"]["init"] == "pretrain" and config["pretrain"]["task"] != "labels":
        raise ConfigError(f"config key 'pretrain.task' is {config['pretrain']['task']!r}, which needs data.format: "
                          "tensors (it turns every image in memory); allowed with files: labels")


def _check_augmentations(config: dict[str, Any]) -> None:
    for key, value in written(config, "auto_augment"):
        check_auto_augment(key, value)
    mixing = written(config, "mixup") + written(config, "cutmix")
    odd = [(key, size) for key, size in written(config, "batch_size") if size % 2]
    if any(value for _, value in mixing) and odd:
        raise ConfigError(f"config key '{odd[0][0]}' is {odd[0][1]}; allowed with mixup or cutmix: an even batch size "
                          "(timm's Mixup pairs each image with its mirror in the batch)")


def _check_devices(config: dict[str, Any]) -> None:
    """Each of a job's processes takes an equal share of every global batch."""
    devices = config["training"]["devices_per_run"]
    sizes = written(config, "batch_size")
    if config["model"]["init"] == "pretrain":
        sizes.append(("pretrain.batch_size", config["pretrain"]["batch_size"]))
    for key, size in sizes:
        if size % devices:
            raise ConfigError(f"config key '{key}' is {size}, which training.devices_per_run {devices} does not divide; "
                              f"allowed: a multiple of {devices} (each process takes an equal share of the batch)")


def _check_shared_finetune(config: dict[str, Any]) -> None:
    """The shared fine-tune runs in the init job's one process, and every run must start after it."""
    if not config["model"]["shared_finetune"]:
        return
    if config["training"]["devices_per_run"] > 1:
        raise ConfigError(f"config key 'model.shared_finetune' is set with training.devices_per_run "
                          f"{config['training']['devices_per_run']}; allowed: devices_per_run 1 (the shared "
                          "fine-tune runs in the init job's one process) or shared_finetune: null")
    branching = written(config, "branch_epoch")
    if branching:
        raise ConfigError(f"config key '{branching[0][0]}' branches from pretraining, which would skip "
                          "model.shared_finetune; allowed: one of the two")


def _check_class_split(config: dict[str, Any]) -> None:
    """Few-label transfer (``data.finetune_classes``): disjoint known classes, enough images, no other split."""
    data = config["data"]
    pretrain, finetune = data["pretrain_classes"], data["finetune_classes"]
    if finetune is None:
        for key in ("pretrain_classes", "labels_per_class"):
            if data[key] is not None:
                raise ConfigError(f"config key 'data.{key}' is {data[key]!r} without data.finetune_classes; allowed: "
                                  "null, or set data.finetune_classes too (few-label transfer to new classes)")
        return
    if data["format"] != "tensors":
        raise ConfigError(f"config key 'data.finetune_classes' is {finetune}; allowed only with data.format tensors")
    known = DATASETS[data["name"]].classes
    for key, classes in (("pretrain_classes", pretrain or []), ("finetune_classes", finetune)):
        unknown = [c for c in classes if known is not None and c >= known]
        if unknown:
            raise ConfigError(f"config key 'data.{key}' has {unknown}, not classes of {data['name']}; allowed: "
                              f"0 to {known - 1}")
    shared = sorted(set(pretrain or []) & set(finetune))
    if shared:
        raise ConfigError(f"config key 'data.finetune_classes' shares {shared} with data.pretrain_classes; allowed: "
                          "classes the pretraining never saw")
    if config["model"]["init"] == "pretrain" and not pretrain:
        raise ConfigError("config key 'data.pretrain_classes' is missing; allowed: the classes that pretrain the init "
                          "(model.init is 'pretrain' and data.finetune_classes is set)")
    for key in ("pretrain_fraction", "test_fraction"):
        if data[key]:
            raise ConfigError(f"config key 'data.{key}' is {data[key]}; allowed: 0 with data.finetune_classes (the "
                              "classes split the images: pretraining takes every image of its classes, test every "
                              "unused image of the fine-tuning classes)")
    per_class = DATASETS[data["name"]].train_per_class
    labels = data["labels_per_class"]
    if per_class is not None and labels is not None:
        if data["max_train"] is not None:  # a seeded subsample of all classes: about as many of each
            per_class = min(per_class, data["max_train"] // known)
        room = per_class - int(round(per_class * data["val_fraction"]))
        if labels > room:
            raise ConfigError(f"config key 'data.labels_per_class' is {labels}; allowed: at most {room} ({data['name']} "
                              f"has about {per_class} training images per class, data.val_fraction takes the rest)")


def _check_replicates(config: dict[str, Any]) -> None:
    replicates = config["replicates"]
    if replicates is not None and config["seed"] not in replicates:
        raise ConfigError(f"config key 'replicates' is {replicates}; allowed: a list of seeds that holds the top-level "
                          f"seed {config['seed']} (its pipeline stays in results/)")


def check_semantics(config: dict[str, Any], check_model: bool = True, check_paths: bool = True) -> None:
    """Checks beyond the schema on a config with defaults filled in. ``check_paths`` looks at the data and
    model files, ``check_model`` asks timm for ``model.name``: the main Snakemake process does both once."""
    _check_normalize(config["data"])
    _check_class_split(config)
    _check_fractions(config)
    _check_replicates(config)
    _check_format(config)
    _check_augmentations(config)
    _check_devices(config)
    _check_shared_finetune(config)
    if check_paths:
        _check_data_root(config["data"])
        check_class_folders(config["data"])
        _check_shift_sets(config["data"])
        _check_model_file(config["model"])
    if check_model:
        check_model_name(config["model"])
        check_model_kwargs(config["model"])
        check_pretrained_name(config["model"])
        check_optimizer_names(written(config, "optimizer") + [("pretrain.optimizer", config["pretrain"]["optimizer"])])
    _check_soups(config["soups"])
    _check_pool(config, check_model, check_paths)
    _check_hyperparameter_names(config)
    _check_perturbations(config)
    _check_search(config["search"])
    _check_branch_epochs(config)


def _check_pool(config: dict[str, Any], check_model: bool, check_paths: bool) -> None:
    """Outside checkpoints: files that exist and fit the model (``plan.pool.check_pool_files``); a recipe that
    needs θ0 has one (``pool.start``, or the init the grid's runs start from); no soup pools epoch checkpoints
    the outside files do not have."""
    if not config["pool"]["checkpoints"]:
        return
    if check_paths:
        check_pool_files(config, pool_checkpoints(config), check_model)
    for index, soup in enumerate(config["soups"]):
        if soup_only(config) and RECIPES[soup["recipe"]].needs_start and config["pool"]["start"] is None:
            raise ConfigError(f"config key 'soups[{index}].recipe' is {soup['recipe']!r}, which needs the weights the "
                              "checkpoints were fine-tuned from; allowed: set pool.start, or a recipe without a start")
        if soup.get("ingredients") == "epochs":
            raise ConfigError(f"config key 'soups[{index}].ingredients' is 'epochs', but the pool's checkpoints keep no "
                              "epochs; allowed: final or ema with pool.checkpoints")


def _check_accumulation(config: dict[str, Any], runs: dict[str, dict[str, Any]]) -> None:
    """``grad_accum_steps`` splits each process's share of a batch into equal micro-batches, for every run
    (and the finetune section, which a shared fine-tune trains with)."""
    devices = config["training"]["devices_per_run"]
    for hp in [config["finetune"], *runs.values()]:
        steps = hp.get("grad_accum_steps") or 1
        if (hp["batch_size"] // devices) % steps:
            drawn = "grad_accum_steps" in config["search"].get("space", {})  # a random search's draw
            key = next((key for key, value in written(config, "grad_accum_steps") if value == steps),
                       "search.space.grad_accum_steps" if drawn else "finetune.grad_accum_steps")
            verb = "drew" if key.startswith("search.") else "is"
            raise ConfigError(f"config key '{key}' {verb} {steps}, which does not divide batch_size {hp['batch_size']} / "
                              f"training.devices_per_run {devices}; allowed: a divisor of each process's share of "
                              "the batch (it is split into that many equal micro-batches)")


def _check_ema_ingredients(config: dict[str, Any], runs: dict[str, dict[str, Any]]) -> None:
    """Soups with ``ingredients: ema`` pool the runs' moving averages: at least one run must keep one
    (``ema_decay``); the runs without one are left out of those soups, and a warning names them."""
    wanting = [index for index, soup in enumerate(config["soups"]) if soup.get("ingredients") == "ema"]
    if not wanting:
        return
    without = sorted(run_id for run_id, hp in runs.items() if hp.get("ema_decay") is None)
    if len(without) == len(runs):
        raise ConfigError(f"config key 'soups[{wanting[0]}].ingredients' is 'ema', but no fine-tune keeps a moving "
                          "average of its weights; allowed: final or epochs, or set ema_decay (finetune.ema_decay, "
                          "a grid axis or a run's key)")
    if without:
        log.warning("soups with ingredients: ema leave out the %d run(s) without ema_decay: %s%s", len(without),
                    ", ".join(without[:5]), ", ..." if len(without) > 5 else "")


def check_runs(config: dict[str, Any], runs: dict[str, dict[str, Any]]) -> None:
    """The expanded fine-tunes: at least one, random-search draws of branch epochs that are kept, and
    micro-batches that split each batch evenly."""
    _check_accumulation(config, runs)
    _check_ema_ingredients(config, runs)
    drawn = sorted({hp["branch_epoch"] for hp in runs.values() if hp.get("branch_epoch") is not None})
    if set(drawn) - set(kept_epochs(config)):  # what the keys checked above cannot hold: random-search draws
        raise ConfigError(f"config key 'search.space.branch_epoch' draws {drawn}; allowed values: "
                          f"{', '.join(map(str, kept_epochs(config)))} (use distribution: choice)")
    if not runs and not config["pool"]["checkpoints"]:
        raise ConfigError("config keys 'grid', 'runs' and 'search.n' describe no fine-tune; allowed: at least one "
                          "grid axis value, run or draw (or outside checkpoints: pool.checkpoints)")
