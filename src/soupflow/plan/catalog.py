"""Every list of names soupflow knows, written once, with the attributes of each entry.

- ``Hyperparameters`` (a typed record; ``HYPERPARAMETERS`` lists its fields): what one training is configured by (a grid axis, a ``runs:`` key, a random-search
  dimension and an ``hp_*`` column of the runs table), with its kind and default;
- ``RECIPES``: the soup recipes with their traits (the functions are registered against these names in
  ``soupflow.core.recipes``, which refuses a name that is not here);
- ``DATASETS``: the data set readers (``data.name``); ``CORRUPTIONS``: the corruption types of the analysis;
- ``SOUP_OPTIONS``: the defaults of a soup entry's options, for every recipe;
- ``SOUP_INGREDIENTS``: what a soup entry's ``ingredients`` option may pool.

(Which rules take a GPU is said by each rule's ``resources: gpu=``, once; the profiles are checked against them.)

The JSON schema's lists of names are generated from these (``soupflow.plan.config.load_schema``); the
hyperparameters' constraints stay in the schema, and tests check that both name the same keys.
Parse time: no numpy, torch or timm here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, get_args, get_type_hints


@dataclass(frozen=True)
class Hyperparameter:
    """One fine-tuning hyperparameter: its canonical Python type (1 and 1.0 are the same learning rate, so a
    run id hashes the canonical value) and its default in ``finetune:``. A default of None means "off" and is
    left out of a run's id, so adding such a hyperparameter never changes an existing id."""

    name: str
    kind: type
    default: Any = None


@dataclass(frozen=True)
class Hyperparameters:
    """What one training is configured by: a fine-tune's grid point (``finetune:`` overlaid with its axes),
    pretraining (``pretrain:``) and the shared fine-tune alike. The fields, in the order tables show them, are
    the hyperparameters: each a grid axis, a ``runs:`` key, a random-search dimension and an ``hp_*`` column of
    the runs table, with its kind and the default ``finetune:`` starts from (None: off). Adding one here is
    all the plan, the schema and the tables need; the trainer reads it by name."""

    lr: float = 0.01
    weight_decay: float = 1e-4
    epochs: int = 2
    batch_size: int = 128
    label_smoothing: float = 0.0
    augmentation: str = "none"
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "onecycle"
    warmup_fraction: float = 0.3
    seed: int = 0
    branch_epoch: int | None = None
    perturbation: str | None = None
    bn_statistics: str | None = None
    data_fraction: float | None = None
    mixup: float | None = None
    cutmix: float | None = None
    crop_scale: float | None = None
    auto_augment: str | None = None
    random_erase: float | None = None
    drop_path_rate: float | None = None
    layer_decay: float | None = None
    wd_norm_bias: bool | None = None
    grad_accum_steps: int | None = None
    clip_grad: float | None = None
    ema_decay: float | None = None

    @classmethod
    def of(cls, values: Mapping[str, Any]) -> Hyperparameters:
        """The record of a mapping of hyperparameter names (a run's ``hp``, a test's dict), the catalog's
        defaults where it is silent; a key that is not a hyperparameter is an error, not ignored."""
        if isinstance(values, cls):
            return values
        unknown = sorted(set(values) - set(HYPERPARAMETER_NAMES))
        if unknown:
            raise KeyError(f"not hyperparameters: {', '.join(unknown)}; allowed: {', '.join(HYPERPARAMETER_NAMES)}")
        return cls(**{name: _canonical(name, value) for name, value in values.items()})

    @classmethod
    def of_section(cls, section: Mapping[str, Any]) -> Hyperparameters:
        """The hyperparameters a config section sets (``pretrain:`` also has keys of its own, e.g. ``task``)."""
        return cls(**{name: value for name, value in section.items() if name in HYPERPARAMETER_NAMES})

    def as_dict(self) -> dict[str, Any]:
        """Every hyperparameter by name (the run's ``hp_*`` columns, its config.yaml, a resume fingerprint)."""
        return {name: getattr(self, name) for name in HYPERPARAMETER_NAMES}


def _canonical(name: str, value: Any) -> Any:
    """A number as the hyperparameter's kind (a learning rate written 1 is 1.0); anything else as it is."""
    kind = HYPERPARAMETER_KINDS[name]
    return kind(value) if value is not None and kind in (int, float) else value


def _kind(annotation: Any) -> type:
    """``float`` of ``float`` and of ``float | None``."""
    return next(kind for kind in get_args(annotation) or (annotation,) if kind is not type(None))


HYPERPARAMETERS: tuple[Hyperparameter, ...] = tuple(
    Hyperparameter(f.name, _kind(get_type_hints(Hyperparameters)[f.name]), f.default) for f in fields(Hyperparameters))
#: what only the files data path can do: per-image PIL transforms in the loader's workers
FILES_ONLY_HYPERPARAMETERS = ("crop_scale", "auto_augment")

#: the hyperparameters' names, in the order tables show them
HYPERPARAMETER_NAMES: tuple[str, ...] = tuple(hp.name for hp in HYPERPARAMETERS)
HYPERPARAMETER_KINDS: dict[str, type] = {hp.name: hp.kind for hp in HYPERPARAMETERS}
HYPERPARAMETER_DEFAULTS: dict[str, Any] = {hp.name: hp.default for hp in HYPERPARAMETERS}

#: learning-rate schedules (hyperparameter ``schedule``): these soupflow writes itself (``core.train.lr_factor``:
#: timm's CosineLRScheduler draws the same curves but rounds differently, and the default trains bit for bit as
#: before) ...
HAND_WRITTEN_SCHEDULES = ("onecycle", "cosine", "constant")
#: ... and these are timm's (``timm.scheduler.create_scheduler_v2``, counted in optimiser steps)
TIMM_SCHEDULES = ("tanh", "wsd")
SCHEDULES = HAND_WRITTEN_SCHEDULES + TIMM_SCHEDULES


@dataclass(frozen=True)
class Option:
    """An option a recipe declares for its soup entries: its default, the JSON schema of its values (the
    config schema's ``soups`` items get it from here, ``config.load_schema``) and what it means."""

    name: str
    default: Any
    schema: dict[str, Any]
    meaning: str


@dataclass(frozen=True)
class RecipeTraits:
    """What the workflow must know of a recipe before any job runs: whether it is a baseline or ablation
    rather than a soup to deploy (figures leave those out), whether it reads the weights the fine-tunes
    started from (the soup rule then takes the init as an input) or another soup of the config (``base``),
    its own options (``Option`` records) and the options of every entry it reads."""

    name: str
    baseline: bool = False
    needs_start: bool = False
    needs_base: bool = False
    options: tuple[Option, ...] = ()
    #: the options of ``SOUP_OPTIONS`` beyond ``ENTRY_OPTIONS`` that the recipe reads (their defaults live there)
    takes: tuple[str, ...] = ()

    @property
    def defaults(self) -> dict[str, Any]:
        """The recipe's own options at their defaults."""
        return {option.name: option.default for option in self.options}

    @property
    def allowed(self) -> tuple[str, ...]:
        """Every key a soup entry of this recipe may set: an entry's own, the shared ones it reads, its own."""
        return (*ENTRY_OPTIONS, *self.takes, *self.defaults)


#: WiSE-FT's mixing coefficients when a wise_ft entry gives no ``alphas``: 0, 0.1, …, 1
WISE_FT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))

#: the keys every soup entry takes, whatever its recipe
ENTRY_OPTIONS = ("name", "recipe", "metric", "bn", "bn_images", "ingredients")
#: what greedy selection reads (its tie rule, early rejection, a cap) and pruning (the last two)
_GREEDY = ("tie", "early_rejection", "max_ingredients")
_PRUNED = ("early_rejection", "max_ingredients")

#: the learned recipe's mixing groups: one set of weights per module, or per tensor
GRANULARITIES = ("module", "tensor")
_COUNT = {"type": "integer", "minimum": 1}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
REPEATS = Option("repeats", 5, _COUNT, "shuffled orders tried; the best on val is kept")
PASSES = Option("passes", 3, _COUNT, "passes of removals over the ingredients")
LEARNED_OPTIONS = (
    Option("epochs", 3, _COUNT, "passes over the val split while fitting the mixing weights"),
    Option("lr", 0.05, _POSITIVE, "Adam's learning rate for the mixing logits"),
    Option("batch_size", 500, _COUNT, "val images per fitting step"),
    Option("granularity", "module", {"type": "string", "enum": list(GRANULARITIES)},
           "one set of mixing weights per module, or per tensor"),
    Option("max_memory_mb", 4096, _POSITIVE, "the most memory the k ingredients may take together"),
)
WISE_FT_OPTIONS = (
    Option("base", "best_individual", {"type": "string"}, "the name of the soup entry to interpolate toward"),
    Option("alphas", list(WISE_FT_ALPHAS), {"type": "array", "minItems": 1, "items": {"type": "number"}},
           "the mixing coefficients tried, 0 = the start, 1 = the base"),
)

#: task arithmetic's λ when an entry gives no ``scales``: the summed task vectors' scale, chosen on val. λ = 1/k
#: is the uniform soup of k; on the default's 12 runs val chose 0.05 (below it), so the grid reaches down to 0.01
TASK_SCALES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
SCALES = Option("scales", list(TASK_SCALES),
                {"type": "array", "minItems": 1, "items": {"type": "number", "exclusiveMinimum": 0}},
                "the scales λ tried, chosen on val: θ0 + λ·τ, τ the merged task vector (task_arithmetic, dare, "
                "breadcrumbs: the sum of the k task vectors, λ = 1/k the uniform soup; ties: their disjoint mean)")

#: TIES' λ when an entry gives no ``scales``: its merged vector is a mean, λ = 1 the paper's; on the default's
#: runs val chose 0.25, so the grid reaches down to 0.1 (docs/recipes.md has the measurement)
TIES_SCALES = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5)
_FRACTION = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
_DENSITY_MEANING = ("the share of each task vector's entries kept per tensor (ties: the largest by magnitude; "
                    "breadcrumbs: the largest after the gamma largest)")
#: the options of the sparsifying task-vector merges; λ (``scales``) chosen on val for each
TIES_OPTIONS = (Option("density", 0.2, _FRACTION, _DENSITY_MEANING), replace(SCALES, default=list(TIES_SCALES)))
DARE_OPTIONS = (Option("drop", 0.5, {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                       "the probability p each task-vector entry is dropped with; the rest are scaled by 1/(1 - p)"),
                SCALES)
BREADCRUMBS_OPTIONS = (Option("density", 0.9, _FRACTION, _DENSITY_MEANING),
                       Option("gamma", 0.01, {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                              "the share of each task vector's largest entries (outliers) zeroed per tensor"),
                       SCALES)
_TASK_VECTORS = ("k", "early_rejection")

RECIPES: dict[str, RecipeTraits] = {traits.name: traits for traits in (
    RecipeTraits("uniform"),
    RecipeTraits("greedy", takes=_GREEDY),
    RecipeTraits("greedy_random", options=(REPEATS,), takes=(*_GREEDY, "seed")),
    RecipeTraits("pruned", options=(PASSES,), takes=_PRUNED),
    RecipeTraits("pruned_random", options=(PASSES, REPEATS), takes=(*_PRUNED, "seed")),
    RecipeTraits("topk", options=(Option("k", 2, _COUNT, "the k best ingredients by val"),)),
    RecipeTraits("best_individual", baseline=True),
    RecipeTraits("self_soup", baseline=True),
    RecipeTraits("untrained", baseline=True, takes=("seed",)),
    RecipeTraits("model_stock", needs_start=True, takes=("k",)),
    RecipeTraits("wise_ft", needs_start=True, needs_base=True, options=WISE_FT_OPTIONS),
    RecipeTraits("learned", options=LEARNED_OPTIONS, takes=("k", "seed")),
    RecipeTraits("task_arithmetic", needs_start=True, options=(SCALES,), takes=_TASK_VECTORS),
    RecipeTraits("ties", needs_start=True, options=TIES_OPTIONS, takes=_TASK_VECTORS),
    RecipeTraits("dare", needs_start=True, options=DARE_OPTIONS, takes=(*_TASK_VECTORS, "seed")),
    RecipeTraits("breadcrumbs", needs_start=True, options=BREADCRUMBS_OPTIONS, takes=_TASK_VECTORS),
)}


def option_holders() -> dict[str, list[tuple[str, Option]]]:
    """Each recipe option's name → (recipe, its declaration) for every recipe that declares it, in the
    catalog's order: what the schema (``recipe_option_schemas``) and docs/keys.md (``keys``) describe."""
    holders: dict[str, list[tuple[str, Option]]] = {}
    for traits in RECIPES.values():
        for option in traits.options:
            holders.setdefault(option.name, []).append((traits.name, option))
    return holders


def recipe_option_schemas() -> dict[str, dict[str, Any]]:
    """The JSON schema of every recipe's own options, for the config schema's soup entries: each option once,
    described with the recipes that take it (docs/keys.md shows their defaults). An option two recipes declare
    has one schema."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, held in option_holders().items():
        first = held[0][1]
        if any(option.schema != first.schema for _, option in held):
            raise RuntimeError(f"recipe option {name!r} is declared with two schemas")
        recipes = [recipe for recipe, _ in held]
        only = " only" if len(recipes) == 1 else ""
        schemas[name] = {**first.schema, "description": f"{', '.join(recipes)}{only} - {first.meaning}."}
    return schemas


#: train images BatchNorm statistics are re-estimated on (a soup's ``bn: recompute``, ``model.init_bn: recompute``)
BN_IMAGES = 2000
#: the BatchNorm statistics a soup is scored with: averaged with the weights (``keep``) or re-estimated on train
#: images (``recompute``); a soup's ``bn`` and the analysis' ``bn`` list name them
BN_STATISTICS = ("keep", "recompute")

#: What a soup entry's ``ingredients`` pools: each usable run's last checkpoint (``final``), those and every
#: kept epoch checkpoint (``epochs``), or the runs' exponential moving averages of their weights (``ema``: the
#: runs with hyperparameter ``ema_decay``).
SOUP_INGREDIENTS = ("final", "epochs", "ema")

#: The options every soup entry has, at their defaults (a recipe's own ``RecipeTraits.options`` add to them).
#: ``k`` None = every usable run; ``max_ingredients`` None = no cap.
SOUP_OPTIONS: dict[str, Any] = {
    "metric": "accuracy", "bn": "keep", "bn_images": BN_IMAGES, "ingredients": "final", "early_rejection": True,
    "tie": "ge", "seed": 0, "k": None, "max_ingredients": None,
}


def soup_options(entry: dict[str, Any]) -> dict[str, Any]:
    """A soup entry of the config with every option it leaves out at its default (its name included)."""
    traits = RECIPES[entry["recipe"]]
    return {**SOUP_OPTIONS, **traits.defaults, "name": entry["recipe"], **entry}


@dataclass(frozen=True)
class Dataset:
    """A data set reader (``data.name``): its images' channels and the files or folders it reads in
    ``data.root`` (IDX files may be gzipped)."""

    name: str
    channels: int
    needs: tuple[str, ...]
    classes: int | None = None  # how many (None: the class folders say)
    train_per_class: int | None = None  # official training images of the smallest class


IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("fashion_mnist", 1, IDX_FILES, 10, 6000),
    Dataset("mnist", 1, IDX_FILES, 10, 5421),
    Dataset("cifar10", 3, ("cifar-10-batches-py",), 10, 5000),
    Dataset("cifar100", 3, ("cifar-100-python",), 100, 500),
    Dataset("image_folder", 3, ("train", "test")),  # decoded to RGB
    Dataset("image_shards", 3, ("train", "test")),  # WebDataset tar shards: train/*.tar, test/*.tar
)}
#: how prepared data is kept: decoded uint8 tensors, or a list of image files read by DataLoader workers
DATA_FORMATS = ("tensors", "files")
#: the data sets that are image files (data.format files reads them; tensors decodes image_folder once)
IMAGE_DATASETS = ("image_folder", "image_shards")

#: the batch augmentations of the tensors data path (``soupflow.core.train``): hyperparameter ``augmentation``
AUGMENTATIONS = ("none", "flip", "shift", "flip_shift")
#: what pretraining learns (``pretrain.task``; ``soupflow.core.pretext``)
PRETEXT_TASKS = ("labels", "rotation")

#: the corruption types of the analysis' corrupted test copy ("Too Salty")
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "brightness", "pixelate", "jpeg")
#: the name the corrupted test copy is scored under, beside "val" and "test"
CORRUPTED_SPLIT = "corrupted"
#: the value of a ``data.shift_sets`` entry that is the test split corrupted (``analysis.corruptions``), not a folder
CORRUPTED_SHIFT = "corruptions"
#: a shift set's name (a folder and a file name, and a column prefix of the soups table)
SHIFT_NAME_PATTERN = "[A-Za-z0-9][A-Za-z0-9_-]*"

